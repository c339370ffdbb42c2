//! Account B's message services and tables in the lab's moto, set up and read
//! as an administrator so tests can see what the function delivered: queues
//! (standard and FIFO) and everything on them, topics and buses wired to a
//! queue so their messages and events can be read, and DynamoDB tables in the
//! relay's layout.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_eventbridge::types::{RuleState, Target};
use aws_sdk_s3::config::Region;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use serde_json::{json, Value};

use crate::moto::REGION;
use crate::{s3_client, Lab, LabError};

/// An SDK configuration for the lab's moto acting with `credentials` (whose
/// session decides the account), with timeouts so a stuck call fails a test
/// rather than hanging it.
pub async fn sdk_config(endpoint: &str, credentials: &Credentials) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(credentials.clone())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(20))
                .build(),
        )
        .load()
        .await
}

/// A queue in account B.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabQueue {
    /// The URL moto gave it.
    pub url: String,
    /// Its ARN.
    pub arn: String,
}

/// A message read from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The queue's message id.
    pub message_id: String,
    /// The body.
    pub body: String,
    /// Message attributes, by name: their string values.
    pub attributes: BTreeMap<String, String>,
    /// The FIFO message group, for a FIFO queue.
    pub group_id: Option<String>,
    /// The FIFO deduplication id, for a FIFO queue.
    pub deduplication_id: Option<String>,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value, LabError> {
        Ok(serde_json::from_str(&self.body)?)
    }
}

/// Account B's admin clients for SQS, SNS, EventBridge, DynamoDB and S3.
#[derive(Debug, Clone)]
pub struct Services {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    events: aws_sdk_eventbridge::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
}

fn aws<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> LabError + '_ {
    move |err| LabError::Aws(format!("{what}: {err:?}"))
}

impl Services {
    /// Clients acting as account B's administrator.
    pub async fn of(lab: &Lab) -> Self {
        Self::at(lab.moto.endpoint(), &lab.admin_b).await
    }

    /// Clients of the moto server at `endpoint`, signed with `credentials`.
    pub async fn at(endpoint: &str, credentials: &Credentials) -> Self {
        let config = sdk_config(endpoint, credentials).await;
        Self {
            sqs: aws_sdk_sqs::Client::new(&config),
            sns: aws_sdk_sns::Client::new(&config),
            events: aws_sdk_eventbridge::Client::new(&config),
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            s3: s3_client(endpoint, credentials),
        }
    }

    /// Creates a queue; a FIFO one when `name` ends in `.fifo`, without
    /// content-based deduplication so messages need their own ids.
    pub async fn create_queue(&self, name: &str) -> Result<LabQueue, LabError> {
        let mut request = self.sqs.create_queue().queue_name(name);
        if name.ends_with(".fifo") {
            request = request
                .attributes(QueueAttributeName::FifoQueue, "true")
                .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
        }
        let url = request
            .send()
            .await
            .map_err(aws("create queue"))?
            .queue_url
            .ok_or_else(|| LabError::Aws(format!("create queue {name}: no url")))?;
        let arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(aws("queue arn"))?
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .ok_or_else(|| LabError::Aws(format!("queue {name}: no arn")))?;
        Ok(LabQueue { url, arn })
    }

