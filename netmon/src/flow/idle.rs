//! The flow table's idle order: per protocol, its slots from the least recently active
//! to the most, as doubly linked lists threaded through one array of links (8 bytes a
//! slot).
//!
//! A flow's activity only moves forward, and netmon sees it in about the order it
//! happens, so "move to the back when active" keeps the lists in last-activity order
//! without comparing times. Where the order is not exact (a UDP peer's counters,
//! polled, report a datagram older than a flow seen since), a flow expires or is
//! evicted after the flows ahead of it, never before its time. The ordered set this
//! replaces (`BTreeSet<(u64, u32)>`) was exact but cost about 34 bytes a flow in
//! half-full nodes: 3.4 MB of netmon's 50 MB at 100,000 flows.

/// No slot: the end of a list, or a slot in no list.
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Link {
    prev: u32,
    next: u32,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
};

#[derive(Clone, Copy, Debug)]
struct Ends {
    front: u32,
    back: u32,
}

/// `N` lists over one set of slots; a slot is in at most one list.
#[derive(Debug)]
pub(super) struct IdleOrder<const N: usize> {
    links: Vec<Link>,
    lists: [Ends; N],
}

impl<const N: usize> IdleOrder<N> {
    pub(super) fn new() -> Self {
        IdleOrder {
            links: Vec::new(),
            lists: [Ends {
                front: NIL,
                back: NIL,
            }; N],
        }
    }

    /// The least recently active slot of `list`.
    pub(super) fn front(&self, list: usize) -> Option<u32> {
        Some(self.lists[list].front).filter(|&s| s != NIL)
    }

    /// Puts `slot` (in no list) at the back of `list`: the most recently active.
    pub(super) fn push_back(&mut self, list: usize, slot: u32) {
        let i = slot as usize;
        if self.links.len() <= i {
            self.links.resize(i + 1, UNLINKED);
        }
        debug_assert_eq!(self.links[i], UNLINKED, "slot {slot} is in a list already");
        let back = self.lists[list].back;
        self.links[i] = Link {
            prev: back,
            next: NIL,
        };
        match back {
            NIL => self.lists[list].front = slot,
            b => self.links[b as usize].next = slot,
        }
        self.lists[list].back = slot;
    }

    /// Takes `slot` out of `list`.
    pub(super) fn remove(&mut self, list: usize, slot: u32) {
        let Link { prev, next } = self.links[slot as usize];
        debug_assert!(
            prev != NIL || self.lists[list].front == slot,
            "slot {slot} is not in list {list}"
        );
        match prev {
            NIL => self.lists[list].front = next,
            p => self.links[p as usize].next = next,
        }
        match next {
            NIL => self.lists[list].back = prev,
            n => self.links[n as usize].prev = prev,
        }
        self.links[slot as usize] = UNLINKED;
    }

    /// `slot` (in `list`) was active just now: it moves to the back.
    pub(super) fn touch(&mut self, list: usize, slot: u32) {
        if self.lists[list].back != slot {
            self.remove(list, slot);
            self.push_back(list, slot);
        }
    }

    /// The slots of `list`, front to back.
    #[cfg(test)]
    pub(super) fn iter(&self, list: usize) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors(self.front(list), |&s| {
            Some(self.links[s as usize].next).filter(|&n| n != NIL)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(o: &IdleOrder<2>, list: usize) -> Vec<u32> {
        o.iter(list).collect()
    }

    #[test]
    fn a_link_is_8_bytes() {
        assert_eq!(std::mem::size_of::<Link>(), 8);
    }

    #[test]
    fn slots_leave_from_the_front_in_the_order_they_were_last_touched() {
        let mut o = IdleOrder::<2>::new();
        for s in [3, 0, 7] {
            o.push_back(0, s);
        }
        o.push_back(1, 5);
        assert_eq!(order(&o, 0), [3, 0, 7]);
        o.touch(0, 3);
        assert_eq!(order(&o, 0), [0, 7, 3]);
        o.touch(0, 3);
        assert_eq!(order(&o, 0), [0, 7, 3]);
        o.touch(0, 7);
        assert_eq!(order(&o, 0), [0, 3, 7]);
        assert_eq!(o.front(0), Some(0));
        // The other list is its own.
        assert_eq!(order(&o, 1), [5]);
    }

    #[test]
    fn removal_from_anywhere_keeps_both_ends_right() {
        let mut o = IdleOrder::<2>::new();
        for s in 0..5 {
            o.push_back(1, s);
        }
        o.remove(1, 2);
        assert_eq!(order(&o, 1), [0, 1, 3, 4]);
        o.remove(1, 0);
        o.remove(1, 4);
        assert_eq!(order(&o, 1), [1, 3]);
        o.remove(1, 3);
        o.remove(1, 1);
        assert_eq!(o.front(1), None);
        // Freed slots come back, in either list.
        o.push_back(0, 4);
        o.push_back(1, 0);
        assert_eq!((order(&o, 0), order(&o, 1)), (vec![4], vec![0]));
    }
}
