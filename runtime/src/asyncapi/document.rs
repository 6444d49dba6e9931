//! The AsyncAPI 3.0 document of an App, built from what the App already knows: its brokers
//! ([`Broker::server`](crate::Broker::server)), each subscriber's validated subscription
//! (source, names as configured at run time, policy, options, output) and what its handler
//! describes of itself (payload and result types, doc comment).

use std::collections::BTreeMap;

use brook_caps::{AckPolicy, BrokerKind, ExchangeType, Options, RedisSource, Source};
use serde_json::{json, Map, Value};

use super::describe::{Described, Shape};
use crate::broker::ServerInfo;
use crate::headers::{CORRELATION_ID, REPLY_TO};
use crate::message::Settlement;
use crate::subscription::Subscription;

/// The headers schema's key in `components.schemas`: a `.` no schemars name has, so it never
/// replaces a user type's schema.
const HEADERS: &str = "brook.Headers";

/// The AsyncAPI version written.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// The schema generator every handler's types go through: JSON Schema draft 7 (what AsyncAPI
/// 3.0's default schema format builds on), definitions under `#/components/schemas`.
pub(crate) fn schema_generator() -> schemars::SchemaGenerator {
    schemars::generate::SchemaSettings::draft07()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator()
}

/// The AsyncAPI 3.0 document of an App: [`App::asyncapi`](crate::App::asyncapi).
///
/// ```
/// use brook_runtime::{App, MemoryBroker};
/// let doc = App::new(MemoryBroker::new()).asyncapi().title("billing").version("1.4.0");
/// let value = doc.to_value();
/// assert_eq!(value["asyncapi"], "3.0.0");
/// assert_eq!(value["info"]["title"], "billing");
/// assert!(doc.to_yaml().starts_with("asyncapi: \"3.0.0\"\n"));
/// ```
#[derive(Debug)]
pub struct AsyncApi {
    title: String,
    version: String,
    description: Option<String>,
    servers: Vec<(BrokerKind, ServerInfo)>,
    subscribers: Vec<(Subscription, Described)>,
    sends: Vec<Sending>,
    describe: super::Describe,
}

#[derive(Debug)]
struct Sending {
    broker: BrokerKind,
    destination: String,
    message: Shape,
    summary: Option<String>,
}

impl AsyncApi {
    pub(crate) fn new(
        servers: Vec<(BrokerKind, ServerInfo)>,
        subscribers: Vec<(Subscription, Described)>,
        describe: super::Describe,
    ) -> Self {
        AsyncApi {
            title: "brook application".into(),
            version: "1.0.0".into(),
            description: None,
            servers,
            subscribers,
            sends: Vec::new(),
            describe,
        }
    }

    /// The document's title (`info.title`; default "brook application").
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// The application's version (`info.version`; default "1.0.0"), e.g.
    /// `env!("CARGO_PKG_VERSION")`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// A description of the application (`info.description`, CommonMark).
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Documents a `T` the App publishes to `destination` on `broker` other than as a
    /// subscriber's output (from a [`Publisher`](crate::Publisher) argument, or from outside a
    /// handler): a `send` operation with `T`'s schema.
    pub fn publishes<T: schemars::JsonSchema + ?Sized>(
        mut self,
        broker: BrokerKind,
        destination: impl Into<String>,
    ) -> Self {
        self.describe.result_with_schema::<T>();
        self.add_send(broker, destination.into());
        self
    }

    /// As [`publishes`](Self::publishes), for a type without a JSON Schema.
    pub fn publishes_without_schema<T: ?Sized>(
        mut self,
        broker: BrokerKind,
        destination: impl Into<String>,
    ) -> Self {
        self.describe.result_without_schema::<T>();
        self.add_send(broker, destination.into());
        self
    }

    fn add_send(&mut self, broker: BrokerKind, destination: String) {
        if let Some(message) = self.describe.take().result {
            self.sends.push(Sending {
                broker,
                destination,
                message,
                summary: None,
            });
        }
    }

