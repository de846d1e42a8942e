//! The publishing queue: bounded, never blocking the side that fills it.
//!
//! The sink puts messages here from the watches' views and events; a sender task takes
//! them out while the broker is connected. Two rules keep it small whatever the broker
//! does:
//!
//! - **Retained state is coalesced**: a retained message for a topic that is already
//!   queued replaces the queued one in place (only the newest state matters, and it keeps
//!   its place in line so that state is not reordered behind later events).
//! - **Full means the oldest goes**: past the capacity the oldest message is dropped (a
//!   stale score is worth less than a fresh one) and counted; [`Queue::push`] never waits.
//!
//! After a reconnect the sink publishes the whole state again anyway, so what a long
//! outage drops is telemetry, never the final picture.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// One message for the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// At-least-once (QoS 1) rather than at-most-once (QoS 0).
    pub reliable: bool,
}

impl Message {
    pub fn retained(topic: String, payload: impl Into<Vec<u8>>) -> Self {
        Self { topic, payload: payload.into(), retain: true, reliable: true }
    }

    pub fn event(topic: String, payload: impl Into<Vec<u8>>) -> Self {
        Self { topic, payload: payload.into(), retain: false, reliable: true }
    }
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Message>,
    dropped: u64,
}

/// The bounded queue; see the module documentation.
pub struct Queue {
    inner: Mutex<Inner>,
    capacity: usize,
    ready: Notify,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Self { inner: Mutex::new(Inner::default()), capacity: capacity.max(1), ready: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a message (see the module documentation); returns false when an older message
    /// had to be dropped for it.
    pub fn push(&self, msg: Message) -> bool {
        let mut inner = self.lock();
        let mut room = true;
        if msg.retain
            && let Some(queued) = inner.items.iter_mut().find(|m| m.retain && m.topic == msg.topic)
        {
            *queued = msg;
        } else {
            if inner.items.len() >= self.capacity {
                inner.items.pop_front();
                inner.dropped += 1;
                room = false;
            }
            inner.items.push_back(msg);
        }
        drop(inner);
        self.ready.notify_one();
        room
    }

    /// Puts a message back at the head (it could not be handed over).
    pub fn push_front(&self, msg: Message) {
        let mut inner = self.lock();
        if inner.items.len() >= self.capacity {
            inner.dropped += 1;
            return;
        }
        inner.items.push_front(msg);
    }

    pub fn pop(&self) -> Option<Message> {
        self.lock().items.pop_front()
    }

    /// Waits until something may be queued (returns at once when a push came meanwhile).
    pub async fn ready(&self) {
        if !self.lock().items.is_empty() {
            return;
        }
        self.ready.notified().await
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages dropped for room since the last call.
    pub fn take_dropped(&self) -> u64 {
        std::mem::take(&mut self.lock().dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_state_coalesces_in_place_and_the_oldest_goes_when_full() {
        let q = Queue::new(3);
        assert!(q.push(Message::retained("a".into(), "1")));
        assert!(q.push(Message::event("e".into(), "x")));
        assert!(q.push(Message::retained("a".into(), "2")));
        assert_eq!(q.len(), 2);
        assert!(q.push(Message::event("e".into(), "y")));
        assert!(!q.push(Message::event("e".into(), "z")), "full: the oldest is dropped");
        assert_eq!(q.take_dropped(), 1);
        let got: Vec<_> = std::iter::from_fn(|| q.pop()).map(|m| String::from_utf8(m.payload).unwrap()).collect();
        assert_eq!(got, ["x", "y", "z"], "state `a` (coalesced to 2) was the oldest");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn ready_wakes_on_push() {
        let q = std::sync::Arc::new(Queue::new(4));
        let q2 = q.clone();
        let waiter = tokio::spawn(async move {
            q2.ready().await;
            q2.pop()
        });
        tokio::task::yield_now().await;
        q.push(Message::event("t".into(), "p"));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(got.unwrap().topic, "t");
    }
}
