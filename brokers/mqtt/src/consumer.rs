//! Consumers, settlers and the MQTT-specific message type.
//!
//! A settler only maps a settlement onto the connection's ordered ack queue: `Ack` and `Reject`
//! (MQTT has no reject) release a PUBACK/PUBREC in arrival order, `Nack` withholds it and asks
//! the connection to resume its session so the broker redelivers. QoS 0 has nothing to settle.

use std::any::Any;
use std::sync::Arc;

use brook_runtime::{
    BrokerError, BrokerKind, BrokerMessage, Consumer, Message, MessageId, SettleFuture, Settlement,
    Settler,
};
use rumqttc::QoS;
use tokio::sync::mpsc;

use crate::acks::{Settled, Ticket};
use crate::connection::{Delivery, Shared};

/// The MQTT side of a delivery, as a handler argument: `msg: &MqttMessage`.
///
/// ```
/// use brook_mqtt::MqttMessage;
/// fn describe(m: &MqttMessage) -> String {
///     format!("{} qos={} retain={} dup={}", m.topic(), m.qos(), m.retain(), m.dup())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct MqttMessage {
    topic: Arc<str>,
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: u16,
}

impl MqttMessage {
    /// The topic the message was published to (not the subscription's filter).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The QoS it was delivered with (the lower of the publisher's and the subscription's).
    pub fn qos(&self) -> u8 {
        self.qos
    }

    /// Whether it is a retained message, sent because the subscription was just made.
    pub fn retain(&self) -> bool {
        self.retain
    }

    /// The DUP flag: the broker says it may have sent this message before (a redelivery after
    /// a session resumed). MQTT has no delivery counter; this is all it tells.
    pub fn dup(&self) -> bool {
        self.dup
    }

    /// The packet identifier (0 for QoS 0). Only unique among unacknowledged messages of one
    /// connection.
    pub fn packet_id(&self) -> u16 {
        self.packet_id
    }
}

impl BrokerMessage for MqttMessage {
    type Kind = brook_runtime::kind::Mqtt;
}

/// Reads one subscription's messages from the shared connection.
pub struct MqttConsumer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) route: u64,
    pub(crate) rx: mpsc::UnboundedReceiver<Delivery>,
}

impl MqttConsumer {
    fn message(&self, delivery: Delivery) -> Message {
        let p = delivery.publish;
        let topic: Arc<str> = p.topic.into();
        let headers = p.headers;
        let raw = MqttMessage {
            topic: topic.clone(),
            qos: p.qos as u8,
            retain: p.retain,
            dup: p.dup,
            packet_id: p.pkid,
        };
        let id = match p.qos {
            QoS::AtMostOnce => MessageId::None,
            _ => MessageId::Number(u64::from(p.pkid)),
        };
        let settler = MqttSettler {
            shared: self.shared.clone(),
            ticket: delivery.ticket,
            raw,
        };
        let msg = Message::new(BrokerKind::Mqtt, topic, p.payload, settler).with_id(id);
        if headers.is_empty() {
            msg
        } else {
            msg.with_headers(headers)
        }
    }
}

impl Consumer for MqttConsumer {
    async fn next(&mut self) -> Option<Result<Message, BrokerError>> {
        loop {
            let delivery = self.rx.recv().await?;
            if let Some(ticket) = delivery.ticket {
                if self.shared.redelivered_later(ticket) {
                    // Received on a connection that is gone, and the resumed session sends it
                    // again. (On a clean session it is handed out: nothing would resend it.)
                    continue;
                }
            }
            return Some(Ok(self.message(delivery)));
        }
    }

    async fn close(self) -> Result<(), BrokerError> {
        // Dropping does the work (also for a consumer dropped without `close`).
        drop(self);
        Ok(())
    }
}

impl Drop for MqttConsumer {
    fn drop(&mut self) {
        self.shared.remove_route(self.route);
        // Messages received but never handed out stay unacknowledged (the broker redelivers
        // them when the session resumes). Abandon them, so they neither look pending forever
        // nor hold back the acks of other consumers on this connection still finishing.
        self.rx.close();
        while let Ok(delivery) = self.rx.try_recv() {
            if let Some(ticket) = delivery.ticket {
                self.shared.abandon(ticket);
            }
        }
    }
}

/// Settles one delivery on its connection.
struct MqttSettler {
    shared: Arc<Shared>,
    ticket: Option<Ticket>,
    raw: MqttMessage,
}

impl Settler for MqttSettler {
    fn settle(&self, settlement: Settlement) -> SettleFuture<'_> {
        let Some(ticket) = self.ticket else {
            return SettleFuture::ready(Ok(())); // QoS 0: nothing to acknowledge
        };
        let ack = !matches!(settlement, Settlement::Nack { .. });
        let result = match self.shared.settle(ticket, ack) {
            // A nack of a message whose connection is gone: it comes back anyway.
            Settled::Stale if !ack => Ok(()),
            // Its clean session is gone: there is nothing left to acknowledge, and nothing
            // will send it again.
            Settled::Stale if self.shared.config.clean_session => Ok(()),
            Settled::Stale => Err(BrokerError::operation(
                BrokerKind::Mqtt,
                "PUBACK",
                "the connection this message arrived on was lost; the broker redelivers it on the resumed session",
            )),
            Settled::Released | Settled::Held | Settled::Withheld => Ok(()),
        };
        SettleFuture::ready(result)
    }

    fn raw(&self) -> Option<&(dyn Any + Send + Sync)> {
        Some(&self.raw)
    }
}
