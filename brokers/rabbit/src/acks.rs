//! The settlement pipeline of one consumer channel: settlements become as few AMQP frames as
//! the protocol allows, sent without holding up the next message.
//!
//! `basic.ack` with `multiple = true` acknowledges every unacknowledged delivery of the channel
//! up to and including its tag. A channel's delivery tags are 1, 2, 3, ... in delivery order
//! (brook consumes on a channel of its own), so the pipeline keeps one slot per tag from the
//! lowest one not yet settled on the wire, and when a run of settled deliveries starts there,
//! one multiple ack covers all the acks of that run. Everything else goes out as a frame of
//! its own: nacks and rejects (sent before the multiple ack, which must not cover them), and
//! acks of deliveries settled out of order while an earlier one is still being handled (held
//! back, they would keep prefetch credit and could stall the channel).
//!
//! A delivery dropped without a settlement (`Manual` left it unsettled, the graceful timeout
//! cut its handler off, or it was still prefetched at shutdown) must stay unacknowledged until
//! the channel closes, when RabbitMQ requeues it; a multiple ack would cover it. From then on
//! the channel's acks go out one per delivery.
//!
//! Who sends: the engine's settlements ([`Settler::settle_later`](brook_runtime::Settler))
//! queue and wake the pipeline's task, which flushes what accumulated as soon as it runs (a
//! lone message is acknowledged at once; under load, the settlements made while one flush is
//! on its way go out together in the next). A handler's own `msg.ack().await` queues the same
//! way and then flushes itself, so it returns once its frame was written: AMQP has no
//! confirmation of an ack, so "written to the connection" is all "the broker has it" can mean.
//! Flushes take turns (one lock), so the frames of two flushes never overtake each other. The
//! consumer's close flushes before it cancels, so a graceful stop loses no settlement.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use brook_runtime::{BrokerError, BrokerKind, Settlement};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::Channel;
use tokio::sync::Notify;

const KIND: BrokerKind = BrokerKind::Rabbit;

/// The most slots a channel's pipeline keeps: far more deliveries than any prefetch lets out.
const MAX_SPAN: usize = 1 << 17;

/// The settlement pipeline of one channel (see the module docs).
pub(crate) struct Acks {
    channel: Channel,
    queue: Arc<str>,
    state: Mutex<State>,
    /// Flushes take turns: the frames of one are all written before the next one plans.
    sending: tokio::sync::Mutex<()>,
    /// Wakes the pipeline's task. Its own `Arc`, so the task can wait without keeping the
    /// pipeline alive: `Drop` wakes it to end.
    wake: Arc<Notify>,
}

struct State {
    /// Settlements handed over and not planned into frames yet, in the order they came.
    queued: Vec<(u64, Settlement)>,
    /// The tag of `slots[0]`: every delivery below it is settled on the wire.
    base: u64,
    /// One per tag from `base` up to the highest one settled so far.
    slots: VecDeque<Slot>,
    /// A delivery was dropped unsettled: no multiple acks on this channel any more.
    one_by_one: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Delivered, not settled (or not known to the pipeline yet).
    Open,
    /// Acknowledged, not sent: the next multiple ack covers it.
    Ack,
    /// Its frame is sent (or planned ahead of the multiple ack that passes it).
    Sent,
}

/// One frame to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    Ack { tag: u64, multiple: bool },
    Nack { tag: u64 },
    Reject { tag: u64 },
}

impl State {
    fn new() -> State {
        State {
            queued: Vec::new(),
            base: 1,
            slots: VecDeque::new(),
            one_by_one: false,
        }
    }

