//! The dispatcher's priority queue: urgent before high before normal before low, first in first
//! out within a priority, and no starvation: a waiting lower priority is served at least once every
//! `starvation_limit + 1` pops, however much higher-priority traffic arrives.
//!
//! Pure data structure; it knows nothing of tasks or time.

use std::collections::VecDeque;

use bellhop_protocol::Priority;

/// A multi-level FIFO queue with bounded starvation.
#[derive(Debug)]
pub struct PriorityQueue<T> {
    /// One FIFO per priority, indexed by [`Priority::rank`] (low = 0).
    levels: [VecDeque<T>; 4],
    /// How many pops in a row each non-empty level has been passed over.
    skipped: [u32; 4],
    /// After this many pass-overs a waiting level is served next.
    starvation_limit: u32,
    /// Total items.
    len: usize,
}

impl<T> PriorityQueue<T> {
    /// An empty queue; a waiting level is passed over at most `starvation_limit` times in a row.
    pub fn new(starvation_limit: u32) -> Self {
        PriorityQueue {
            levels: Default::default(),
            skipped: [0; 4],
            starvation_limit,
            len: 0,
        }
    }

    /// Number of queued items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues an item at the back of its priority.
    pub fn push(&mut self, priority: Priority, item: T) {
        self.levels[priority.rank()].push_back(item);
        self.len += 1;
    }

    /// Takes the next item: the oldest of the highest priority, unless a lower priority has
    /// waited through `starvation_limit` pops.
    pub fn pop(&mut self) -> Option<(Priority, T)> {
        let highest = (0..4).rev().find(|&r| !self.levels[r].is_empty())?;
        let chosen = (0..highest)
            .rev()
            .find(|&r| !self.levels[r].is_empty() && self.skipped[r] >= self.starvation_limit)
            .unwrap_or(highest);
        for r in 0..4 {
            if r == chosen || self.levels[r].is_empty() {
                self.skipped[r] = 0;
            } else if r < chosen {
                self.skipped[r] += 1;
            }
        }
        let item = self.levels[chosen].pop_front()?;
        if self.levels[chosen].is_empty() {
            self.skipped[chosen] = 0;
        }
        self.len -= 1;
        Some((Priority::ALL[3 - chosen], item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::*;

    #[test]
    fn serves_higher_priorities_first_and_fifo_within_one() {
        let mut q = PriorityQueue::new(100);
        q.push(Low, "l1");
        q.push(Normal, "n1");
        q.push(Urgent, "u1");
        q.push(Normal, "n2");
        q.push(High, "h1");
        q.push(Urgent, "u2");
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, x)| x)).collect();
        assert_eq!(order, ["u1", "u2", "h1", "n1", "n2", "l1"]);
        assert!(q.is_empty());
    }

    #[test]
    fn pop_reports_the_priority_it_served() {
        let mut q = PriorityQueue::new(4);
        q.push(High, 1);
        assert_eq!(q.pop(), Some((High, 1)));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn a_flood_of_urgent_traffic_cannot_starve_low_priorities() {
        let limit = 8;
        let mut q = PriorityQueue::new(limit);
        q.push(Low, "low");
        q.push(Normal, "normal");
        for _ in 0..1000 {
            q.push(Urgent, "u");
        }
        let mut served_at = std::collections::HashMap::new();
        for i in 0..1002 {
            let (_, x) = q.pop().unwrap();
            served_at.entry(x).or_insert(i);
        }
        let normal = served_at["normal"];
        let low = served_at["low"];
        assert!(normal <= limit as usize, "normal waited {normal} pops");
        assert!(low <= 2 * (limit as usize + 1), "low waited {low} pops");
    }

    #[test]
    fn starvation_relief_only_applies_to_levels_that_actually_waited() {
        let mut q = PriorityQueue::new(2);
        for i in 0..5 {
            q.push(Urgent, i);
        }
        // Nothing lower was waiting, so urgent items come out in order without interruption.
        let got: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, x)| x)).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        q.push(Low, 9);
        assert_eq!(q.pop(), Some((Low, 9)));
    }
}
