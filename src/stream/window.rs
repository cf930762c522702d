//! The resume window: the latest events fanned out, so that a resume inside it needs no query.

use super::event::Delivery;
use crate::position::Epoch;
use std::collections::VecDeque;

/// The latest events fanned out, contiguous in seq: a resume inside it is served without reading the
/// database. Written under the registry lock (in seq order, with the head), read under its own lock only.
pub(super) struct Window {
    epoch: Epoch,
    events: VecDeque<Delivery>,
    bytes: usize,
}

impl Window {
    pub(super) fn new(epoch: Epoch) -> Self {
        Self { epoch, events: VecDeque::new(), bytes: 0 }
    }

    /// Appends the event fanned out after the last one. Anything that breaks the run (another epoch, a seq
    /// that does not follow) starts the window afresh: it never holds a gap, so it can tell exactly what it
    /// covers.
    pub(super) fn push(&mut self, epoch: Epoch, event: Delivery, max_events: usize, max_bytes: usize) {
        if max_events == 0 {
            return;
        }
        let follows = self.events.back().is_none_or(|last| last.seq + 1 == event.seq);
        if self.epoch != epoch || !follows {
            *self = Window::new(epoch);
        }
        self.bytes += event.size;
        self.events.push_back(event);
        while self.events.len() > max_events || (self.bytes > max_bytes && self.events.len() > 1) {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.size;
            }
        }
    }

    /// The events of `groups` in `(after, through]`, if the window holds every seq of that range; `None`
    /// sends the reader to the database.
    pub(super) fn read(&self, epoch: Epoch, groups: &[String], after: i64, through: i64) -> Option<Vec<Delivery>> {
        if through <= after {
            return Some(Vec::new());
        }
        let (first, last) = (self.events.front()?.seq, self.events.back()?.seq);
        if self.epoch != epoch || after + 1 < first || through > last {
            return None;
        }
        // Contiguous: the event of seq s sits at s - first.
        let (start, end) = ((after + 1 - first) as usize, (through - first + 1) as usize);
        Some(self.events.range(start..end).filter(|e| e.groups.iter().any(|g| groups.contains(g))).cloned().collect())
    }

    pub(super) fn clear(&mut self, epoch: Epoch) {
        *self = Window::new(epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Epoch;
    use crate::stream::event::StreamEvent;
    use std::sync::Arc;

    fn event(seq: i64, group: &str) -> Delivery {
        let frame = bytes::Bytes::from_static(b"data: x\n\n");
        Arc::new(StreamEvent {
            seq,
            published_at: chrono::Utc::now(),
            groups: vec![group.to_owned()],
            frame,
            groups_array: 0..0,
            size: 100,
        })
    }

    fn seqs(events: Option<Vec<Delivery>>) -> Option<Vec<i64>> {
        events.map(|e| e.iter().map(|e| e.seq).collect())
    }

    #[test]
    fn the_window_serves_only_ranges_it_holds_whole_and_restarts_after_a_hole() {
        let (epoch, north) = (Epoch(1), vec!["north".to_owned()]);
        let mut window = Window::new(epoch);
        for seq in 1..=6 {
            window.push(epoch, event(seq, if seq % 2 == 0 { "south" } else { "north" }), 4, 1 << 20);
        }
        // Holds 3..=6: a resume after 2 (its first seq - 1) is inside, after 1 is not.
        assert_eq!(seqs(window.read(epoch, &north, 2, 6)), Some(vec![3, 5]));
        assert_eq!(seqs(window.read(epoch, &north, 1, 6)), None);
        assert_eq!(seqs(window.read(epoch, &north, 2, 7)), None, "past its last seq");
        assert_eq!(seqs(window.read(Epoch(2), &north, 2, 6)), None, "another epoch");
        // A hole (7 never came): the window starts again at 8 and never serves across the hole.
        window.push(epoch, event(8, "north"), 4, 1 << 20);
        assert_eq!(seqs(window.read(epoch, &north, 6, 8)), None);
        assert_eq!(seqs(window.read(epoch, &north, 7, 8)), Some(vec![8]));
        // The byte bound drops the oldest first.
        for seq in 9..=11 {
            window.push(epoch, event(seq, "north"), 100, 250);
        }
        assert_eq!(seqs(window.read(epoch, &north, 9, 11)), Some(vec![10, 11]));
        assert_eq!(seqs(window.read(epoch, &north, 8, 11)), None);
    }
}
