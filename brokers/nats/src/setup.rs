//! Making sure a JetStream subscriber's stream and consumer exist, as it asks.
//!
//! Missing ones are created (unless `create = false`). Existing ones are used as they are, but
//! only if they match what the subscriber wrote: an existing durable whose filter, deliver
//! policy, `max_ack_pending`, `max_deliver` or `ack_wait` differ, or whose pull-request limits
//! (`max_batch`, `max_expires`) brook's requests exceed, is refused with an error that says
//! what differs. brook never updates a consumer, because an update changes delivery for
//! every other application sharing it.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::{self, stream, ErrorCode};
use brook_runtime::{BrokerError, JetStreamOptions, Subscription};

use crate::message::KIND;

/// An ephemeral consumer (no `durable`) is removed by the server after this much inactivity.
const EPHEMERAL_INACTIVE: Duration = Duration::from_secs(300);

/// The consumer a subscriber reads from.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) stream: String,
    pub(crate) consumer: String,
    /// Whether [`ensure`] created the consumer (or its stream) rather than finding it.
    pub(crate) created: bool,
}

/// Whether a stream lookup failed because the stream does not exist.
fn stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// What the server has of a subscriber's consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Presence {
    /// The stream and the consumer exist.
    Both,
    /// The stream exists, the consumer does not.
    NoConsumer,
    /// The stream does not exist (nor, then, the consumer).
    NoStream,
}

/// Whether `target`'s consumer and its stream still exist on the server. Only an answer of the
/// server counts: a request that gets none is an error.
pub(crate) async fn presence(
    js: &jetstream::Context,
    target: &Target,
) -> Result<Presence, BrokerError> {
    let stream = match js.get_stream(&target.stream).await {
        Ok(stream) => stream,
        Err(e) if stream_not_found(&e) => return Ok(Presence::NoStream),
        Err(e) => return Err(BrokerError::operation(KIND, "stream info", e)),
    };
    match stream.consumer_info(&target.consumer).await {
        Ok(_) => Ok(Presence::Both),
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(Presence::NoConsumer),
        Err(e) => Err(BrokerError::operation(KIND, "consumer info", e)),
    }
}

fn invalid(message: String) -> BrokerError {
    BrokerError::Invalid {
        broker: KIND,
        message,
    }
}

/// What the subscriber wrote, as a consumer configuration of `subject`.
pub(crate) fn wanted(subject: &str, opts: &JetStreamOptions) -> pull::Config {
    let durable = opts.durable.clone();
    let deliver_policy = match opts.deliver_policy.unwrap_or_default() {
        brook_runtime::DeliverPolicy::All => DeliverPolicy::All,
        brook_runtime::DeliverPolicy::New => DeliverPolicy::New,
        brook_runtime::DeliverPolicy::Last => DeliverPolicy::Last,
    };
    pull::Config {
        inactive_threshold: if durable.is_none() {
            EPHEMERAL_INACTIVE
        } else {
            Duration::ZERO
        },
        name: durable.clone(),
        durable_name: durable,
        filter_subject: subject.to_owned(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy,
        max_ack_pending: opts.max_ack_pending.unwrap_or(0),
        max_deliver: opts.max_deliver.unwrap_or(0),
        ack_wait: opts.ack_wait.unwrap_or_default(),
        ..Default::default()
    }
}

/// Creates what is missing (if allowed) and checks what exists.
pub(crate) async fn ensure(
    js: &jetstream::Context,
    sub: &Subscription,
    opts: &JetStreamOptions,
) -> Result<Target, BrokerError> {
    let stream_name = opts.stream.as_str();
    let subject = sub.source_name();
    let create = opts.create;
    let wanted = wanted(subject, opts);

    let mut created = false;
    let stream = match js.get_stream(stream_name).await {
        Ok(stream) => stream,
        Err(e) if stream_not_found(&e) => {
            if !create {
                return Err(invalid(format!(
                    "stream `{stream_name}` does not exist and create = false"
                )));
            }
            tracing::info!(
                broker = "nats",
                stream = stream_name,
                subject,
                "creating the stream"
            );
            let config = stream::Config {
                name: stream_name.to_owned(),
                subjects: vec![subject.to_owned()],
                ..Default::default()
            };
            match js.create_stream(config).await {
                Ok(stream) => {
                    created = true;
                    stream
                }
                // Another subscriber may have created it meanwhile: use that one.
                Err(create_error) => js
                    .get_stream(stream_name)
                    .await
                    .map_err(|_| BrokerError::operation(KIND, "create stream", create_error))?,
            }
        }
        Err(e) => return Err(BrokerError::operation(KIND, "stream info", e)),
    };

    let Some(durable) = wanted.durable_name.clone() else {
        let consumer = stream
            .create_consumer(wanted)
            .await
            .map_err(|e| BrokerError::operation(KIND, "create consumer", e))?;
        let name = consumer.cached_info().name.clone();
        return Ok(Target {
            stream: stream_name.to_owned(),
            consumer: name,
            created: true,
        });
    };

    match stream.consumer_info(&durable).await {
        Ok(info) => {
            check(stream_name, &durable, sub, opts, &wanted, &info.config)?;
        }
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
            if !create {
                return Err(invalid(format!(
                    "consumer `{durable}` does not exist on stream `{stream_name}` and create = false"
                )));
            }
            tracing::info!(broker = "nats", stream = stream_name, consumer = %durable, subject, "creating the durable consumer");
            match stream.create_consumer(wanted.clone()).await {
                Ok(_) => created = true,
                Err(create_error) => {
                    // Created by a concurrent subscriber? Then it must match too.
                    let info = stream.consumer_info(&durable).await.map_err(|_| {
                        BrokerError::operation(KIND, "create consumer", create_error)
                    })?;
                    check(stream_name, &durable, sub, opts, &wanted, &info.config)?;
                }
            }
        }
        Err(e) => return Err(BrokerError::operation(KIND, "consumer info", e)),
    }
    Ok(Target {
        stream: stream_name.to_owned(),
        consumer: durable,
        created,
    })
}

