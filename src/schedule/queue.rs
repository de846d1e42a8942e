//! The waiting room in front of the detector, as a plain data structure (no threads, no
//! clock of its own), so that its promises can be checked by property tests.
//!
//! - **One frame per printer.** Each printer has a slot that holds at most one frame. A
//!   newer frame from the same printer replaces the one waiting (the replaced one is handed
//!   back to the caller, who tells its submitter), so the detector always sees a printer's
//!   freshest frame, and a frame taken is out of the queue: it is never scored twice.
//! - **Max-min fair.** Among the printers with a frame waiting, the one served least
//!   recently goes first (a printer never served before goes before all that were; two of
//!   those go in the order they started waiting). With equal-cost frames this is round
//!   robin over the printers that want the detector, which is the max-min fair share: a
//!   printer that wants less than its share gets all it wants, and the rest is split evenly
//!   among the others. While a printer waits, every other printer is served at most once
//!   before it (urgent frames aside), so its wait is bounded by one round.
//! - **Urgent first.** A frame marked urgent (its printer has just warned: the next frame
//!   may be the one that pauses a failing print) goes before every frame that is not;
//!   urgent frames among themselves follow the same fair order. A printer has at most one
//!   frame waiting, so an urgent printer takes at most one frame per cadence and cannot
//!   starve the others unless urgent printers alone fill the detector.

use std::time::Instant;

/// A printer's place in the queue (an index, reused after the printer leaves).
pub type SlotId = usize;

/// A frame waiting for the detector.
#[derive(Debug)]
pub struct Waiting<T> {
    pub item: T,
    pub urgent: bool,
    /// When this frame was submitted.
    pub submitted: Instant,
    /// The submission's number, unique over the queue's life.
    pub ticket: u64,
}

#[derive(Debug)]
struct Slot<T> {
    waiting: Option<Waiting<T>>,
    /// The turn at which the printer was last served; 0: never.
    last_turn: u64,
    /// When the printer began to wait (kept when a newer frame replaces the waiting one,
    /// so a printer does not lose its place by sending fresher frames).
    order: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Queue<T> {
    slots: Vec<Option<Slot<T>>>,
    /// Frames taken so far.
    turn: u64,
    /// Counts the moments printers begin to wait and the submissions.
    order: u64,
    tickets: u64,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue { slots: Vec::new(), turn: 0, order: 0, tickets: 0 }
    }
}

impl<T> Queue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A slot for a new printer.
    pub fn join(&mut self) -> SlotId {
        let slot = Slot { waiting: None, last_turn: 0, order: 0 };
        match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        }
    }

    /// The printer leaves; its waiting frame, if any, is returned.
    pub fn leave(&mut self, id: SlotId) -> Option<Waiting<T>> {
        self.slots.get_mut(id).and_then(Option::take).and_then(|s| s.waiting)
    }

    /// Puts a frame in the printer's slot. Returns the new submission's ticket and the
    /// frame it replaced, if one was waiting. A slot that is not (or no longer) joined
    /// takes nothing: the item comes back as `Err`.
    pub fn submit(&mut self, id: SlotId, item: T, urgent: bool, now: Instant) -> Result<(u64, Option<Waiting<T>>), T> {
        let Some(Some(slot)) = self.slots.get_mut(id) else { return Err(item) };
        self.tickets += 1;
        let ticket = self.tickets;
        let replaced = slot.waiting.take();
        if replaced.is_none() {
            self.order += 1;
            slot.order = self.order;
        }
        slot.waiting = Some(Waiting { item, urgent, submitted: now, ticket });
        Ok((ticket, replaced))
    }

    /// Takes back a submission that is still waiting (its submitter no longer wants it).
    pub fn withdraw(&mut self, id: SlotId, ticket: u64) -> Option<Waiting<T>> {
        let slot = self.slots.get_mut(id)?.as_mut()?;
        if slot.waiting.as_ref().is_some_and(|w| w.ticket == ticket) { slot.waiting.take() } else { None }
    }

    /// The next frame to score: urgent first, then the printer served least recently.
    pub fn take(&mut self) -> Option<(SlotId, Waiting<T>)> {
        let (id, _) = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().and_then(|s| s.waiting.as_ref().map(|w| (i, (!w.urgent, s.last_turn, s.order)))))
            .min_by_key(|(_, key)| *key)?;
        self.turn += 1;
        let slot = self.slots[id].as_mut().expect("chosen among the joined slots");
        slot.last_turn = self.turn;
        Some((id, slot.waiting.take().expect("chosen among the waiting")))
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().filter(|s| s.waiting.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every waiting frame, taken out (a stop).
    pub fn drain(&mut self) -> Vec<Waiting<T>> {
        self.slots.iter_mut().flatten().filter_map(|s| s.waiting.take()).collect()
    }

    /// The oldest submission time among the waiting frames.
    pub fn oldest(&self) -> Option<Instant> {
        self.slots.iter().flatten().filter_map(|s| s.waiting.as_ref().map(|w| w.submitted)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_frame_replaces_the_waiting_one_and_keeps_its_place() {
        let now = Instant::now();
        let mut q = Queue::new();
        let (a, b) = (q.join(), q.join());
        let (t1, none) = q.submit(a, "a1", false, now).unwrap();
        assert!(none.is_none());
        q.submit(b, "b1", false, now).unwrap();
        let (t2, replaced) = q.submit(a, "a2", false, now).unwrap();
        assert_eq!(replaced.map(|w| (w.item, w.ticket)), Some(("a1", t1)));
        assert!(t2 > t1);
        assert_eq!(q.len(), 2);
        // a began waiting first: it keeps that place with its fresher frame.
        assert_eq!(q.take().map(|(i, w)| (i, w.item)), Some((a, "a2")));
        assert_eq!(q.take().map(|(i, w)| (i, w.item)), Some((b, "b1")));
        assert!(q.take().is_none());
    }

    #[test]
    fn urgent_goes_first_and_withdrawn_frames_are_gone() {
        let now = Instant::now();
        let mut q = Queue::new();
        let ids: Vec<_> = (0..4).map(|_| q.join()).collect();
        for &i in &ids {
            q.submit(i, i, false, now).unwrap();
        }
        let (t, _) = q.submit(ids[3], 30, true, now).unwrap();
        assert_eq!(q.take().map(|(_, w)| w.item), Some(30));
        q.submit(ids[3], 31, false, now).unwrap();
        assert!(q.withdraw(ids[3], t).is_none(), "that ticket was already taken");
        let (t, _) = q.submit(ids[2], 22, false, now).unwrap();
        assert_eq!(q.withdraw(ids[2], t).map(|w| w.item), Some(22));
        let order: Vec<_> = std::iter::from_fn(|| q.take().map(|(_, w)| w.item)).collect();
        assert_eq!(order, vec![0, 1, 31]);
        assert_eq!(q.leave(ids[0]).map(|w| w.item), None);
        assert!(q.submit(ids[0], 9, false, now).is_err(), "a slot that left takes nothing");
        assert_eq!(q.join(), ids[0], "slots are reused");
    }
}
