//! Planning: an event becomes a [`Plan`] — the job with its head rendered,
//! its id and model settled, the targets it may use, where its results go and
//! the ledger that guards it — before any document, STS or Bedrock call.

use crate::config::Config;
use crate::destination::DestinationSpec;
use crate::domain::batch_job::{choose, ModeChoice, Workload};
use crate::domain::chunks::{BatchPlan, ChunkRange, ItemsObject, PLAN_VERSION};
use crate::domain::input::{Envelope, Input, Payload, Shape};
use crate::domain::job::{is_template, sanitize_id, Job, ResolvedJob};
use crate::domain::record::Record;
use crate::domain::sources::SourceError;
use crate::domain::target::Target;
use crate::error::RelayError;
use crate::ledger::Ledger;
use crate::template::Scope;

use super::Services;

/// Where a job's results go and how it remembers finished work.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// The destination.
    pub destination: DestinationSpec,
    /// Where finished work is looked up and claims are written.
    pub ledger: Ledger,
    /// FIFO message group.
    pub group: String,
}

impl Delivery {
    /// The destination and ledger for a job's results.
    pub(crate) fn new(
        services: &Services,
        destination: DestinationSpec,
        job_id: &str,
        group: Option<&str>,
    ) -> Self {
        Self {
            ledger: Ledger::for_destination(
                &destination,
                services.config().idempotency_table.as_ref(),
                services.sinks(),
            ),
            destination,
            group: group.unwrap_or(job_id).to_owned(),
        }
    }

    /// The configured destination, for failures before the job's own is known.
    pub(crate) fn fallback(services: &Services, request_id: &str) -> Self {
        Self {
            destination: services.config().destination.clone(),
            ledger: Ledger::Off,
            group: request_id.to_owned(),
        }
    }
}

/// A job checked and ready to run.
#[derive(Debug)]
pub(crate) struct Plan<'s> {
    /// The job with its head (id, destination, group, items_from and, for a
    /// single job, documents) rendered.
    pub job: Job,
    /// Id, model and targets, settled.
    pub resolved: ResolvedJob,
    /// The targets the work is spread over, checked against the model.
    pub pool: Vec<&'s Target>,
    /// The event's shape.
    pub shape: Shape,
    /// The envelope, for templates.
    pub scope: Scope,
    /// Where results go.
    pub delivery: Delivery,
    /// The job's record so far (id, shape, event, model, metadata).
    pub record: Record,
    /// Why a batch runs on-demand, once the mode is chosen (for its answer).
    pub mode_reason: Option<String>,
}

/// An event that cannot be planned: the record to fail and where to write it.
#[derive(Debug)]
pub(crate) struct Unplanned {
    pub record: Record,
    pub delivery: Delivery,
    pub err: RelayError,
}

/// Turns an event into a plan; where, who and what are settled before any
/// document, STS or Bedrock call.
pub(crate) fn plan<'s>(
    services: &'s Services,
    payload: &Payload,
    request_id: &str,
) -> Result<Plan<'s>, Box<Unplanned>> {
    let config = services.config();
    let mut record = Record::started(request_id);
    let refuse = |record: Record, delivery: Delivery, err: RelayError| {
        Box::new(Unplanned {
            record,
            delivery,
            err,
        })
    };
    let fallback = Delivery::fallback(services, request_id);

    let input = match Input::from_payload(payload, config.default_job.as_ref()) {
        Ok(input) => input,
        Err(err) => {
            record.event = Envelope::peek(payload);
            if let Some(id) = record.event.as_ref().and_then(|e| e.id.clone()) {
                record.job_id = sanitize_id(&id);
            }
            return Err(refuse(record, fallback, err.into()));
        }
    };
    record.shape = Some(input.shape);
    record.event = input.envelope.clone();
    let fallback_id = input
        .envelope
        .as_ref()
        .and_then(|e| e.id.as_deref())
        .unwrap_or(request_id);
    let identify = |record: &mut Record, job: &Job| {
        // A templated id that did not render cannot name the record.
        record.job_id = match job.id.as_deref() {
            Some(id) if !is_template(id) => sanitize_id(id),
            _ => sanitize_id(fallback_id),
        };
        record.model = job.model.clone().or_else(|| config.default_model.clone());
        record.metadata = job.metadata.clone();
    };

    let scope = Scope::event(input.envelope.as_ref().map(|e| e.event.clone()));
    let mut job = input.job;
    record.batch = job.is_batch();
    if let Err(err) = services.renderer().render_head(&mut job, &scope) {
        identify(&mut record, &job);
        return Err(refuse(record, fallback, err.into()));
    }
    let destination = match config.destination_for(job.destination.as_deref()) {
        Ok(destination) => destination,
        Err(err) => {
            identify(&mut record, &job);
            return Err(refuse(record, fallback, err.into()));
        }
    };
    let checked = job
        .resolve_with(&config.job_defaults(), fallback_id)
        .map_err(RelayError::from)
        .and_then(|mut resolved| {
            scope_id(services, &scope, &mut resolved)?;
            check_sources(config, &job)?;
            Ok(resolved)
        });
    let resolved = match checked {
        Ok(resolved) => resolved,
        Err(err) => {
            identify(&mut record, &job);
            let delivery = Delivery::new(services, destination, &record.job_id, None);
            return Err(refuse(record, delivery, err));
        }
    };
    record.job_id = resolved.id.clone();
    record.model = Some(resolved.model.clone());
    record.metadata = resolved.metadata.clone();
    let delivery = Delivery::new(services, destination, &resolved.id, job.group.as_deref());

    // The targets and model are checked before any STS or Bedrock call.
    let pool = match config
        .targets
        .select_pool(&resolved.targets, &resolved.model)
    {
        Ok(pool) => pool,
        Err(err) => return Err(refuse(record, delivery, err.into())),
    };
    Ok(Plan {
        job,
        resolved,
        pool,
        shape: input.shape,
        scope,
        delivery,
        record,
        mode_reason: None,
    })
}