    /// The document as JSON, pretty-printed.
    pub fn to_json(&self) -> String {
        // A `Value` always serializes.
        serde_json::to_string_pretty(&self.to_value()).unwrap_or_default()
    }

    /// The document as YAML.
    pub fn to_yaml(&self) -> String {
        super::yaml::to_yaml(&self.to_value())
    }

    /// The document as a JSON value.
    pub fn to_value(&self) -> Value {
        let mut builder = Builder::default();
        let mut schemas = self.describe.definitions();
        for (kind, server) in &self.servers {
            builder
                .servers
                .insert(kind.name().to_owned(), server_object(server));
        }
        for (sub, described) in &self.subscribers {
            builder.subscriber(sub, described, self.vhost());
        }
        for send in &self.sends {
            let channel = builder.channel(send.broker, &send.destination, None);
            let message = builder.message(&channel, Some(&send.message));
            let id = builder.unique_operation(&format!("publish_{}", ident(&send.destination)));
            let mut op = operation("send", &channel, &[message]);
            op.insert(
                "summary".into(),
                json!(send
                    .summary
                    .clone()
                    .unwrap_or_else(|| format!("Publishes to `{}`.", send.destination))),
            );
            builder.operations.insert(id, Value::Object(op));
        }
        schemas.insert(HEADERS.into(), headers_schema());
        let mut info = Map::new();
        info.insert("title".into(), json!(self.title));
        info.insert("version".into(), json!(self.version));
        if let Some(d) = &self.description {
            info.insert("description".into(), json!(d));
        }
        let mut doc = Map::new();
        doc.insert("asyncapi".into(), json!(ASYNCAPI_VERSION));
        doc.insert("info".into(), Value::Object(info));
        doc.insert("defaultContentType".into(), json!(crate::codec::JSON));
        if !builder.servers.is_empty() {
            doc.insert("servers".into(), to_map(builder.servers));
        }
        doc.insert("channels".into(), to_map(builder.channels));
        doc.insert("operations".into(), to_map(builder.operations));
        doc.insert(
            "components".into(),
            json!({
                "messages": to_map(builder.messages),
                "schemas": schemas,
                "correlationIds": {
                    "CorrelationId": {
                        "description": "Carried from a message to the outputs and replies its handler publishes.",
                        "location": format!("$message.header#/{CORRELATION_ID}"),
                    }
                }
            }),
        );
        Value::Object(doc)
    }

    fn vhost(&self) -> Option<&str> {
        self.servers
            .iter()
            .find(|(kind, _)| *kind == BrokerKind::Rabbit)
            .and_then(|(_, s)| s.pathname.as_deref())
    }
}

fn to_map(map: BTreeMap<String, Value>) -> Value {
    Value::Object(map.into_iter().collect())
}

