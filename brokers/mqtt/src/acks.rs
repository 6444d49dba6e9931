//! Acknowledgements in the order MQTT requires.
//!
//! MQTT 3.1.1 (4.6) and 5 (4.6) require a client to send PUBACK (QoS 1) and PUBREC (QoS 2) in
//! the order the PUBLISH packets arrived. brook settles messages whenever their handlers finish
//! (several at once with `concurrency > 1`, or out of order under `Manual`), so acks are held
//! here and released strictly in arrival order: an ack whose predecessors are not acked yet
//! waits for them.
//!
//! A message that is *withheld* (nacked, or never settled) blocks every later ack of the same
//! connection, because sending them would acknowledge out of order. That is harmless: a nack
//! makes the connection resume its session (see `connection`), the broker then redelivers every
//! message that was not acknowledged, and the queue starts over for the new connection
//! (a new *generation*). Settlements that belong to an older generation send nothing: the
//! broker redelivers those messages anyway (at-least-once). (Acks released *before* the
//! connection dropped but not yet written are kept by rumqttc and sent after a session
//! resumes, where their packet ids still name the same unacknowledged messages; after a new
//! session rumqttc discards them.)
//!
//! A message nobody will handle on this connection (no subscriber claims it, or its consumer
//! closed before handing it out) is *abandoned*: never acked, but skipped, so it does not hold
//! back later acks. The acks that go out are still in arrival order.

use std::collections::VecDeque;

use rumqttc::QoS;

/// What to send for one message: PUBACK (QoS 1) or PUBREC (QoS 2) with this packet id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AckTarget {
    pub pkid: u16,
    pub qos: QoS,
}

/// Identifies one delivery in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub generation: u64,
    pub seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Pending,
    Ready,
    Withheld,
    /// Given up without an ack and without blocking later acks: a message nobody will ever
    /// handle on this connection (no subscriber for it, or its consumer closed before handing
    /// it out). The broker redelivers it when the session resumes.
    Abandoned,
}

/// What a settlement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The connection it arrived on is gone; nothing was sent (the broker redelivers it).
    Stale,
    /// Its ack was released (with every ready ack before it).
    Released,
    /// Its ack waits for an earlier message to be acked.
    Held,
    /// Withheld: never acked on this connection.
    Withheld,
}

/// The acks of one connection, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct AckQueue {
    generation: u64,
    front: u64,
    entries: VecDeque<(AckTarget, Slot)>,
}

