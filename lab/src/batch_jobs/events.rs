//! A job's state changes and their events: `set_status` records a status
//! (and the job's history) and queues its `aws.bedrock` / `Batch Inference
//! Job State Change` event; the task [`BatchJobs::connect`] starts publishes
//! them, in order, with moto's PutEvents on the default bus of the job's
//! account, as that account's administrator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_smithy_types::DateTime;
use serde_json::json;

use super::ids::{iso, now_ms};
use super::link::MotoLink;
use super::{BatchEvent, BatchJobs, Entry, DETAIL_TYPE, SOURCE, TERMINAL};
use crate::emulator::lock;
use crate::services::sdk_config;

impl BatchJobs {
    /// Acts in the moto at `moto_endpoint` (IAM, S3, EventBridge); needed
    /// before jobs can be created. Call inside a Tokio runtime: it starts the
    /// task that publishes events.
    pub fn connect(&self, moto_endpoint: &str) {
        let link = Arc::new(MotoLink::new(moto_endpoint));
        *lock(&self.inner.link) = Some(Arc::clone(&link));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        *lock(&self.inner.outbox) = Some(tx);
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            let mut clients: HashMap<String, aws_sdk_eventbridge::Client> = HashMap::new();
            while let Some(index) = rx.recv().await {
                let Some(event) = lock(&inner.events).get(index).cloned() else {
                    continue;
                };
                let result = link.publish(&mut clients, &event).await;
                if let Some(stored) = lock(&inner.events).get_mut(index) {
                    stored.delivered = result.is_ok();
                    stored.error = result.err();
                }
            }
        });
        if let Some(old) = lock(&self.inner.publisher).replace(task) {
            old.abort();
        }
    }

    /// Queues the event for `entry`'s current status; called with the jobs
    /// lock held, so events go out in the order of the transitions.
    fn announce(&self, entry: &Entry) {
        let job = &entry.job;
        let detail = json!({
            "version": "0.0",
            "accountId": entry.account,
            "batchJobName": job.job_name,
            "batchJobArn": job.job_arn,
            "batchModelId": job.model_id,
            "status": job.status,
            "failureMessage": job.message.clone().unwrap_or_default(),
            "creationTime": job.submit_time,
        });
        let index = {
            let mut events = lock(&self.inner.events);
            events.push(BatchEvent {
                account: entry.account.clone(),
                job_arn: job.job_arn.clone(),
                status: job.status.clone(),
                detail,
                delivered: false,
                error: None,
            });
            events.len() - 1
        };
        match lock(&self.inner.outbox).as_ref() {
            Some(outbox) => {
                let _ = outbox.send(index);
            }
            None => {
                if let Some(event) = lock(&self.inner.events).get_mut(index) {
                    event.error = Some("not connected to moto".to_owned());
                }
            }
        }
    }

    pub(super) fn set_status(&self, entry: &mut Entry, status: &str, message: Option<String>) {
        let now = iso(now_ms());
        entry.job.status = status.to_owned();
        entry.job.message = message;
        entry.job.last_modified_time = now.clone();
        if TERMINAL.contains(&status) {
            entry.job.end_time = Some(now);
        }
        entry.history.push(status.to_owned());
        self.announce(entry);
    }
}

impl MotoLink {
    /// PutEvents on the default bus of the event's account, as its administrator.
    async fn publish(
        &self,
        clients: &mut HashMap<String, aws_sdk_eventbridge::Client>,
        event: &BatchEvent,
    ) -> Result<(), String> {
        if !clients.contains_key(&event.account) {
            let admin = self.admin(&event.account).await?;
            let config = sdk_config(&self.endpoint, &admin).await;
            clients.insert(
                event.account.clone(),
                aws_sdk_eventbridge::Client::new(&config),
            );
        }
        let client = clients.get(&event.account).ok_or("no EventBridge client")?;
        let entry = PutEventsRequestEntry::builder()
            .source(SOURCE)
            .detail_type(DETAIL_TYPE)
            .detail(event.detail.to_string())
            .resources(&event.job_arn)
            .event_bus_name("default")
            .time(DateTime::from(SystemTime::now()))
            .build();
        let output = client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| format!("PutEvents: {e:?}"))?;
        if output.failed_entry_count() > 0 {
            return Err(format!(
                "PutEvents refused the event: {:?}",
                output.entries()
            ));
        }
        Ok(())
    }
}
