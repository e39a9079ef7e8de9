//! Bounded per-session state: an LRU map with a capacity and idle expiry.
//! Every operation is O(1) (amortized for expiry): a hash map into a slab of
//! nodes threaded on a doubly linked list, most recently seen first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NIL: usize = usize::MAX;

/// Where a session is in the replacement cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Turns go to the original target; later turns roll the dice.
    #[default]
    Original,
    /// The replacement serves this many more turns.
    Replacing {
        /// Replaced turns still to serve.
        remaining: u32,
    },
    /// The next turn is a forced original turn.
    Cooldown,
}

/// What is remembered of one session.
#[derive(Debug, Clone, Default)]
pub struct SessionState {
    /// Turns seen (opt-outs included).
    pub turns: u64,
    /// Replacement cycle.
    pub phase: Phase,
    /// The session opted out for good (`X-Disable-Replacement: session`).
    pub opted_out: bool,
    /// Flags for the `unique_sessions_*` counts.
    pub seen: SeenFlags,
}

/// Which unique-session counts this session is already part of.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeenFlags {
    /// Counted in `unique_sessions_activated`.
    pub activated: bool,
    /// Counted in `unique_sessions_with_turns`.
    pub replaced_turn: bool,
    /// Counted in `unique_sessions_opted_out`.
    pub opted_out: bool,
    /// Counted in `unique_sessions_checked`.
    pub checked: bool,
}

/// Why sessions were forgotten by one [`SessionTable::touch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Forgotten because they were idle too long.
    pub idle: u64,
    /// Forgotten because the table was full.
    pub capacity: u64,
}

#[derive(Debug)]
struct Node {
    key: Arc<str>,
    prev: usize,
    next: usize,
    last_seen: Instant,
    state: SessionState,
}

/// An LRU map from session id to [`SessionState`].
#[derive(Debug)]
pub struct SessionTable {
    map: HashMap<Arc<str>, usize>,
    nodes: Vec<Node>,
    free: Vec<usize>,
    /// Most recently seen.
    head: usize,
    /// Least recently seen.
    tail: usize,
    capacity: usize,
    idle: Duration,
}

impl SessionTable {
    /// A table holding at most `capacity` (≥ 1) sessions, each for at most `idle` since last seen.
    pub fn new(capacity: usize, idle: Duration) -> SessionTable {
        SessionTable {
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.max(1),
            idle,
        }
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The state of `session` as of `now`, created fresh if unknown or
    /// expired, and marked most recently seen. Expired and (if full) least
    /// recently seen sessions are forgotten first.
    pub fn touch(&mut self, session: &str, now: Instant) -> (&mut SessionState, Evictions) {
        let mut evicted = Evictions::default();
        while self.tail != NIL
            && now.saturating_duration_since(self.nodes[self.tail].last_seen) > self.idle
        {
            self.remove(self.tail);
            evicted.idle += 1;
        }
        let index = match self.map.get(session) {
            Some(&i) => {
                self.unlink(i);
                i
            }
            None => {
                if self.map.len() >= self.capacity && self.tail != NIL {
                    self.remove(self.tail);
                    evicted.capacity += 1;
                }
                let key: Arc<str> = Arc::from(session);
                let node = Node {
                    key: key.clone(),
                    prev: NIL,
                    next: NIL,
                    last_seen: now,
                    state: SessionState::default(),
                };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.nodes[i] = node;
                        i
                    }
                    None => {
                        self.nodes.push(node);
                        self.nodes.len() - 1
                    }
                };
                self.map.insert(key, i);
                i
            }
        };
        self.push_front(index);
        let node = &mut self.nodes[index];
        node.last_seen = now;
        (&mut node.state, evicted)
    }

    fn remove(&mut self, i: usize) {
        self.unlink(i);
        let key = std::mem::replace(&mut self.nodes[i].key, Arc::from(""));
        self.nodes[i].state = SessionState::default();
        self.map.remove(&key);
        self.free.push(i);
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
        self.nodes[i].prev = NIL;
        self.nodes[i].next = NIL;
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    /// Session ids from most to least recently seen (tests).
    #[cfg(test)]
    fn order(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = self.head;
        while i != NIL {
            out.push(self.nodes[i].key.to_string());
            i = self.nodes[i].next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_seen_goes_first_when_full() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(3, Duration::from_secs(60));
        for s in ["a", "b", "c"] {
            t.touch(s, t0).0.turns += 1;
        }
        assert_eq!(t.order(), ["c", "b", "a"]);
        t.touch("a", t0).0.turns += 1;
        assert_eq!(t.order(), ["a", "c", "b"]);
        let (state, ev) = t.touch("d", t0);
        assert_eq!(state.turns, 0);
        assert_eq!(
            ev,
            Evictions {
                idle: 0,
                capacity: 1
            }
        );
        assert_eq!(t.order(), ["d", "a", "c"]);
        assert_eq!(t.touch("a", t0).0.turns, 2);
        // "b" was forgotten: it starts over.
        assert_eq!(t.touch("b", t0).0.turns, 0);
        assert_eq!(t.len(), 3);
        assert_eq!(t.nodes.len(), 3, "slots are reused");
    }

    #[test]
    fn idle_sessions_expire() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(10, Duration::from_secs(60));
        t.touch("old", t0).0.turns = 5;
        t.touch("young", t0 + Duration::from_secs(50)).0.turns = 7;
        let (state, ev) = t.touch("young", t0 + Duration::from_secs(61));
        assert_eq!(state.turns, 7);
        assert_eq!(
            ev,
            Evictions {
                idle: 1,
                capacity: 0
            }
        );
        assert_eq!(t.order(), ["young"]);
        // Idle past the limit: a fresh state.
        assert_eq!(t.touch("young", t0 + Duration::from_secs(200)).0.turns, 0);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn many_sessions_stay_within_capacity() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(100, Duration::from_secs(60));
        let mut evicted = 0;
        for i in 0..10_000 {
            evicted += t.touch(&format!("s{i}"), t0).1.capacity;
            assert!(t.len() <= 100);
        }
        assert_eq!(evicted, 10_000 - 100);
        assert!(t.nodes.len() <= 100);
        assert_eq!(t.order().len(), 100);
    }
}