impl AckQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current connection's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Messages received and not acked yet.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Records a QoS 1/2 arrival.
    pub fn arrive(&mut self, target: AckTarget) -> Ticket {
        let seq = self.front + self.entries.len() as u64;
        self.entries.push_back((target, Slot::Pending));
        Ticket {
            generation: self.generation,
            seq,
        }
    }

    /// Settles `ticket`: `ack` releases it in order (calling `send` for each ack that may go
    /// out now, oldest first), otherwise it is withheld.
    pub fn settle(
        &mut self,
        ticket: Ticket,
        ack: bool,
        mut send: impl FnMut(AckTarget),
    ) -> Settled {
        if ticket.generation != self.generation || ticket.seq < self.front {
            return Settled::Stale;
        }
        let Some(entry) = self.entries.get_mut((ticket.seq - self.front) as usize) else {
            return Settled::Stale;
        };
        if entry.1 != Slot::Pending {
            // Settled already (the Message enforces settle-once; this is a safety net).
            return Settled::Stale;
        }
        if !ack {
            entry.1 = Slot::Withheld;
            return Settled::Withheld;
        }
        entry.1 = Slot::Ready;
        self.release(&mut send);
        if ticket.seq < self.front {
            Settled::Released
        } else {
            Settled::Held
        }
    }

    /// Gives `ticket` up: never acked on this connection, and (unlike a withheld message) not
    /// blocking the acks of later messages. Sending the later acks keeps the PUBACKs that do go
    /// out in arrival order, which is all MQTT asks; the abandoned message is not acked, so the
    /// broker still owns it. Returns whether the ticket was pending here.
    pub fn abandon(&mut self, ticket: Ticket, mut send: impl FnMut(AckTarget)) -> bool {
        if ticket.generation != self.generation || ticket.seq < self.front {
            return false;
        }
        match self.entries.get_mut((ticket.seq - self.front) as usize) {
            Some(entry) if entry.1 == Slot::Pending => entry.1 = Slot::Abandoned,
            _ => return false,
        }
        self.release(&mut send);
        true
    }

    /// Sends every ready ack at the front of the line, skipping abandoned messages.
    fn release(&mut self, send: &mut impl FnMut(AckTarget)) {
        while let Some((target, slot)) = self.entries.front().copied() {
            match slot {
                Slot::Ready => send(target),
                Slot::Abandoned => {}
                Slot::Pending | Slot::Withheld => break,
            }
            self.entries.pop_front();
            self.front += 1;
        }
    }

    /// Whether a withheld message blocks the queue.
    #[cfg(test)]
    pub fn has_withheld(&self) -> bool {
        self.entries.iter().any(|(_, s)| *s == Slot::Withheld)
    }

    /// A new connection: everything not acked is the broker's to redeliver. Returns the new
    /// generation.
    pub fn reset(&mut self) -> u64 {
        self.generation += 1;
        self.front = 0;
        self.entries.clear();
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pkid: u16) -> AckTarget {
        AckTarget {
            pkid,
            qos: QoS::AtLeastOnce,
        }
    }

    fn settle(q: &mut AckQueue, ticket: Ticket, ack: bool) -> (Settled, Vec<u16>) {
        let mut sent = Vec::new();
        let r = q.settle(ticket, ack, |a| sent.push(a.pkid));
        (r, sent)
    }

    #[test]
    fn acks_go_out_in_arrival_order() {
        let mut q = AckQueue::new();
        let [a, b, c] = [1, 2, 3].map(|p| q.arrive(t(p)));
        assert_eq!(settle(&mut q, c, true), (Settled::Held, vec![]));
        assert_eq!(settle(&mut q, b, true), (Settled::Held, vec![]));
        assert_eq!(settle(&mut q, a, true), (Settled::Released, vec![1, 2, 3]));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_withheld_message_blocks_later_acks_until_reset() {
        let mut q = AckQueue::new();
        let [a, b, c] = [1, 2, 3].map(|p| q.arrive(t(p)));
        assert_eq!(settle(&mut q, a, true), (Settled::Released, vec![1]));
        assert_eq!(settle(&mut q, b, false), (Settled::Withheld, vec![]));
        assert!(q.has_withheld());
        assert_eq!(settle(&mut q, c, true), (Settled::Held, vec![]));
        q.reset();
        assert_eq!(q.len(), 0);
        // Late settlements of the old connection send nothing.
        assert_eq!(settle(&mut q, c, true), (Settled::Stale, vec![]));
        let d = q.arrive(t(2));
        assert_eq!(settle(&mut q, d, true), (Settled::Released, vec![2]));
    }

    #[test]
    fn an_abandoned_message_lets_later_acks_out_without_its_own() {
        let mut q = AckQueue::new();
        let [a, b, c] = [1, 2, 3].map(|p| q.arrive(t(p)));
        assert_eq!(settle(&mut q, b, true), (Settled::Held, vec![]));
        let mut sent = Vec::new();
        assert!(q.abandon(a, |x| sent.push(x.pkid)));
        assert_eq!(sent, vec![2], "b's ack goes out, a's never does");
        // Abandoned: a late settlement sends nothing, abandoning twice is a no-op.
        assert_eq!(settle(&mut q, a, true), (Settled::Stale, vec![]));
        assert!(!q.abandon(a, |_| panic!("nothing to send")));
        assert_eq!(settle(&mut q, c, true), (Settled::Released, vec![3]));
        // An abandoned message in the middle is skipped when the line reaches it.
        let [d, e, f] = [4, 5, 6].map(|p| q.arrive(t(p)));
        assert!(q.abandon(e, |_| panic!("d is still pending")));
        assert_eq!(settle(&mut q, f, true), (Settled::Held, vec![]));
        assert_eq!(settle(&mut q, d, true), (Settled::Released, vec![4, 6]));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn settling_twice_is_a_no_op() {
        let mut q = AckQueue::new();
        let a = q.arrive(t(7));
        let b = q.arrive(t(8));
        assert_eq!(settle(&mut q, b, true), (Settled::Held, vec![]));
        assert_eq!(settle(&mut q, b, true), (Settled::Stale, vec![]));
        assert_eq!(settle(&mut q, a, true), (Settled::Released, vec![7, 8]));
        assert_eq!(settle(&mut q, a, true), (Settled::Stale, vec![]));
    }
}