/// Collects channels, operations and messages, giving each a unique id.
#[derive(Default)]
struct Builder {
    servers: BTreeMap<String, Value>,
    channels: BTreeMap<String, Value>,
    // (broker, address) -> channel id
    channel_ids: BTreeMap<(&'static str, String), String>,
    operations: BTreeMap<String, Value>,
    messages: BTreeMap<String, Value>,
    // Rust type -> message id
    message_ids: BTreeMap<&'static str, String>,
}

/// A channel's id, for `$ref`s.
struct ChannelRef(String);

impl Builder {
    fn subscriber(&mut self, sub: &Subscription, described: &Described, vhost: Option<&str>) {
        let addresses = match sub.options().kafka() {
            Some(kafka) if kafka.topics.len() > 1 => kafka.topics.clone(),
            _ => vec![sub.source_name().to_owned()],
        };
        let several = addresses.len() > 1;
        for address in addresses {
            let channel = self.channel(
                sub.broker(),
                &address,
                channel_bindings(sub, &address, vhost),
            );
            let message = self.message(&channel, described.payload.as_ref());
            let base = if several {
                format!("{}_{}", ident(sub.name()), ident(&address))
            } else {
                ident(sub.name())
            };
            let id = self.unique_operation(&base);
            let mut op = operation("receive", &channel, &[message]);
            op.insert("title".into(), json!(sub.name()));
            document(&mut op, described.doc.as_deref());
            if let Some(bindings) = operation_bindings(sub) {
                op.insert("bindings".into(), bindings);
            }
            extensions(&mut op, sub);
            if let (true, Some(result)) = (sub.replies(), described.result.as_ref()) {
                let reply = self.reply_channel(&id, sub.broker());
                let message = self.message(&reply, Some(result));
                op.insert(
                    "reply".into(),
                    json!({
                        "address": {
                            "description": "The requester's reply address, from the message's reply_to.",
                            "location": format!("$message.header#/{REPLY_TO}"),
                        },
                        "channel": channel_ref(&reply),
                        "messages": [message],
                    }),
                );
            }
            self.operations.insert(id.clone(), Value::Object(op));
            // brook publishes the output whatever the handler could say of its type.
            if let Some(output) = sub.output() {
                let channel = self.channel(output.broker, &output.destination, None);
                let message = match described.result.as_ref() {
                    Some(result) => self.message(&channel, Some(result)),
                    None => self.message(&channel, Some(&Shape::undescribed())),
                };
                let send = self.unique_operation(&format!("{id}_publish"));
                let mut op = operation("send", &channel, &[message]);
                op.insert("title".into(), json!(format!("{} (output)", sub.name())));
                op.insert(
                    "summary".into(),
                    json!(format!(
                        "Publishes the result of `{}`, after its handler succeeded and before its input is settled.",
                        sub.name()
                    )),
                );
                op.insert("x-brook-subscriber".into(), json!(sub.name()));
                self.operations.insert(send, Value::Object(op));
            }
        }
    }

    /// The channel at `address` on `broker`, added if new.
    fn channel(
        &mut self,
        broker: BrokerKind,
        address: &str,
        bindings: Option<Value>,
    ) -> ChannelRef {
        if let Some(id) = self.channel_ids.get(&(broker.name(), address.to_owned())) {
            // A channel first seen as an output gets the bindings of its subscriber.
            if let (Some(bindings), Some(Value::Object(channel))) =
                (bindings, self.channels.get_mut(id))
            {
                channel.entry("bindings").or_insert(bindings);
            }
            return ChannelRef(id.clone());
        }
        let id = unique(
            &format!("{}_{}", broker.name(), ident(address)),
            &self.channels,
        );
        let mut channel = Map::new();
        channel.insert("address".into(), json!(address));
        channel.insert("title".into(), json!(address));
        if let Some(parameters) = literal_parameters(address) {
            channel.insert("parameters".into(), parameters);
        }
        self.channel_servers(&mut channel, broker);
        channel.insert("messages".into(), json!({}));
        if let Some(bindings) = bindings {
            channel.insert("bindings".into(), bindings);
        }
        self.channels.insert(id.clone(), Value::Object(channel));
        self.channel_ids
            .insert((broker.name(), address.to_owned()), id.clone());
        ChannelRef(id)
    }

    /// A channel with no fixed address: where a subscriber's replies go.
    fn reply_channel(&mut self, operation: &str, broker: BrokerKind) -> ChannelRef {
        let id = unique(&format!("{operation}_reply"), &self.channels);
        let mut channel = Map::new();
        channel.insert("address".into(), Value::Null);
        channel.insert(
            "description".into(),
            json!("Wherever the request's reply_to points; known only at run time."),
        );
        self.channel_servers(&mut channel, broker);
        channel.insert("messages".into(), json!({}));
        self.channels.insert(id.clone(), Value::Object(channel));
        ChannelRef(id)
    }

    fn channel_servers(&self, channel: &mut Map<String, Value>, broker: BrokerKind) {
        if self.servers.contains_key(broker.name()) {
            channel.insert(
                "servers".into(),
                json!([{ "$ref": format!("#/servers/{}", broker.name()) }]),
            );
        }
    }