    /// Turns what is queued into frames, in the order they must be written: every frame of a
    /// single delivery, then the multiple ack (which must not cover a nacked or rejected one,
    /// nor be overtaken by one).
    fn plan(&mut self) -> (Vec<Frame>, Option<Frame>) {
        let mut singles = Vec::new();
        for (tag, settlement) in std::mem::take(&mut self.queued) {
            let single = match settlement {
                Settlement::Ack => Frame::Ack {
                    tag,
                    multiple: false,
                },
                Settlement::Nack { .. } => Frame::Nack { tag },
                Settlement::Reject => Frame::Reject { tag },
            };
            // A tag below the base, or implausibly far above it (the prefetch is a u16, so
            // a channel never has more deliveries out), goes out on its own: a slot list is
            // never grown on a bad tag.
            let Some(index) = tag
                .checked_sub(self.base)
                .and_then(|i| usize::try_from(i).ok())
                .filter(|i| !self.one_by_one && *i <= MAX_SPAN)
            else {
                singles.push(single);
                continue;
            };
            if self.slots.len() <= index {
                self.slots.resize(index + 1, Slot::Open);
            }
            self.slots[index] = if settlement == Settlement::Ack {
                Slot::Ack
            } else {
                singles.push(single);
                Slot::Sent
            };
        }
        let settled = match self.one_by_one {
            true => 0,
            false => self.slots.iter().take_while(|s| **s != Slot::Open).count(),
        };
        // Acks after the first open slot cannot be covered yet: each goes out on its own.
        for (offset, slot) in self.slots.iter_mut().enumerate().skip(settled) {
            if *slot == Slot::Ack {
                *slot = Slot::Sent;
                singles.push(Frame::Ack {
                    tag: self.base + offset as u64,
                    multiple: false,
                });
            }
        }
        let multiple = self
            .slots
            .iter()
            .take(settled)
            .rposition(|s| *s == Slot::Ack)
            .map(|last| Frame::Ack {
                tag: self.base + last as u64,
                multiple: true,
            });
        self.slots.drain(..settled);
        self.base += settled as u64;
        (singles, multiple)
    }

    /// The delivery `tag` will never be settled here (see the module docs). No ack waits for
    /// a multiple ack after a plan, so nothing queued changes.
    fn abandon(&mut self, tag: u64) {
        self.one_by_one = true;
        self.slots.clear();
        tracing::trace!(
            tag,
            "delivery dropped unsettled: acks go out one by one from now on"
        );
    }
}

