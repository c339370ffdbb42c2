//! The SQS event-source-mapping emulator against moto and three function
//! processes: partial batch responses delete only what succeeded, failed
//! records come back after the visibility timeout and reach the dead-letter
//! queue after `maxReceiveCount`, and no more invocations run at once than
//! `MaximumConcurrency` allows. The visibility timeout (4 s) is far above an
//! invocation's time here, so a record is never redelivered while in flight.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use lab::esm::{self, Mapping};
use lab::runtime_api::{FunctionProcess, RuntimeApi};
use lab::services::sdk_config;
use lab::Lab;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_batch_failures_are_redelivered_then_dead_lettered() {
    let lab = Lab::start().await.expect("lab");
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(lab.moto.endpoint(), &lab.admin_b).await);
    let attribute = |url: &str, name: QueueAttributeName| {
        let sqs = sqs.clone();
        let url = url.to_owned();
        async move {
            sqs.get_queue_attributes()
                .queue_url(&url)
                .attribute_names(name.clone())
                .send()
                .await
                .expect("attributes")
                .attributes
                .and_then(|mut a| a.remove(&name))
                .expect("attribute")
        }
    };
    let dlq_url = sqs
        .create_queue()
        .queue_name("work-dlq")
        .send()
        .await
        .expect("dlq")
        .queue_url
        .expect("url");
    let dlq_arn = attribute(&dlq_url, QueueAttributeName::QueueArn).await;
    let redrive = format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"2"}}"#);
    let queue_url = sqs
        .create_queue()
        .queue_name("work")
        .attributes(QueueAttributeName::VisibilityTimeout, "4")
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .send()
        .await
        .expect("queue")
        .queue_url
        .expect("url");
    let queue_arn = attribute(&queue_url, QueueAttributeName::QueueArn).await;
    for n in 0..30 {
        let body = if n % 10 == 3 {
            format!("fail {n}")
        } else {
            format!("ok {n}")
        };
        sqs.send_message()
            .queue_url(&queue_url)
            .message_body(body)
            .send()
            .await
            .expect("send");
    }

    let mut runtimes = Vec::new();
    let mut functions = Vec::new();
    for _ in 0..3 {
        let runtime = RuntimeApi::start().await.expect("runtime");
        functions.push(
            FunctionProcess::spawn(Path::new(env!("CARGO_BIN_EXE_sqs-echo")), &runtime, &[])
                .expect("function"),
        );
        runtimes.push(runtime);
    }
    let mapping = Mapping {
        queue_url: queue_url.clone(),
        queue_arn,
        batch_size: 5,
        maximum_concurrency: 2,
        function_timeout: Duration::from_secs(10),
    };
    let report = esm::run(
        &sqs,
        &mapping,
        &runtimes,
        // Longer than the visibility timeout, so failed records come back
        // before the mapping decides the queue is drained.
        Duration::from_secs(6),
        Duration::from_secs(90),
    )
    .await
    .expect("mapping");

    let mut handled: HashMap<String, usize> = HashMap::new();
    for function in &functions {
        for line in function.logs() {
            if let Some(rest) = line.strip_prefix("handled ") {
                let body = rest.split_once(' ').map_or("", |(_, b)| b).to_owned();
                *handled.entry(body).or_default() += 1;
            }
        }
    }
    for n in 0..30 {
        match n % 10 == 3 {
            true => assert_eq!(
                handled.get(&format!("fail {n}")),
                Some(&2),
                "received twice, then dead-lettered"
            ),
            false => assert_eq!(
                handled.get(&format!("ok {n}")),
                Some(&1),
                "ok {n} handled once"
            ),
        }
    }
    assert_eq!(report.deleted, 27);
    assert!(report.peak_concurrency <= 2, "{report:?}");
    let dead = sqs
        .receive_message()
        .queue_url(&dlq_url)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("dlq")
        .messages
        .unwrap_or_default();
    let mut dead: Vec<String> = dead
        .iter()
        .filter_map(|m| m.body().map(str::to_owned))
        .collect();
    dead.sort();
    assert_eq!(dead, ["fail 13", "fail 23", "fail 3"]);
}