    /// Adds the message for `shape` to `channel` (and to the components, once per type);
    /// returns the `$ref` an operation uses.
    fn message(&mut self, channel: &ChannelRef, shape: Option<&Shape>) -> Value {
        let (key, rust_type) = match shape {
            Some(shape) => (short_name(shape.rust_type), shape.rust_type),
            None => ("RawMessage".to_owned(), "brook::Message"),
        };
        let id = match self.message_ids.get(rust_type) {
            Some(id) => id.clone(),
            None => {
                let id = unique(&key, &self.messages);
                self.messages
                    .insert(id.clone(), message_object(&id, rust_type, shape));
                self.message_ids.insert(rust_type, id.clone());
                id
            }
        };
        if let Some(Value::Object(c)) = self.channels.get_mut(&channel.0) {
            if let Some(Value::Object(messages)) = c.get_mut("messages") {
                messages.insert(
                    id.clone(),
                    json!({ "$ref": format!("#/components/messages/{id}") }),
                );
            }
        }
        json!({ "$ref": format!("#/channels/{}/messages/{id}", channel.0) })
    }

    fn unique_operation(&self, base: &str) -> String {
        unique(base, &self.operations)
    }
}

fn unique(base: &str, taken: &BTreeMap<String, Value>) -> String {
    if !taken.contains_key(base) {
        return base.to_owned();
    }
    (2..)
        .map(|n| format!("{base}_{n}"))
        .find(|id| !taken.contains_key(id))
        .unwrap_or_else(|| base.to_owned())
}

/// An id AsyncAPI accepts as a component key (`[A-Za-z0-9_.-]`).
fn ident(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    if id.is_empty() {
        "_".into()
    } else {
        id
    }
}

/// `app::orders::Order<app::Money>` -> `Order_Money_`.
fn short_name(rust_type: &str) -> String {
    let base = rust_type.split('<').next().unwrap_or(rust_type);
    let short = base.rsplit("::").next().unwrap_or(base);
    let rest = &rust_type[base.len()..];
    let args: String = rest
        .split(|c: char| !c.is_alphanumeric() && c != ':' && c != '_')
        .filter(|s| !s.is_empty())
        .map(|s| s.rsplit("::").next().unwrap_or(s))
        .collect::<Vec<_>>()
        .join("_");
    if args.is_empty() {
        ident(short)
    } else {
        ident(&format!("{short}_{args}"))
    }
}

/// AsyncAPI reads `{x}` in an address as a parameter; in brook's names braces are literal (a
/// Redis Cluster hash tag, `orders:{eu}`), so each such part is declared as a parameter whose
/// only value is itself.
fn literal_parameters(address: &str) -> Option<Value> {
    let mut parameters = Map::new();
    let mut rest = address;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        parameters.insert(
            name.to_owned(),
            json!({
                "enum": [format!("{{{name}}}")],
                "description": "Part of the name as written: braces in brook's names are literal.",
            }),
        );
        rest = &rest[open + close + 1..];
    }
    (!parameters.is_empty()).then_some(Value::Object(parameters))
}

fn channel_ref(channel: &ChannelRef) -> Value {
    json!({ "$ref": format!("#/channels/{}", channel.0) })
}

fn operation(action: &str, channel: &ChannelRef, messages: &[Value]) -> Map<String, Value> {
    let mut op = Map::new();
    op.insert("action".into(), json!(action));
    op.insert("channel".into(), channel_ref(channel));
    op.insert("messages".into(), json!(messages));
    op
}

/// The doc comment: first paragraph as the summary, the rest as the description.
fn document(op: &mut Map<String, Value>, doc: Option<&str>) {
    let Some(doc) = doc.map(str::trim).filter(|d| !d.is_empty()) else {
        return;
    };
    let (summary, rest) = match doc.split_once("\n\n") {
        Some((summary, rest)) => (summary, Some(rest.trim())),
        None => (doc, None),
    };
    op.insert(
        "summary".into(),
        json!(summary.split_whitespace().collect::<Vec<_>>().join(" ")),
    );
    if let Some(rest) = rest.filter(|r| !r.is_empty()) {
        op.insert("description".into(), json!(rest));
    }
}