impl Acks {
    /// The pipeline of `channel`, with its task.
    pub(crate) fn start(channel: Channel, queue: Arc<str>) -> Arc<Acks> {
        let wake = Arc::new(Notify::new());
        let acks = Arc::new(Acks {
            channel,
            queue,
            state: Mutex::new(State::new()),
            sending: tokio::sync::Mutex::new(()),
            wake: wake.clone(),
        });
        tokio::spawn(run(Arc::downgrade(&acks), wake));
        acks
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent between statements; a panic elsewhere does not break it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `settlement` of `tag` for the pipeline's task.
    pub(crate) fn queue(&self, tag: u64, settlement: Settlement) {
        self.state().queued.push((tag, settlement));
        self.wake.notify_one();
    }

    /// Queues `settlement` of `tag` and flushes: returns once its frame is written.
    pub(crate) async fn settle_now(
        &self,
        tag: u64,
        settlement: Settlement,
    ) -> Result<(), BrokerError> {
        self.state().queued.push((tag, settlement));
        self.flush().await
    }

    /// The delivery `tag` is dropped without a settlement.
    pub(crate) fn abandon(&self, tag: u64) {
        self.state().abandon(tag);
    }

    /// Sends what is queued. An error says which frame failed; the deliveries it settles stay
    /// unacknowledged, and RabbitMQ requeues them when the channel closes.
    pub(crate) async fn flush(&self) -> Result<(), BrokerError> {
        let _turn = self.sending.lock().await;
        let (singles, multiple) = self.state().plan();
        // Single frames are independent of each other; the multiple ack goes after them all.
        let sent = futures_util::future::join_all(singles.into_iter().map(|f| self.send(f))).await;
        let mut result = sent.into_iter().find(Result::is_err).unwrap_or(Ok(()));
        if let Some(frame) = multiple {
            let done = self.send(frame).await;
            if result.is_ok() {
                result = done;
            }
        }
        result
    }

    async fn send(&self, frame: Frame) -> Result<(), BrokerError> {
        let (operation, sent) = match frame {
            Frame::Ack { tag, multiple } => (
                "basic.ack",
                self.channel
                    .basic_ack(tag, BasicAckOptions { multiple })
                    .await,
            ),
            Frame::Nack { tag } => {
                let options = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                ("basic.nack", self.channel.basic_nack(tag, options).await)
            }
            Frame::Reject { tag } => {
                let options = BasicRejectOptions { requeue: false };
                (
                    "basic.reject",
                    self.channel.basic_reject(tag, options).await,
                )
            }
        };
        sent.map_err(|e| match self.channel.status().connected() {
            true => BrokerError::operation(KIND, operation, e),
            false => BrokerError::operation(KIND, operation, ChannelGone),
        })
    }
}

/// Why a settlement did not reach RabbitMQ.
#[derive(Debug, thiserror::Error)]
#[error("the channel of this delivery is closed (connection lost?); RabbitMQ requeues the message itself")]
struct ChannelGone;

impl Drop for Acks {
    fn drop(&mut self) {
        // Ends the task (it finds the pipeline gone).
        self.wake.notify_one();
    }
}

/// The pipeline's task: flushes whenever woken, until the pipeline is gone.
async fn run(acks: Weak<Acks>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(acks) = acks.upgrade() else {
            return;
        };
        if let Err(error) = acks.flush().await {
            tracing::error!(
                queue = &*acks.queue,
                %error,
                "could not settle deliveries on RabbitMQ; they stay unacknowledged and RabbitMQ requeues them when the channel closes"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(state: &mut State, queued: &[(u64, Settlement)]) -> (Vec<Frame>, Option<Frame>) {
        state.queued.extend_from_slice(queued);
        state.plan()
    }

    const fn ack(tag: u64, multiple: bool) -> Frame {
        Frame::Ack { tag, multiple }
    }

    #[test]
    fn a_run_of_acks_from_the_lowest_open_tag_is_one_multiple_ack() {
        let mut s = State::new();
        let acks: Vec<_> = (1..=5).map(|t| (t, Settlement::Ack)).collect();
        assert_eq!(plan(&mut s, &acks), (vec![], Some(ack(5, true))));
        assert_eq!(s.base, 6);
        assert!(s.slots.is_empty());
        assert_eq!(
            plan(&mut s, &[(6, Settlement::Ack)]),
            (vec![], Some(ack(6, true)))
        );
    }

    #[test]
    fn acks_behind_an_open_delivery_go_out_one_by_one_and_are_passed_later() {
        let mut s = State::new();
        // 1 is still being handled.
        assert_eq!(
            plan(&mut s, &[(2, Settlement::Ack), (3, Settlement::Ack)]),
            (vec![ack(2, false), ack(3, false)], None)
        );
        // 1 done: the multiple ack of 1 alone (2 and 3 were sent), 4 covered with it.
        assert_eq!(
            plan(&mut s, &[(1, Settlement::Ack), (4, Settlement::Ack)]),
            (vec![], Some(ack(4, true)))
        );
        assert_eq!(s.base, 5);
    }

    #[test]
    fn nacks_and_rejects_are_single_frames_before_the_multiple_ack() {
        let mut s = State::new();
        let queued = [
            (1, Settlement::Ack),
            (2, Settlement::NACK),
            (3, Settlement::Reject),
            (4, Settlement::Ack),
        ];
        assert_eq!(
            plan(&mut s, &queued),
            (
                vec![Frame::Nack { tag: 2 }, Frame::Reject { tag: 3 }],
                Some(ack(4, true))
            )
        );
        // A trailing nack moves the base past it without an ack.
        assert_eq!(
            plan(&mut s, &[(5, Settlement::NACK)]),
            (vec![Frame::Nack { tag: 5 }], None)
        );
        assert_eq!(s.base, 6);
    }

    #[test]
    fn a_tag_out_of_range_is_a_single_frame_and_grows_nothing() {
        let mut s = State::new();
        let far = 1 + MAX_SPAN as u64 + 1;
        assert_eq!(
            plan(&mut s, &[(far, Settlement::Ack)]),
            (vec![ack(far, false)], None)
        );
        assert!(s.slots.is_empty());
    }

    #[test]
    fn after_a_delivery_is_abandoned_no_ack_covers_it() {
        let mut s = State::new();
        assert_eq!(
            plan(&mut s, &[(2, Settlement::Ack)]),
            (vec![ack(2, false)], None)
        );
        s.queued.push((3, Settlement::Ack));
        // 1 is dropped unsettled: it must stay unacknowledged.
        s.abandon(1);
        assert_eq!(
            plan(&mut s, &[(4, Settlement::Ack)]),
            (vec![ack(3, false), ack(4, false)], None)
        );
    }
}
