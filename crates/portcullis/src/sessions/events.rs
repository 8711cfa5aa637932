//! A session's events after the worker → gateway queue: the bounded replay buffer (hop 2) and
//! the one subscriber's bounded queue (hop 3).
//!
//! Events keep the worker's sequence numbers and are appended in that order by the session's
//! one sequencer. The buffer evicts its oldest event only once it was handed to a subscriber;
//! when it is full of events nobody has taken, or the subscriber's queue is full, the caller
//! faults the session naming the hop — nothing is dropped or coalesced. A subscriber resumes
//! after a sequence number; one the buffer no longer covers is refused, never skipped.

use bytes::Bytes;
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// One event as the gateway holds it: the worker's sequence and the JSON the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The worker's sequence number of the frame.
    pub sequence: u64,
    /// `{"sequence":N,"kind":K,"payload":P}`, serialised once.
    pub json: Bytes,
}

/// Which hop of the event path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Frames read from the worker awaiting the sequencer.
    WorkerQueue,
    /// The session's replay buffer.
    SessionBuffer,
    /// The subscriber's queue.
    SubscriberQueue,
}

impl Hop {
    /// Stable name: fault messages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkerQueue => "worker-queue",
            Self::SessionBuffer => "session-buffer",
            Self::SubscriberQueue => "subscriber-queue",
        }
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// Another subscriber is attached.
    #[error("the session already has a subscriber")]
    Conflict,
    /// Events after the point asked for have left the buffer.
    #[error("events after sequence {after} are no longer held (the buffer holds sequences after {evicted_through})")]
    Gone {
        /// What was asked for.
        after: u64,
        /// The highest sequence evicted.
        evicted_through: u64,
    },
}

/// What a new subscriber gets: the backlog (events after its point, already held) and the
/// queue the rest arrive on.
#[derive(Debug)]
pub struct Subscription {
    /// Its id, to detach exactly this subscriber.
    pub id: u64,
    /// Held events after the point asked for, in order.
    pub backlog: Vec<Event>,
    /// Events from now on; closed when the session ends (or this subscriber is detached).
    pub rx: mpsc::Receiver<Event>,
}

/// The buffer and the subscriber slot.
#[derive(Debug)]
pub struct Events {
    buffer: VecDeque<Event>,
    capacity: usize,
    /// Bytes of event JSON the buffer may hold.
    max_bytes: usize,
    bytes: usize,
    queue: usize,
    /// Highest sequence handed to a subscriber (events at or below it may be evicted).
    delivered_through: u64,
    /// Highest sequence evicted (a resume at or after it loses nothing).
    evicted_through: u64,
    /// Highest sequence appended.
    last: u64,
    subscriber: Option<(u64, mpsc::Sender<Event>)>,
    next_id: u64,
    /// No more events: the session ended.
    ended: bool,
}

impl Events {
    /// A buffer of `capacity` events and at most `max_bytes` of their JSON, subscribers with
    /// queues of `queue`.
    pub fn new(capacity: usize, max_bytes: usize, queue: usize) -> Self {
        Self {
            buffer: VecDeque::with_capacity(capacity.min(64)),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            bytes: 0,
            queue: queue.max(1),
            delivered_through: 0,
            evicted_through: 0,
            last: 0,
            subscriber: None,
            next_id: 1,
            ended: false,
        }
    }

    /// Append `e` (sequences increase: the sequencer checked) and hand it to the subscriber.
    /// `Err(hop)`: that hop is full, and the session must fault.
    pub fn push(&mut self, e: Event) -> Result<(), Hop> {
        if self.ended {
            return Ok(());
        }
        while !self.buffer.is_empty()
            && (self.buffer.len() >= self.capacity || self.bytes + e.json.len() > self.max_bytes)
        {
            match self.buffer.front() {
                Some(front) if front.sequence <= self.delivered_through => {
                    self.evicted_through = front.sequence;
                    self.bytes -= front.json.len();
                    self.buffer.pop_front();
                }
                _ => return Err(Hop::SessionBuffer),
            }
        }
        if e.json.len() > self.max_bytes {
            return Err(Hop::SessionBuffer);
        }
        self.last = e.sequence;
        self.bytes += e.json.len();
        self.buffer.push_back(e.clone());
        if let Some((_, tx)) = &self.subscriber {
            let seq = e.sequence;
            match tx.try_send(e) {
                Ok(()) => self.delivered_through = seq,
                Err(mpsc::error::TrySendError::Full(_)) => return Err(Hop::SubscriberQueue),
                // The subscriber went away; the event stays held for its return.
                Err(mpsc::error::TrySendError::Closed(_)) => self.subscriber = None,
            }
        }
        Ok(())
    }