fn server_object(server: &ServerInfo) -> Value {
    let mut s = Map::new();
    s.insert("host".into(), json!(server.host));
    s.insert("protocol".into(), json!(server.protocol));
    if let Some(v) = &server.protocol_version {
        s.insert("protocolVersion".into(), json!(v));
    }
    if let Some(p) = &server.pathname {
        let path = if p.starts_with('/') {
            p.clone()
        } else {
            format!("/{p}")
        };
        s.insert("pathname".into(), json!(path));
    }
    if let Some(d) = &server.description {
        s.insert("description".into(), json!(d));
    }
    Value::Object(s)
}

fn message_object(id: &str, rust_type: &str, shape: Option<&Shape>) -> Value {
    let (content_type, payload) = match shape {
        Some(Shape {
            schema: Some(schema),
            content_type,
            ..
        }) => (*content_type, schema.clone()),
        Some(Shape { content_type, .. }) => (
            *content_type,
            json!({
                "description": format!(
                    "No schema: the Rust type `{rust_type}` does not implement `schemars::JsonSchema`. Derive it (with brook's `asyncapi` feature) to show its fields here."
                )
            }),
        ),
        None => (
            crate::codec::OCTET_STREAM,
            json!({ "description": "Not decoded: the handler reads the raw message." }),
        ),
    };
    json!({
        "name": id,
        "title": short_name(rust_type),
        "contentType": content_type,
        "payload": payload,
        "headers": { "$ref": format!("#/components/schemas/{HEADERS}") },
        "correlationId": { "$ref": "#/components/correlationIds/CorrelationId" },
        "x-brook-rust-type": rust_type,
    })
}

fn headers_schema() -> Value {
    json!({
        "type": "object",
        "description": "Headers brook reads and writes (as each broker carries them: AMQP properties, Kafka and NATS headers, MQTT 5 properties, Redis envelope fields).",
        "properties": {
            CORRELATION_ID: {
                "type": "string",
                "description": "Ties a request to its reply and a message to the outputs its handler publishes; given a new one when a publish has none."
            },
            REPLY_TO: {
                "type": "string",
                "description": "Where the handler's result is sent as the reply (request/reply)."
            },
            crate::headers::CONTENT_TYPE: {
                "type": "string",
                "description": "How the body is encoded: application/json, text/plain, or none for raw bytes."
            }
        }
    })
}

fn channel_bindings(sub: &Subscription, address: &str, vhost: Option<&str>) -> Option<Value> {
    match sub.options() {
        Options::Kafka(_) => Some(json!({
            "kafka": { "topic": address, "bindingVersion": "0.5.0" }
        })),
        Options::Rabbit(o) => Some(json!({
            "amqp": {
                "is": "queue",
                "queue": {
                    "name": o.queue,
                    "durable": o.durable,
                    "exclusive": false,
                    "autoDelete": o.auto_delete,
                    "vhost": vhost.unwrap_or("/"),
                },
                "bindingVersion": "0.3.0",
            }
        })),
        _ => None,
    }
}

fn operation_bindings(sub: &Subscription) -> Option<Value> {
    match sub.options() {
        Options::Kafka(o) => o.group_id.as_ref().map(|group| {
            json!({ "kafka": {
                "groupId": { "type": "string", "enum": [group] },
                "bindingVersion": "0.5.0",
            }})
        }),
        Options::Rabbit(_) => Some(json!({ "amqp": {
            "ack": sub.policy() != AckPolicy::AckFirst,
            "bindingVersion": "0.3.0",
        }})),
        Options::Nats(o) => o
            .queue_group
            .as_ref()
            .map(|group| json!({ "nats": { "queue": group, "bindingVersion": "0.1.0" } })),
        Options::Mqtt(o) => Some(json!({ "mqtt": { "qos": o.qos, "bindingVersion": "0.2.0" } })),
        _ => None,
    }
}