impl Plan<'_> {
    /// How this batch of `items` runs: the job's `mode` (else
    /// `RELAY_DEFAULT_MODE`) against what is configured for its targets.
    pub(crate) fn choose_mode(
        &self,
        services: &Services,
        items: usize,
    ) -> Result<ModeChoice, RelayError> {
        let config = services.config();
        let requested = self.resolved.mode.unwrap_or(config.batch_jobs.default_mode);
        let mut settings = config.batch_jobs.settings(&self.pool);
        settings.configured &= self
            .pool
            .first()
            .is_some_and(|target| services.batch_side(&target.alias).is_some());
        let work = Workload {
            items,
            complete_within: self.resolved.complete_within,
            converse: self.resolved.invoke.is_none(),
            on_demand_feature: match &self.resolved.features {
                f if f.guardrail.is_some() => Some("guardrail"),
                f if f.service_tier.is_some() => Some("service_tier"),
                _ => None,
            },
        };
        Ok(choose(requested, &work, &settings)?)
    }

    /// The plan a fanned-out batch's chunks run by: this job without its
    /// items, its id and model settled.
    pub(crate) fn freeze(
        &self,
        items: ItemsObject,
        chunks: Vec<ChunkRange>,
        request_id: &str,
    ) -> Result<BatchPlan, serde_json::Error> {
        let mut job = self.job.clone();
        job.items = None;
        job.items_from = None;
        // The chunks run on-demand; how the batch ran is in its store.
        job.mode = None;
        job.id = Some(self.resolved.id.clone());
        job.model = Some(self.resolved.model.clone());
        job.destination = Some(self.delivery.destination.to_string());
        job.group = Some(self.delivery.group.clone());
        Ok(BatchPlan {
            version: PLAN_VERSION,
            job_id: self.resolved.id.clone(),
            job: serde_json::to_value(job)?,
            event: self.scope.event.clone(),
            shape: serde_json::to_value(self.shape)?,
            destination: self.delivery.destination.to_string(),
            group: self.delivery.group.clone(),
            items,
            chunks,
            planned_at: crate::domain::record::now_rfc3339(),
            planned_by: request_id.to_owned(),
            mode: None,
        })
    }
}

/// A chunk's plan, from its batch's frozen one. Checked again as a new job
/// would be (destination, sources, targets and model): the configuration may
/// have changed since the batch was planned.
pub(crate) fn thaw<'s>(
    services: &'s Services,
    frozen: &BatchPlan,
    request_id: &str,
) -> Result<Plan<'s>, RelayError> {
    let config = services.config();
    let job = Job::from_value(frozen.job.clone())?;
    let resolved = job.resolve_with(&config.job_defaults(), &frozen.job_id)?;
    check_sources(config, &job)?;
    let destination = config.destination_for(Some(&frozen.destination))?;
    let delivery = Delivery::new(services, destination, &resolved.id, Some(&frozen.group));
    let pool = config
        .targets
        .select_pool(&resolved.targets, &resolved.model)?;
    let shape: Shape = serde_json::from_value(frozen.shape.clone()).unwrap_or(Shape::JobEvent);
    let mut record = Record::started(request_id);
    record.job_id = resolved.id.clone();
    record.shape = Some(shape);
    record.event = frozen
        .event
        .clone()
        .and_then(|event| Envelope::peek(&Payload::Json(event)));
    record.model = Some(resolved.model.clone());
    record.metadata = resolved.metadata.clone();
    record.batch = true;
    Ok(Plan {
        job,
        resolved,
        pool,
        shape,
        scope: Scope::event(frozen.event.clone()),
        delivery,
        record,
        mode_reason: None,
    })
}

/// Scopes the job id with `RELAY_ID_PREFIX`, rendered from the envelope. A
/// direct invocation has no envelope and is not scoped: it needs
/// `lambda:InvokeFunction`, which only the operator grants.
fn scope_id(
    services: &Services,
    scope: &Scope,
    resolved: &mut ResolvedJob,
) -> Result<(), RelayError> {
    let (Some(prefix), Some(_)) = (services.config().id_prefix.as_deref(), &scope.event) else {
        return Ok(());
    };
    let prefix = services
        .renderer()
        .render("RELAY_ID_PREFIX", prefix, scope)?;
    resolved.scope_id(&prefix)?;
    Ok(())
}

/// Checks `items_from` and every `documents` entry already known (rendered,
/// or plain text in a batch) against `RELAY_ALLOWED_SOURCES`, before any read.
/// Entries rendered per item are checked when each item is prepared.
fn check_sources(config: &Config, job: &Job) -> Result<(), SourceError> {
    if let Some(uri) = &job.items_from {
        config.sources.check("items_from", uri)?;
    }
    for (i, uri) in job.documents.iter().flatten().enumerate() {
        if !is_template(uri) {
            config.sources.check(&format!("documents[{i}]"), uri)?;
        }
    }
    Ok(())
}
