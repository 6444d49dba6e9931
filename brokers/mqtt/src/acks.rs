//! Acknowledgements in the order MQTT requires, except for messages being redelivered.
//!
//! MQTT 3.1.1 (4.6.0-2, 4.6.0-3) and 5 (4.6.0-2, 4.6.0-3) require a client to send PUBACK
//! (QoS 1) and PUBREC (QoS 2) in the order the PUBLISH packets arrived. brook settles messages
//! whenever their handlers finish (several at once with `concurrency > 1`, or out of order under
//! `Manual`), so acks are held here and released in arrival order: an ack whose predecessors are
//! not acked yet waits for them.
//!
//! One exception: a nacked message is redelivered to its handler by brook itself, without the
//! broker (see `consumer`), and may keep failing for a long time. If it held back every later
//! ack meanwhile, the broker would stop sending once its window of unacknowledged messages is
//! full (Mosquitto: 20), and every other subscriber of the connection would stall behind one
//! poison message. So a message being *retried* no longer holds later acks back: they go out
//! (in arrival order among themselves), and its own ack goes out when it is finally settled,
//! after them. That is the one place brook sends an ack out of order. Mosquitto looks a PUBACK
//! up by packet id in the client's in-flight list (`db__message_delete_outgoing`), so it accepts
//! it (pinned by the `poison` tests on the wire).
//!
//! A message nobody will handle on this connection (no subscriber claims it, or its consumer
//! closed before handing it out) is *abandoned*: never acked, but skipped, so it does not hold
//! back later acks. The broker resends it when the session resumes.
//!
//! Each connection is a *generation*; a reconnect starts a new, empty queue. Settlements that
//! belong to an older generation send nothing: the packet ids of a connection that is gone are
//! only meaningful again if the broker resumed the session, and then it resends those messages
//! itself (see `connection`).
//!
//! Released acks are written in batches (see [`Outbox`]): rumqttc writes every request it
//! takes from its queue with a flush of its own, one system call per PUBACK, which on loopback
//! costs more than everything else brook does per message.

use std::collections::{HashMap, VecDeque};

use rumqttc::QoS;

/// What to send for one message: PUBACK (QoS 1) or PUBREC (QoS 2) with this packet id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AckTarget {
    pub pkid: u16,
    pub qos: QoS,
}

/// Identifies one delivery: the connection it arrived on (`generation`), its place in that
/// connection's ack line (`seq`), and the broker session it belongs to (`session`; see
/// `connection::Fate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub generation: u64,
    pub seq: u64,
    pub session: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Pending,
    Ready,
    /// Nacked: brook redelivers it locally. It does not block later acks once it reaches the
    /// front of the line; it then waits in [`AckQueue::retrying`] for its final settlement.
    Retrying,
    /// Given up without an ack and without blocking later acks: a message nobody will ever
    /// handle on this connection (no subscriber for it, or its consumer closed before handing
    /// it out). The broker redelivers it when the session resumes.
    Abandoned,
}

/// What a settlement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Not a pending message of this connection (its connection is gone, it was abandoned, or
    /// it was settled already); nothing was sent.
    Stale,
    /// Its ack was released (with every ready ack before it).
    Released,
    /// Its ack waits for an earlier message to be acked.
    Held,
    /// Nacked: kept unacknowledged for a local redelivery, not blocking later acks.
    Retrying,
}

/// The acks of one connection, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct AckQueue {
    generation: u64,
    front: u64,
    entries: VecDeque<(AckTarget, Slot)>,
    /// Retried messages that left the front of the line, by `seq`: their acks go out when they
    /// are settled.
    retrying: HashMap<u64, AckTarget>,
}