/// brook's own facts about a subscriber, as `x-brook-*` extension fields.
fn extensions(op: &mut Map<String, Value>, sub: &Subscription) {
    op.insert("x-brook-ack-policy".into(), json!(sub.policy().to_string()));
    op.insert("x-brook-source".into(), json!(source_name(sub.source())));
    if let Some(max) = sub.max_deliveries() {
        op.insert("x-brook-max-deliveries".into(), json!(max));
    }
    op.insert("x-brook-concurrency".into(), json!(sub.concurrency()));
    let on_decode_error = match sub.on_decode_error() {
        Settlement::Nack { .. } => "Nack",
        Settlement::Reject => "Reject",
        Settlement::Ack => "Ack",
    };
    op.insert("x-brook-on-decode-error".into(), json!(on_decode_error));
    match sub.options() {
        Options::Rabbit(o) => {
            if let Some(exchange) = &o.exchange {
                op.insert(
                    "x-brook-exchange".into(),
                    json!({
                        "name": exchange,
                        "type": exchange_type(o.exchange_type),
                        "routingKey": o.routing_key,
                    }),
                );
            }
            if let Some(dlx) = &o.dead_letter_exchange {
                op.insert("x-brook-dead-letter-exchange".into(), json!(dlx));
            }
            if let Some(t) = o.queue_type {
                op.insert("x-brook-queue-type".into(), json!(t.name()));
            }
        }
        Options::Nats(o) => {
            if let Some(js) = &o.jetstream {
                op.insert(
                    "x-brook-jetstream".into(),
                    json!({ "stream": js.stream, "durable": js.durable }),
                );
            }
        }
        Options::Redis(o) => {
            let redis = match &o.source {
                RedisSource::Channel(_) => json!({ "kind": "channel" }),
                RedisSource::List(_) => json!({ "kind": "list" }),
                RedisSource::Stream(s) => json!({
                    "kind": "stream",
                    "group": s.group,
                    "consumer": s.consumer,
                    "deadLetterStream": s.dead_letter_stream,
                }),
            };
            op.insert("x-brook-redis".into(), redis);
        }
        Options::Kafka(o) => {
            op.insert(
                "x-brook-auto-offset-reset".into(),
                json!(o.auto_offset_reset.name()),
            );
        }
        Options::Mqtt(o) => {
            if let Some(dlt) = &o.dead_letter_topic {
                op.insert("x-brook-dead-letter-topic".into(), json!(dlt));
            }
        }
        _ => {}
    }
}

fn exchange_type(t: ExchangeType) -> &'static str {
    match t {
        ExchangeType::Direct => "direct",
        ExchangeType::Fanout => "fanout",
        ExchangeType::Topic => "topic",
        ExchangeType::Headers => "headers",
    }
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::MemoryTopic => "memory topic",
        Source::KafkaTopic { .. } => "Kafka topic",
        Source::RabbitQueue { quorum: true } => "RabbitMQ quorum queue",
        Source::RabbitQueue { .. } => "RabbitMQ queue",
        Source::NatsCore => "NATS core subject",
        Source::JetStream => "JetStream consumer",
        Source::RedisChannel => "Redis pub/sub channel",
        Source::RedisList => "Redis list",
        Source::RedisStream { .. } => "Redis stream",
        Source::MqttTopic { .. } => "MQTT topic",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_component_keys() {
        assert_eq!(short_name("app::orders::Order"), "Order");
        assert_eq!(short_name("app::Page<app::orders::Order>"), "Page_Order");
        assert_eq!(short_name("alloc::string::String"), "String");
        assert_eq!(ident("orders.*.eu"), "orders___eu");
    }

    #[test]
    fn ids_are_unique() {
        let mut taken = BTreeMap::new();
        taken.insert("bill".to_owned(), Value::Null);
        taken.insert("bill_2".to_owned(), Value::Null);
        assert_eq!(unique("bill", &taken), "bill_3");
        assert_eq!(unique("ship", &taken), "ship");
    }
}
