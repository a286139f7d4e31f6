//! The counters every connection and close event moves, found once (see
//! [`HotCounters`]): the hot path of [`super::Families::observe`].
use prometheus::{IntCounter, IntCounterVec};

use super::{direction_name, proto_name};
use crate::event::{Connection, Direction, Proto};

/// The children of the families that every connection and close event moves, found
/// on first use and kept (`with_label_values` hashes and compares every label value
/// on each call: it was most of what the metrics cost per event). Indexed by
/// [`direction_index`], [`proto_index`], result (0 established, 1 failed) and way
/// (0 sent, 1 received). None of these families is ever reset.
#[derive(Default)]
pub(super) struct HotCounters {
    pub(super) connections: [Option<IntCounter>; 12],
    pub(super) closes: [Option<IntCounter>; 2],
    pub(super) bytes: [Option<IntCounter>; 4],
    pub(super) packets: [Option<IntCounter>; 4],
}

/// `slot`'s counter, found in `family` under `labels` the first time.
pub(super) fn hot<'a>(
    slot: &'a mut Option<IntCounter>,
    family: &IntCounterVec,
    labels: &[&str],
) -> &'a IntCounter {
    slot.get_or_insert_with(|| family.with_label_values(labels))
}

pub(super) fn proto_index(p: Proto) -> usize {
    match p {
        Proto::Tcp => 0,
        Proto::Udp => 1,
    }
}

fn direction_index(d: Option<Direction>) -> usize {
    match d {
        Some(Direction::Outbound) => 0,
        Some(Direction::Inbound) => 1,
        None => 2,
    }
}

/// The `(slot, labels)` of `netmon_connections_total` for a connection that began.
pub(super) fn connection_slot(c: &Connection, failed: bool) -> (usize, [&'static str; 3]) {
    let result = if failed { "failed" } else { "established" };
    (
        direction_index(c.direction) * 4 + proto_index(c.proto) * 2 + failed as usize,
        [direction_name(c.direction), proto_name(c.proto), result],
    )
}