impl AckQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages received and not acked (nor abandoned) yet.
    pub fn unacknowledged(&self) -> usize {
        self.entries
            .iter()
            .filter(|(_, s)| *s != Slot::Abandoned)
            .count()
            + self.retrying.len()
    }

    /// Records a QoS 1/2 arrival in broker session `session`.
    pub fn arrive(&mut self, target: AckTarget, session: u64) -> Ticket {
        let seq = self.front + self.entries.len() as u64;
        self.entries.push_back((target, Slot::Pending));
        Ticket {
            generation: self.generation,
            seq,
            session,
        }
    }

    /// Settles `ticket`: `ack` releases it (calling `send` for each ack that may go out now,
    /// oldest first), otherwise it is kept for a local redelivery without blocking later acks.
    pub fn settle(
        &mut self,
        ticket: Ticket,
        ack: bool,
        mut send: impl FnMut(AckTarget),
    ) -> Settled {
        if ticket.generation != self.generation {
            return Settled::Stale;
        }
        if ticket.seq < self.front {
            // Past the front: only a retried message can still be settled.
            if !self.retrying.contains_key(&ticket.seq) {
                return Settled::Stale;
            }
            if !ack {
                return Settled::Retrying;
            }
            if let Some(target) = self.retrying.remove(&ticket.seq) {
                send(target); // after later acks: see the module docs
            }
            return Settled::Released;
        }
        let Some(entry) = self.entries.get_mut((ticket.seq - self.front) as usize) else {
            return Settled::Stale;
        };
        if !matches!(entry.1, Slot::Pending | Slot::Retrying) {
            // Settled already (the Message enforces settle-once; this is a safety net).
            return Settled::Stale;
        }
        if !ack {
            entry.1 = Slot::Retrying;
            self.release(&mut send);
            return Settled::Retrying;
        }
        entry.1 = Slot::Ready;
        self.release(&mut send);
        if ticket.seq < self.front {
            Settled::Released
        } else {
            Settled::Held
        }
    }

    /// Gives `ticket` up: never acked on this connection, and not blocking the acks of later
    /// messages. Sending the later acks keeps the PUBACKs that do go out in arrival order; the
    /// abandoned message is not acked, so the broker still owns it. Returns whether the ticket
    /// was pending (or retrying) here.
    pub fn abandon(&mut self, ticket: Ticket, mut send: impl FnMut(AckTarget)) -> bool {
        if ticket.generation != self.generation {
            return false;
        }
        if ticket.seq < self.front {
            return self.retrying.remove(&ticket.seq).is_some();
        }
        match self.entries.get_mut((ticket.seq - self.front) as usize) {
            Some(entry) if matches!(entry.1, Slot::Pending | Slot::Retrying) => {
                entry.1 = Slot::Abandoned
            }
            _ => return false,
        }
        self.release(&mut send);
        true
    }

    /// Sends every ready ack at the front of the line, skipping abandoned messages and moving
    /// retried ones aside.
    fn release(&mut self, send: &mut impl FnMut(AckTarget)) {
        while let Some((target, slot)) = self.entries.front().copied() {
            match slot {
                Slot::Ready => send(target),
                Slot::Abandoned => {}
                Slot::Retrying => {
                    self.retrying.insert(self.front, target);
                }
                Slot::Pending => break,
            }
            self.entries.pop_front();
            self.front += 1;
        }
    }

    /// The generation of the current connection.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A new connection: nothing of the old one can be acked any more. Returns the new
    /// generation.
    pub fn reset(&mut self) -> u64 {
        self.generation += 1;
        self.front = 0;
        self.entries.clear();
        self.retrying.clear();
        self.generation
    }
}

/// Released acks on their way to the socket, so that a burst of them is written at once.
///
/// MQTT 5 connections cannot write to rumqttc's socket directly (its v5 event loop hides it);
/// there every ack goes through rumqttc's queue, and the outbox only holds those that did not
/// fit it (see [`Outbox::enqueue_waiting`]).
///
/// The connection's driver sits in rumqttc's `poll()` and only a request on rumqttc's queue
/// wakes it (cancelling `poll()` could lose a packet half-handled). So the first ack of a burst
/// goes through that queue as the *wake-up*; acks released while it is queued wait here, and
/// the driver writes them all with one flush once rumqttc reports the wake-up ack written.
/// Until then nothing is taken from here, so acks leave in the order they were released.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Whether the driver writes waiting acks itself (MQTT 3.1.1), rather than moving them
    /// onto rumqttc's queue.
    direct: bool,
    waiting: VecDeque<AckTarget>,
    /// The ack sent through rumqttc's queue and not yet reported written.
    wake: Option<u16>,
    /// Acks written from here whose "sent" events rumqttc has not reported yet; they are
    /// reported, in order, before the wake-up ack queued after them.
    unreported: usize,
}

impl Outbox {
    pub fn new(direct: bool) -> Self {
        Outbox {
            direct,
            ..Outbox::default()
        }
    }

    /// Queues a released ack. `enqueue` puts it on rumqttc's request queue (returning `false`
    /// if that is full); it is only called when nothing is waiting ahead of this ack.
    pub fn push(&mut self, target: AckTarget, enqueue: impl FnOnce(AckTarget) -> bool) {
        if self.waiting.is_empty() && self.wake.is_none() && enqueue(target) {
            if self.direct {
                self.wake = Some(target.pkid);
            }
        } else {
            // A full request queue means the driver is busy and drains us after its next event.
            self.waiting.push_back(target);
        }
    }

