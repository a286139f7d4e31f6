//! A stream that resumes from further back than the API's ring (`api/feed.rs`) reads
//! the missing stretch from the history this agent writes (`history/replay.rs`), by
//! the same numbers (the hub's sequence, stored as `events.seq`), then goes on from
//! the ring: nothing twice, nothing left out that the history kept.
//!
//! The history commits in batches (`history/writer.rs`), so what just left the ring
//! may not be in the file yet: the stream waits until the writer has settled up to
//! where the ring begins (at most [`WAIT`], then what is still missing is `lagged`).
//! Event types the history does not keep (`stats`, `probe`, `log`, `host`, `port`)
//! are skipped without a count, and so are events the writer dropped (a gap in
//! `events.seq` cannot tell the two apart); ids older than the history's oldest are
//! `lagged`.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rusqlite::Connection;

use super::feed::{self, Item, ItemRef};

/// Longest wait for the history writer to catch up with the ring.
pub const WAIT: Duration = Duration::from_secs(5);
/// How often the writer's progress is looked at while waiting.
pub const POLL: Duration = Duration::from_millis(20);

/// One stream's reader of the history.
pub struct History {
    path: PathBuf,
    settled: Arc<crate::history::Counters>,
    /// Opened on first use, on a blocking thread.
    conn: Option<Arc<Mutex<Connection>>>,
    /// The oldest number the file holds has been compared with the stream's.
    oldest_checked: bool,
    waiting_since: Option<Instant>,
}

/// What one step of replay gives the stream.
pub enum Step {
    /// Events from the history (numbered, in order), and the id to go on from.
    Events(Vec<ItemRef>, u64),
    /// These ids are not to be had: `lagged` with their count, go on after them.
    Missed(u64, u64),
    /// The writer is behind: ask again shortly.
    Wait,
}

/// The number of the first event at or after `t` in the history at `path` (`None`:
/// none that late, or the file cannot be read).
pub async fn first_at(path: PathBuf, t: chrono::DateTime<chrono::Utc>) -> Option<u64> {
    let ts_ns = t.timestamp_nanos_opt()?;
    tokio::task::spawn_blocking(move || {
        let conn = crate::history::open_reader(&path).ok()?;
        crate::history::replay::first_seq_at(&conn, ts_ns).ok()?
    })
    .await
    .ok()?
}

impl History {
    pub fn new(path: PathBuf, settled: Arc<crate::history::Counters>) -> History {
        History {
            path,
            settled,
            conn: None,
            oldest_checked: false,
            waiting_since: None,
        }
    }

    /// The next stretch of at most `max` events from `next` on, before `first` (the
    /// ring's oldest id). Errors (the file unreadable) make the stretch `Missed`.
    pub async fn step(&mut self, feed: &feed::Feed, next: u64, first: u64, max: usize) -> Step {
        let upto = first.min(self.settled.settled().saturating_add(1));
        if upto <= next {
            let since = *self.waiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() < WAIT {
                tokio::time::sleep(POLL).await;
                return Step::Wait;
            }
            self.waiting_since = None;
            return Step::Missed(first - next, first);
        }
        self.waiting_since = None;
        let conn = match &self.conn {
            Some(c) => c.clone(),
            None => {
                let path = self.path.clone();
                match tokio::task::spawn_blocking(move || crate::history::open_reader(&path)).await
                {
                    Ok(Ok(c)) => {
                        let c = Arc::new(Mutex::new(c));
                        self.conn = Some(c.clone());
                        c
                    }
                    _ => return Step::Missed(first - next, first),
                }
            }
        };
        let check_oldest = !std::mem::replace(&mut self.oldest_checked, true);
        let host = feed.host.get().cloned().unwrap_or_default();
        let read = tokio::task::spawn_blocking(move || {
            let conn = feed::lock(&conn);
            let oldest = if check_oldest {
                crate::history::replay::first_seq(&conn)?
            } else {
                Some(0)
            };
            let rows = crate::history::replay::events(&conn, next, upto, max, &host)?;
            Ok::<_, rusqlite::Error>((oldest, rows))
        })
        .await;
        let Ok(Ok((oldest, rows))) = read else {
            return Step::Missed(first - next, first);
        };
        // Older than anything the history holds (retention, or kept since later).
        let oldest = oldest.unwrap_or(upto).min(upto);
        if oldest > next {
            return Step::Missed(oldest - next, oldest);
        }
        let full = rows.len() == max;
        let mut go_on = upto;
        let items: Vec<ItemRef> = ItemRef::batch(
            rows.into_iter()
                .map(|(seq, ev)| Item::new(seq, Arc::new(ev)))
                .collect(),
        )
        .collect();
        if full && let Some(last) = items.last() {
            go_on = last.id + 1;
        }
        Step::Events(items, go_on)
    }
}
