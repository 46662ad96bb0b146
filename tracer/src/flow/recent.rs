//! A table of the last N keys inserted: what the trace remembers of recent queries, conntrack
//! entries, rule paths and the names of namespaces and links.
//!
//! Its hash table is allocated once, at twice its bound, and never grows. A table held at its bound
//! by forgetting one old key per new one fills with tombstones; when they use up its free space,
//! the table is rehashed in place if at most half of it is in use, and otherwise reallocated at
//! twice the size, at a moment the traffic decides: a step in the tracer's memory long after the
//! table filled. At twice its bound it is never more than half full.
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The last `bound` keys inserted, with their values.
#[derive(Debug)]
pub struct Recent<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    bound: usize,
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
    /// An empty table of at most `bound` keys, allocated at its full size.
    pub fn new(bound: usize) -> Self {
        Self {
            // One more than the bound: a new key is inserted before the oldest is forgotten.
            map: HashMap::with_capacity(2 * (bound + 1)),
            order: VecDeque::with_capacity(bound + 1),
            bound,
        }
    }

    /// Sets `key`'s value (a known key keeps its place in the order); a new key makes the table
    /// forget the oldest one beyond the bound. Whether `key` was new.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        if self.map.insert(key.clone(), value).is_some() {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.bound
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        true
    }

    /// `key`'s value, while it is remembered.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_key_beyond_its_bound() {
        let mut t = Recent::new(3);
        for k in 0..4 {
            assert!(t.insert(k, k * 10));
        }
        assert!(!t.contains(&0));
        assert_eq!((t.get(&1), t.get(&3)), (Some(&10), Some(&30)));
        // A known key is updated in place: nothing is forgotten, and it keeps its turn.
        assert!(!t.insert(1, 11));
        assert_eq!(t.get(&1), Some(&11));
        assert!(t.insert(4, 40));
        assert_eq!((t.contains(&1), t.contains(&2)), (false, true));
        assert_eq!(t.map.len(), 3);
    }

    #[test]
    fn a_full_table_under_churn_is_never_reallocated() {
        let bound = 4096;
        let mut t = Recent::new(bound);
        let (map, order) = (t.map.capacity(), t.order.capacity());
        // 50 times the bound. Sized at its bound, the table was reallocated at twice the size about
        // 10 bounds in (39,229 keys of 4096 in one run).
        let n = 50 * bound as u64;
        for k in 0..n {
            assert!(t.insert(k, k));
            assert!(
                t.map.capacity() <= map,
                "reallocated after {k} keys: {} > {map}",
                t.map.capacity()
            );
        }
        assert_eq!((t.map.len(), t.order.len()), (bound, bound));
        assert_eq!(t.order.capacity(), order);
        assert!(t.contains(&(n - 1)) && t.contains(&(n - bound as u64)));
        assert!(!t.contains(&(n - bound as u64 - 1)));
    }
}