/// Refuses an existing consumer that differs from what the subscriber asks for (settings the
/// subscriber did not write are not compared).
fn check(
    stream: &str,
    durable: &str,
    sub: &Subscription,
    opts: &JetStreamOptions,
    wanted: &pull::Config,
    existing: &jetstream::consumer::Config,
) -> Result<(), BrokerError> {
    let mut diffs = Vec::new();
    if existing.deliver_subject.is_some() {
        diffs.push("it is a push consumer; brook reads through pull consumers".to_owned());
    }
    if existing.ack_policy != AckPolicy::Explicit {
        diffs.push(format!(
            "ack_policy is {:?}, brook needs explicit acks",
            existing.ack_policy
        ));
    }
    if existing.filter_subject != wanted.filter_subject {
        diffs.push(format!(
            "filter subject is `{}`, the subscriber reads `{}`",
            existing.filter_subject, wanted.filter_subject
        ));
    }
    if opts.deliver_policy.is_some() && existing.deliver_policy != wanted.deliver_policy {
        diffs.push(format!(
            "deliver_policy is {:?}, the subscriber asks for {:?}",
            existing.deliver_policy, wanted.deliver_policy
        ));
    }
    if opts.max_ack_pending.is_some() && existing.max_ack_pending != wanted.max_ack_pending {
        diffs.push(format!(
            "max_ack_pending is {}, the subscriber asks for {}",
            existing.max_ack_pending, wanted.max_ack_pending
        ));
    }
    if opts.max_deliver.is_some() && existing.max_deliver != wanted.max_deliver {
        diffs.push(format!(
            "max_deliver is {}, the subscriber asks for {}",
            existing.max_deliver, wanted.max_deliver
        ));
    }
    if opts.ack_wait.is_some() && existing.ack_wait != wanted.ack_wait {
        diffs.push(format!(
            "ack_wait is {:?}, the subscriber asks for {:?}",
            existing.ack_wait, wanted.ack_wait
        ));
    }
    // Limits on pull requests: brook's requests must fit, or the server refuses every one.
    let batch = crate::consumer::batch_size(opts);
    if existing.max_batch > 0 && i64::try_from(batch).map_or(true, |b| b > existing.max_batch) {
        diffs.push(format!(
            "max_batch is {}, the subscriber pulls {batch} at a time (set batch = {} or less)",
            existing.max_batch, existing.max_batch
        ));
    }
    if !existing.max_expires.is_zero() && existing.max_expires < crate::consumer::PULL_EXPIRES {
        diffs.push(format!(
            "max_expires is {:?}, brook's pull requests wait up to {:?}",
            existing.max_expires,
            crate::consumer::PULL_EXPIRES
        ));
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(invalid(format!(
        "the existing consumer `{durable}` on stream `{stream}` does not match subscriber `{}`: {}. \
         brook never reconfigures a consumer: change the subscriber, or delete/update the consumer yourself",
        sub.name(),
        diffs.join("; ")
    )))
}