    /// Attach the one subscriber, resuming after `after` (0: from the first event).
    pub fn subscribe(&mut self, after: u64) -> Result<Subscription, SubscribeError> {
        if let Some((_, tx)) = &self.subscriber {
            if !tx.is_closed() {
                return Err(SubscribeError::Conflict);
            }
            self.subscriber = None;
        }
        if after < self.evicted_through {
            return Err(SubscribeError::Gone {
                after,
                evicted_through: self.evicted_through,
            });
        }
        let backlog: Vec<Event> = self
            .buffer
            .iter()
            .filter(|e| e.sequence > after)
            .cloned()
            .collect();
        if let Some(l) = backlog.last() {
            self.delivered_through = self.delivered_through.max(l.sequence);
        }
        let (tx, rx) = mpsc::channel(self.queue);
        let id = self.next_id;
        self.next_id += 1;
        if !self.ended {
            self.subscriber = Some((id, tx));
        }
        Ok(Subscription { id, backlog, rx })
    }

    /// Detach subscriber `id` if it is still the one attached.
    pub fn detach(&mut self, id: u64) {
        if self.subscriber.as_ref().is_some_and(|(i, _)| *i == id) {
            self.subscriber = None;
        }
    }

    /// Is a live subscriber attached?
    pub fn subscribed(&self) -> bool {
        self.subscriber
            .as_ref()
            .is_some_and(|(_, tx)| !tx.is_closed())
    }

    /// The session ended: no more events; the subscriber's queue closes once drained.
    pub fn end(&mut self) {
        self.ended = true;
        self.subscriber = None;
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    /// Is the buffer empty?
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// Highest sequence received.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Events waiting in the subscriber's queue.
    pub fn subscriber_depth(&self) -> usize {
        self.subscriber
            .as_ref()
            .map_or(0, |(_, tx)| self.queue - tx.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(sequence: u64) -> Event {
        Event {
            sequence,
            json: Bytes::from(sequence.to_string()),
        }
    }

    fn seqs(v: &[Event]) -> Vec<u64> {
        v.iter().map(|e| e.sequence).collect()
    }

    #[test]
    fn a_full_buffer_nobody_took_from_names_the_session_buffer() {
        let mut e = Events::new(2, 1 << 20, 8);
        e.push(ev(1)).unwrap();
        e.push(ev(2)).unwrap();
        assert_eq!(e.push(ev(3)), Err(Hop::SessionBuffer));
    }

    #[test]
    fn the_buffer_is_bounded_in_bytes_too() {
        let mut e = Events::new(100, 5, 8);
        e.push(ev(1)).unwrap();
        e.push(ev(2)).unwrap();
        e.push(ev(3)).unwrap();
        e.push(ev(44)).unwrap();
        assert_eq!(e.push(ev(55)), Err(Hop::SessionBuffer));
    }

    #[test]
    fn a_full_subscriber_queue_names_its_hop() {
        let mut e = Events::new(8, 1 << 20, 1);
        let _s = e.subscribe(0).unwrap();
        e.push(ev(1)).unwrap();
        assert_eq!(e.push(ev(2)), Err(Hop::SubscriberQueue));
    }

    #[test]
    fn delivered_events_make_room_and_resume_covers_what_is_held() {
        let mut e = Events::new(2, 1 << 20, 8);
        let mut s = e.subscribe(0).unwrap();
        for i in 1..=4 {
            e.push(ev(i)).unwrap();
        }
        let got: Vec<u64> = std::iter::from_fn(|| s.rx.try_recv().ok())
            .map(|e| e.sequence)
            .collect();
        assert_eq!(got, [1, 2, 3, 4]);
        drop(s);
        // 1 and 2 were evicted: resuming after 1 would lose 2.
        assert_eq!(
            e.subscribe(1).unwrap_err(),
            SubscribeError::Gone {
                after: 1,
                evicted_through: 2
            }
        );
        let s = e.subscribe(2).unwrap();
        assert_eq!(seqs(&s.backlog), [3, 4]);
    }

    #[test]
    fn one_subscriber_at_a_time_and_a_gone_one_frees_the_slot() {
        let mut e = Events::new(4, 1 << 20, 4);
        let s = e.subscribe(0).unwrap();
        assert_eq!(e.subscribe(0).unwrap_err(), SubscribeError::Conflict);
        drop(s);
        assert!(e.subscribe(0).is_ok());
    }

    #[test]
    fn the_backlog_and_the_queue_never_repeat_or_skip() {
        let mut e = Events::new(16, 1 << 20, 16);
        e.push(ev(1)).unwrap();
        e.push(ev(3)).unwrap();
        let mut s = e.subscribe(1).unwrap();
        e.push(ev(4)).unwrap();
        assert_eq!(seqs(&s.backlog), [3]);
        assert_eq!(s.rx.try_recv().unwrap().sequence, 4);
        e.end();
        assert!(s.rx.try_recv().is_err());
    }
}