    /// Every message on the queue, oldest first as SQS hands them out; each is
    /// deleted once read (so FIFO groups are not held back).
    pub async fn receive_all(&self, queue_url: &str) -> Result<Vec<Received>, LabError> {
        let mut received = Vec::new();
        loop {
            let output = self
                .sqs
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .map_err(aws("receive"))?;
            let messages = output.messages.unwrap_or_default();
            if messages.is_empty() {
                return Ok(received);
            }
            let mut deletes = Vec::new();
            for message in messages {
                let system = message.attributes.clone().unwrap_or_default();
                let attributes = message
                    .message_attributes
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(name, value)| Some((name, value.string_value?)))
                    .collect();
                let handle = message.receipt_handle.clone().unwrap_or_default();
                deletes.push(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(deletes.len().to_string())
                        .receipt_handle(handle)
                        .build()
                        .map_err(aws("delete entry"))?,
                );
                received.push(Received {
                    message_id: message.message_id.unwrap_or_default(),
                    body: message.body.unwrap_or_default(),
                    attributes,
                    group_id: system
                        .get(&MessageSystemAttributeName::MessageGroupId)
                        .cloned(),
                    deduplication_id: system
                        .get(&MessageSystemAttributeName::MessageDeduplicationId)
                        .cloned(),
                });
            }
            self.sqs
                .delete_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(deletes))
                .send()
                .await
                .map_err(aws("delete"))?;
        }
    }

    /// Creates a topic (FIFO when `name` ends in `.fifo`) subscribed by a new
    /// queue of the same name with raw message delivery, so each published
    /// message arrives on the queue as its body and attributes. Returns the
    /// topic ARN and the queue.
    pub async fn create_topic_to_queue(&self, name: &str) -> Result<(String, LabQueue), LabError> {
        let fifo = name.ends_with(".fifo");
        let mut request = self.sns.create_topic().name(name);
        if fifo {
            request = request
                .attributes("FifoTopic", "true")
                .attributes("ContentBasedDeduplication", "false");
        }
        let topic_arn = request
            .send()
            .await
            .map_err(aws("create topic"))?
            .topic_arn
            .ok_or_else(|| LabError::Aws(format!("create topic {name}: no arn")))?;
        let queue = self.create_queue(name).await?;
        self.sns
            .subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(&queue.arn)
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .map_err(aws("subscribe"))?;
        Ok((topic_arn, queue))
    }

    /// Creates an event bus with a rule matching `source: ["bedrock-relay"]`
    /// that targets a new queue of the same name, so each event arrives on the
    /// queue as its JSON envelope. Returns the bus ARN and the queue.
    pub async fn create_bus_to_queue(&self, name: &str) -> Result<(String, LabQueue), LabError> {
        let bus_arn = self
            .events
            .create_event_bus()
            .name(name)
            .send()
            .await
            .map_err(aws("create bus"))?
            .event_bus_arn
            .ok_or_else(|| LabError::Aws(format!("create bus {name}: no arn")))?;
        let queue = self.create_queue(name).await?;
        self.events
            .put_rule()
            .name(name)
            .event_bus_name(name)
            .event_pattern(json!({"source": ["bedrock-relay"]}).to_string())
            .state(RuleState::Enabled)
            .send()
            .await
            .map_err(aws("put rule"))?;
        let target = Target::builder()
            .id("queue")
            .arn(&queue.arn)
            .build()
            .map_err(aws("target"))?;
        self.events
            .put_targets()
            .rule(name)
            .event_bus_name(name)
            .targets(target)
            .send()
            .await
            .map_err(aws("put targets"))?;
        Ok((bus_arn, queue))
    }

    /// Creates a table in the relay's layout (`job_id` S partition key, `item`
    /// N sort key, on demand); returns its ARN.
    pub async fn create_table(&self, name: &str) -> Result<String, LabError> {
        self.create_keyed_table(
            name,
            &[
                ("job_id", ScalarAttributeType::S, KeyType::Hash),
                ("item", ScalarAttributeType::N, KeyType::Range),
            ],
        )
        .await
    }

    /// Creates a rate table as template.yaml makes it (`pk` S partition key,
    /// on demand); returns its ARN.
    pub async fn create_rate_table(&self, name: &str) -> Result<String, LabError> {
        self.create_keyed_table(name, &[("pk", ScalarAttributeType::S, KeyType::Hash)])
            .await
    }

    /// An on-demand table with `keys` (name, type, role); returns its ARN.
    async fn create_keyed_table(
        &self,
        name: &str,
        keys: &[(&str, ScalarAttributeType, KeyType)],
    ) -> Result<String, LabError> {
        let mut create = self
            .dynamodb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest);
        for (key, kind, role) in keys {
            create = create
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(*key)
                        .attribute_type(kind.clone())
                        .build()
                        .map_err(aws("attribute"))?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(*key)
                        .key_type(role.clone())
                        .build()
                        .map_err(aws("key"))?,
                );
        }
        create
            .send()
            .await
            .map_err(aws("create table"))?
            .table_description
            .and_then(|t| t.table_arn)
            .ok_or_else(|| LabError::Aws(format!("create table {name}: no arn")))
    }

    /// Puts the item `pk` with numeric attributes `numbers` in table `name`
    /// (a rate-table schedule, say, as another writer left it).
    pub async fn put_numbers(
        &self,
        name: &str,
        pk: &str,
        numbers: &[(&str, u64)],
    ) -> Result<(), LabError> {
        let mut put = self
            .dynamodb
            .put_item()
            .table_name(name)
            .item("pk", AttributeValue::S(pk.to_owned()));
        for (attribute, n) in numbers {
            put = put.item(*attribute, AttributeValue::N(n.to_string()));
        }
        put.send().await.map_err(aws("put item"))?;
        Ok(())
    }

    /// Every item in the table as JSON (strings and numbers as such), sorted
    /// by `job_id` and `item`.
    pub async fn scan_table(&self, name: &str) -> Result<Vec<Value>, LabError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .dynamodb
                .scan()
                .table_name(name)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(aws("scan"))?;
            for item in output.items.unwrap_or_default() {
                let object = item
                    .into_iter()
                    .map(|(name, value)| (name, attribute_json(value)))
                    .collect();
                items.push(Value::Object(object));
            }
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        items.sort_by_key(|item| {
            (
                item["job_id"].as_str().unwrap_or_default().to_owned(),
                item["item"].as_u64().unwrap_or_default(),
            )
        });
        Ok(items)
    }

    /// An object's bytes and content type, if it exists.
    pub async fn object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, LabError> {
        match self.s3.get_object().bucket(bucket).key(key).send().await {
            Ok(output) => {
                let content_type = output.content_type.clone();
                let bytes = output
                    .body
                    .collect()
                    .await
                    .map_err(|e| LabError::Aws(format!("read {key}: {e}")))?
                    .into_bytes()
                    .to_vec();
                Ok(Some((bytes, content_type)))
            }
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(err) => Err(LabError::Aws(format!("get {key}: {err:?}"))),
        }
    }
}

/// A DynamoDB attribute as JSON: S as a string, N as a number (as a string if
/// it does not parse), anything else by its debug form.
fn attribute_json(value: AttributeValue) -> Value {
    match value {
        AttributeValue::S(text) => Value::String(text),
        AttributeValue::N(number) => number
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| number.parse::<f64>().map(Value::from))
            .unwrap_or(Value::String(number)),
        other => Value::String(format!("{other:?}")),
    }
}