    /// rumqttc reports a PUBACK/PUBREC written.
    pub fn sent(&mut self, pkid: u16) {
        if self.unreported > 0 {
            self.unreported -= 1;
        } else if self.wake == Some(pkid) {
            self.wake = None;
        }
    }

    /// The acks the driver may write now, in order (none while the wake-up ack is queued).
    pub fn take(&mut self) -> VecDeque<AckTarget> {
        if self.wake.is_some() || self.waiting.is_empty() {
            return VecDeque::new();
        }
        self.unreported += self.waiting.len();
        std::mem::take(&mut self.waiting)
    }

    /// Moves waiting acks onto rumqttc's queue, oldest first, while they fit (for connections
    /// that cannot write acks themselves).
    pub fn enqueue_waiting(&mut self, mut enqueue: impl FnMut(AckTarget) -> bool) {
        while let Some(target) = self.waiting.front().copied() {
            if !enqueue(target) {
                return;
            }
            self.waiting.pop_front();
        }
    }

    /// Whether every released ack has been handed to rumqttc or written.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.wake.is_none()
    }

    /// The connection is gone: its acks can never be sent.
    pub fn reset(&mut self) {
        *self = Outbox::new(self.direct);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_ack_of_a_burst_wakes_the_driver_and_the_rest_are_written_together() {
        let mut o = Outbox::new(true);
        let mut queued = Vec::new();
        for pkid in 1..=4 {
            o.push(t(pkid), |a| {
                queued.push(a.pkid);
                true
            });
        }
        assert_eq!(
            queued,
            vec![1],
            "only the first goes through rumqttc's queue"
        );
        assert!(o.take().is_empty(), "nothing overtakes the queued ack");
        o.sent(1);
        let batch: Vec<u16> = o.take().iter().map(|a| a.pkid).collect();
        assert_eq!(batch, vec![2, 3, 4]);
        // A new burst while the batch's "sent" events are still being reported.
        o.push(t(5), |a| {
            queued.push(a.pkid);
            true
        });
        o.push(t(6), |_| panic!("5 is queued ahead"));
        for pkid in [2, 3, 4] {
            o.sent(pkid);
            assert!(o.take().is_empty(), "5 is not written yet");
        }
        o.sent(5);
        assert_eq!(o.take().iter().map(|a| a.pkid).collect::<Vec<_>>(), vec![6]);
        o.sent(6);
        assert!(o.is_empty());
    }

    #[test]
    fn a_full_request_queue_leaves_the_ack_for_the_driver() {
        let mut o = Outbox::new(true);
        o.push(t(1), |_| false);
        assert!(!o.is_empty());
        o.push(t(2), |_| panic!("1 waits ahead"));
        assert_eq!(
            o.take().iter().map(|a| a.pkid).collect::<Vec<_>>(),
            vec![1, 2]
        );
        o.sent(1);
        o.sent(2);
        assert!(o.is_empty());
        o.push(t(3), |_| true);
        o.reset();
        assert!(o.is_empty());
    }

    #[test]
    fn waiting_acks_move_to_the_request_queue_in_order_as_it_frees_up() {
        let mut o = Outbox::new(false);
        o.push(t(7), |_| true);
        assert!(
            o.is_empty(),
            "queued on rumqttc's queue: nothing to wait for"
        );
        o.push(t(1), |_| false);
        o.push(t(2), |_| panic!("1 waits ahead"));
        o.push(t(3), |_| panic!("1 waits ahead"));
        let mut queued = Vec::new();
        o.enqueue_waiting(|a| {
            queued.push(a.pkid);
            queued.len() < 2 // room for one
        });
        assert_eq!(queued, vec![1, 2], "2 did not fit and stays");
        queued.clear();
        o.enqueue_waiting(|a| {
            queued.push(a.pkid);
            true
        });
        assert_eq!(queued, vec![2, 3]);
        assert!(o.is_empty());
    }

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

    fn arrive<const N: usize>(q: &mut AckQueue, pkids: [u16; N]) -> [Ticket; N] {
        pkids.map(|p| q.arrive(t(p), 0))
    }

    #[test]
    fn acks_go_out_in_arrival_order() {
        let mut q = AckQueue::new();
        let [a, b, c] = arrive(&mut q, [1, 2, 3]);
        assert_eq!(settle(&mut q, c, true), (Settled::Held, vec![]));
        assert_eq!(settle(&mut q, b, true), (Settled::Held, vec![]));
        assert_eq!(settle(&mut q, a, true), (Settled::Released, vec![1, 2, 3]));
        assert_eq!(q.unacknowledged(), 0);
    }

    #[test]
    fn a_retried_message_lets_later_acks_out_and_is_acked_after_them() {
        let mut q = AckQueue::new();
        let [a, b, c] = arrive(&mut q, [1, 2, 3]);
        assert_eq!(settle(&mut q, b, true), (Settled::Held, vec![]));
        // a is nacked (redelivered locally): b's ack is no longer held back by it.
        assert_eq!(settle(&mut q, a, false), (Settled::Retrying, vec![2]));
        assert_eq!(q.unacknowledged(), 2, "a (retrying) and c");
        // Nacked again on its redelivery: still retrying, nothing sent.
        assert_eq!(settle(&mut q, a, false), (Settled::Retrying, vec![]));
        assert_eq!(settle(&mut q, c, true), (Settled::Released, vec![3]));
        // Finally acked: out of order, after the later ones.
        assert_eq!(settle(&mut q, a, true), (Settled::Released, vec![1]));
        assert_eq!(settle(&mut q, a, true), (Settled::Stale, vec![]));
        assert_eq!(q.unacknowledged(), 0);
    }

    #[test]
    fn a_retried_message_behind_a_pending_one_is_acked_in_order_if_it_succeeds_first() {
        let mut q = AckQueue::new();
        let [a, b, c] = arrive(&mut q, [1, 2, 3]);
        assert_eq!(settle(&mut q, b, false), (Settled::Retrying, vec![]));
        assert_eq!(
            settle(&mut q, b, true),
            (Settled::Held, vec![]),
            "a is pending"
        );
        assert_eq!(settle(&mut q, a, true), (Settled::Released, vec![1, 2]));
        // A retried message abandoned (its consumer closed) is never acked.
        assert_eq!(settle(&mut q, c, false), (Settled::Retrying, vec![]));
        assert!(q.abandon(c, |_| panic!("nothing to send")));
        assert_eq!(settle(&mut q, c, true), (Settled::Stale, vec![]));
        assert_eq!(q.unacknowledged(), 0);
    }

    #[test]
    fn a_new_connection_voids_the_old_tickets() {
        let mut q = AckQueue::new();
        let [a, b, c] = arrive(&mut q, [1, 2, 3]);
        assert_eq!(settle(&mut q, a, true), (Settled::Released, vec![1]));
        assert_eq!(settle(&mut q, b, false), (Settled::Retrying, vec![]));
        q.reset();
        assert_eq!(q.unacknowledged(), 0);
        // Late settlements of the old connection send nothing.
        assert_eq!(settle(&mut q, c, true), (Settled::Stale, vec![]));
        assert_eq!(settle(&mut q, b, true), (Settled::Stale, vec![]));
        let d = q.arrive(t(2), 1);
        assert_eq!(d.session, 1);
        assert_eq!(settle(&mut q, d, true), (Settled::Released, vec![2]));
    }

    #[test]
    fn an_abandoned_message_lets_later_acks_out_without_its_own() {
        let mut q = AckQueue::new();
        let [a, b, c] = arrive(&mut q, [1, 2, 3]);
        assert_eq!(settle(&mut q, b, true), (Settled::Held, vec![]));
        let mut sent = Vec::new();
        assert!(q.abandon(a, |x| sent.push(x.pkid)));
        assert_eq!(sent, vec![2], "b's ack goes out, a's never does");
        // Abandoned: a late settlement sends nothing, abandoning twice is a no-op.
        assert_eq!(settle(&mut q, a, true), (Settled::Stale, vec![]));
        assert!(!q.abandon(a, |_| panic!("nothing to send")));
        assert_eq!(settle(&mut q, c, true), (Settled::Released, vec![3]));
        // An abandoned message in the middle is skipped when the line reaches it.
        let [d, e, f] = arrive(&mut q, [4, 5, 6]);
        assert!(q.abandon(e, |_| panic!("d is still pending")));
        assert_eq!(settle(&mut q, f, true), (Settled::Held, vec![]));
        assert_eq!(settle(&mut q, d, true), (Settled::Released, vec![4, 6]));
        assert_eq!(q.unacknowledged(), 0);
    }

    #[test]
    fn settling_twice_is_a_no_op() {
        let mut q = AckQueue::new();
        let [a, b] = arrive(&mut q, [7, 8]);
        assert_eq!(settle(&mut q, b, true), (Settled::Held, vec![]));
        assert_eq!(settle(&mut q, b, true), (Settled::Stale, vec![]));
        assert_eq!(settle(&mut q, a, true), (Settled::Released, vec![7, 8]));
        assert_eq!(settle(&mut q, a, true), (Settled::Stale, vec![]));
    }
}
