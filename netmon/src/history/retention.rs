//! Retention: rows older than their table's period are deleted in chunks of at most
//! [`CHUNK`] rows ([`BATCH_CHUNK`] of `event_batches`, thousands of events each), one
//! chunk per writer step, so a prune of millions of rows never holds the write lock
//! for long and batches go on committing in between.
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::HistoryConfig;

/// Most rows one step deletes.
pub const CHUNK: i64 = 5_000;
/// Most `event_batches` rows one step deletes (each holds up to a commit's events: a
/// batch goes when its newest event is older than the period).
pub const BATCH_CHUNK: i64 = 16;

/// One pass over every table, step by step.
pub struct Pruner {
    /// (table, time column, cutoff in that column's unit, rows per step), in order.
    work: Vec<(&'static str, &'static str, i64, i64)>,
}

impl Pruner {
    /// The pass that applies `config`'s periods as of `now`.
    pub fn new(config: &HistoryConfig, now: DateTime<Utc>) -> Pruner {
        let secs = |span: super::Span| now.timestamp() - span.0.as_secs() as i64;
        let raw_ns = (secs(config.raw_retention) as i128 * 1_000_000_000)
            .clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        let hour = secs(config.hour_retention);
        Pruner {
            work: vec![
                ("event_rows", "ts", raw_ns, CHUNK),
                ("event_batches", "last_ts", raw_ns, BATCH_CHUNK),
                (
                    "flow_minute",
                    "minute",
                    secs(config.minute_retention),
                    CHUNK,
                ),
                ("flow_hour", "hour", hour, CHUNK),
                (
                    "alerts",
                    "ts",
                    (hour as i128 * 1_000_000_000).clamp(i64::MIN as i128, i64::MAX as i128) as i64,
                    CHUNK,
                ),
            ],
        }
    }

    /// Deletes one chunk; `false` when the pass is done.
    pub fn step(&mut self, conn: &Connection) -> rusqlite::Result<bool> {
        while let Some(&(table, column, cutoff, chunk)) = self.work.first() {
            let sql = match table {
                // Tables with a rowid delete by it; the aggregates by their key.
                "event_rows" | "event_batches" | "alerts" => format!(
                    "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {column} < ?1 ORDER BY {column} LIMIT ?2)"
                ),
                _ => format!(
                    "DELETE FROM {table} WHERE ({column}, key_id) IN (SELECT {column}, key_id FROM {table} WHERE {column} < ?1 ORDER BY {column} LIMIT ?2)"
                ),
            };
            let n = conn.prepare_cached(&sql)?.execute(params![cutoff, chunk])?;
            if (n as i64) < chunk {
                self.work.remove(0);
            }
            if n > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Runs the whole pass (tests, and `netmon history` never: it is read-only).
    pub fn run(mut self, conn: &Connection) -> rusqlite::Result<()> {
        while self.step(conn)? {}
        Ok(())
    }
}
