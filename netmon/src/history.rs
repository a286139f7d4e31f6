//! The embedded history: a SQLite file (rusqlite, bundled SQLite) that keeps raw
//! events, per-minute and per-hour flow totals, alerts and the scanner's inventory, so
//! that "what did this host talk to last night?" has an answer after a restart.
//!
//! - `schema.rs`: the numbered migrations in `history/migrations/` (`PRAGMA user_version`).
//! - `writer.rs`: the ONE writer thread; it owns the read-write connection, is fed by a
//!   hub subscription (`pipeline::hub::Subscription`) and commits in batches.
//! - `rows.rs`, `batch.rs`: how an event is kept (connection events many to a row).
//! - `retention.rs`: pruning in small chunks between batches.
//! - `query.rs`: the read-only SQL behind the typed questions of `crate::query`.
//! - `replay.rs`: events read back by their number in the hub's sequence, for the
//!   API's streams that resume from further back than its memory.
//!
//! Nothing here knows of the kernel; the writer never blocks the pipeline (its queue is
//! the hub's, bounded, and what it misses is counted). See `docs/history.md`.
use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod aggregate;
mod batch;
pub mod import;
pub mod query;
pub mod replay;
pub mod retention;
mod rows;
pub mod schema;
pub mod writer;

pub use writer::{Counters, Writer};

/// Where `netmon run` keeps its history unless told otherwise.
pub const DEFAULT_PATH: &str = "/var/lib/netmon/netmon.db";

/// `[history]` in the configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Keep a history at all (`--no-history` turns it off too).
    pub enabled: bool,
    /// The database file (`--history PATH` overrides it).
    pub path: PathBuf,
    /// How long raw events are kept.
    pub raw_retention: Span,
    /// How long per-minute flow totals are kept.
    pub minute_retention: Span,
    /// How long per-hour flow totals, alerts and the inventory's history are kept.
    pub hour_retention: Span,
    /// How often old rows are looked for.
    pub prune_interval: Span,
    /// Events queued for the writer before it misses some (counted in `stats.history.dropped`).
    pub queue: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            // On: the aggregator keeps only the counters of flows it saw a summary of
            // (about 5 MB per 100,000 long-lived flows), so netmon stays within its
            // 50 MB budget with the history on (tests/tests/flows.rs).
            enabled: true,
            path: PathBuf::from(DEFAULT_PATH),
            raw_retention: Span::days(7),
            minute_retention: Span::days(30),
            hour_retention: Span::days(365),
            prune_interval: Span(Duration::from_secs(60)),
            // Bounded so that a writer behind costs a few MB, not tens: netmon stays
            // under 50 MB with 100,000 flows (tests/tests/flows.rs).
            queue: 8_192,
        }
    }
}

impl HistoryConfig {
    /// Checks what types alone cannot: the dotted key and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.path.as_os_str().is_empty() {
            return Err(("history.path".into(), "must name a file".into()));
        }
        for (key, span) in [
            ("history.raw_retention", self.raw_retention),
            ("history.minute_retention", self.minute_retention),
            ("history.hour_retention", self.hour_retention),
            ("history.prune_interval", self.prune_interval),
        ] {
            if span.0.is_zero() {
                return Err((key.into(), "must be longer than 0s".into()));
            }
        }
        if !(16..=16_777_216).contains(&self.queue) {
            return Err((
                "history.queue".into(),
                "must be between 16 and 16777216 events".into(),
            ));
        }
        Ok(())
    }
}

/// A length of time written `90s`, `15m`, `12h`, `7d` or `2w` (in files and flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub const fn days(n: u64) -> Span {
        Span(Duration::from_secs(n * 86_400))
    }

    pub fn parse(s: &str) -> Result<Span, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("`{s}` is not a length of time; expected e.g. `90s`, `15m`, `12h`, `7d`")
        })?;
        let unit_s = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => {
                return Err(format!(
                    "`{s}`: unknown unit `{unit}`; expected s, m, h, d or w (e.g. `7d`)"
                ));
            }
        };
        n.checked_mul(unit_s)
            .filter(|secs| *secs <= 100 * 365 * 86_400)
            .map(|secs| Span(Duration::from_secs(secs)))
            .ok_or_else(|| format!("`{s}` is longer than 100 years"))
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0.as_secs();
        for (unit, n) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3_600), ("m", 60)] {
            if s >= n && s.is_multiple_of(n) {
                return write!(f, "{}{unit}", s / n);
            }
        }
        write!(f, "{s}s")
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let s = String::deserialize(d)?;
        Span::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Why the history could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the history directory {dir}: {source}")]
    Directory { dir: PathBuf, source: io::Error },
    #[error("cannot create or write the history file {file}: {source}")]
    Create { file: PathBuf, source: io::Error },
    #[error("cannot open the history {file}: {source}")]
    Open {
        file: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the history {file} is not a netmon database this version understands (schema {found}, newest known {known}); use another --history file"
    )]
    Version {
        file: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "the history {file} is damaged ({why}); moved it aside to {moved} and started a new one"
    )]
    MovedAside {
        file: PathBuf,
        moved: PathBuf,
        why: String,
    },
}

/// Makes sure the history can live in `path`: creates its directory (0700) and the
/// file (0600) when missing, and opens the file for writing. What fails here is a
/// matter of permissions or of the file system, not of the database (for `netmon run`
/// to turn a default history off with one warning instead of retrying).
pub fn create(path: &Path) -> Result<(), Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::Directory {
                dir: dir.to_owned(),
                source,
            })?;
    }
    // Created here, 0600, so SQLite's own -wal and -shm files (which copy the
    // database's mode) are private too: the file holds every user's command lines.
    // Never truncated: an existing file is only opened, to see that it is writable.
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| Error::Create {
            file: path.to_owned(),
            source,
        })?;
    Ok(())
}

/// Opens (creating if needed: directory 0700, file 0600) the read-write connection of
/// the writer, migrated to the newest schema. A file that is not a database, or a
/// damaged one, is renamed `<file>.corrupt-<unix time>` (never overwritten) and a new
/// one is made; the returned warning says so.
pub fn open_writer(path: &Path) -> Result<(Connection, Option<Error>), Error> {
    create(path)?;
    match open_migrated(path) {
        Ok(conn) => Ok((conn, None)),
        Err(OpenFailure::Damaged(why)) => {
            let moved = move_aside(path).map_err(|source| Error::Create {
                file: path.to_owned(),
                source,
            })?;
            let (conn, _) = open_writer(path)?;
            Ok((
                conn,
                Some(Error::MovedAside {
                    file: path.to_owned(),
                    moved,
                    why,
                }),
            ))
        }
        Err(OpenFailure::Fatal(e)) => Err(e),
    }
}

enum OpenFailure {
    Damaged(String),
    Fatal(Error),
}

fn open_migrated(path: &Path) -> Result<Connection, OpenFailure> {
    let fatal = |source| {
        OpenFailure::Fatal(Error::Open {
            file: path.to_owned(),
            source,
        })
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fatal)?;
    let setup = (|| -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(2))?;
        // WAL: readers never block the writer nor it them. NORMAL: a commit is not
        // fsync'd (a power cut may lose the last commits) but a crash of netmon never
        // corrupts and loses nothing committed.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        // 512 KiB of page cache instead of SQLite's 2 MiB: netmon's whole budget is
        // 50 MB at 100,000 flows (tests/tests/flows.rs), and the writer touches the
        // tails of its indexes mostly (`bench history`: 158,000 events/s with it).
        conn.pragma_update(None, "cache_size", -512)?;
        Ok(())
    })();
    if let Err(e) = setup {
        return Err(classify(path, e));
    }
    match schema::migrate(&conn) {
        Ok(()) => Ok(conn),
        Err(schema::MigrateError::TooNew { found, known }) => {
            Err(OpenFailure::Fatal(Error::Version {
                file: path.to_owned(),
                found,
                known,
            }))
        }
        Err(schema::MigrateError::Sql(e)) => Err(classify(path, e)),
    }
}

/// A damaged or foreign file is moved aside; anything else (locked, read-only, disk
/// full) is reported and left alone.
fn classify(path: &Path, e: rusqlite::Error) -> OpenFailure {
    if is_damage(&e) {
        OpenFailure::Damaged(e.to_string())
    } else {
        OpenFailure::Fatal(Error::Open {
            file: path.to_owned(),
            source: e,
        })
    }
}

/// SQLite says the file is not a database or is damaged.
pub fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// Renames a damaged database (and its -wal and -shm files) out of the way.
pub fn move_aside(path: &Path) -> io::Result<PathBuf> {
    let stamp = chrono::Utc::now().timestamp();
    let mut target = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{}.corrupt-{stamp}-{n}", path.display()));
        n += 1;
    }
    fs::rename(path, &target)?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            let _ = fs::rename(&side, format!("{}{suffix}", target.display()));
        }
    }
    // Keep the moved copy as private as the original.
    let _ = fs::set_permissions(&target, fs::Permissions::from_mode(0o600));
    Ok(target)
}

/// A read-only connection for queries: works while `netmon run` writes (WAL), and for
/// any user who can read the file.
pub fn open_reader(path: &Path) -> Result<Connection, Error> {
    let open_err = |source| Error::Open {
        file: path.to_owned(),
        source,
    };
    if !path.exists() {
        return Err(Error::Open {
            file: path.to_owned(),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some("no such file (has `netmon run` written a history there?)".into()),
            ),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(open_err)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_err)?;
    if version == 0 || version > schema::LATEST {
        return Err(Error::Version {
            file: path.to_owned(),
            found: version,
            known: schema::LATEST,
        });
    }
    query::register_functions(&conn).map_err(open_err)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_print() {
        assert_eq!(Span::parse("7d").unwrap(), Span::days(7));
        assert_eq!(Span::parse("90s").unwrap().0, Duration::from_secs(90));
        assert_eq!(Span::parse("2w").unwrap().to_string(), "2w");
        assert_eq!(Span::parse("36h").unwrap().to_string(), "36h");
        assert!(Span::parse("7").unwrap_err().contains("unknown unit"));
        assert!(Span::parse("d").unwrap_err().contains("not a length"));
        assert!(Span::parse("99999999999d").is_err());
    }

    #[test]
    fn config_defaults_and_checks() {
        let c = HistoryConfig::default();
        assert!(c.enabled, "the history is on by default (issue 13)");
        assert_eq!(c.path, PathBuf::from(DEFAULT_PATH));
        assert_eq!(c.raw_retention, Span::days(7));
        assert_eq!(c.minute_retention, Span::days(30));
        assert_eq!(c.hour_retention, Span::days(365));
        assert!(c.validate().is_ok());
        let bad = HistoryConfig {
            raw_retention: Span(Duration::ZERO),
            ..HistoryConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "history.raw_retention");
    }

    #[test]
    fn a_new_file_is_private_and_a_garbage_file_is_moved_aside() {
        let dir = std::env::temp_dir().join(format!("netmon-history-open-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub/netmon.db");
        let (conn, warning) = open_writer(&path).unwrap();
        assert!(warning.is_none());
        drop(conn);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // Not a database: moved aside, never overwritten.
        fs::remove_file(format!("{}-wal", path.display())).ok();
        fs::remove_file(format!("{}-shm", path.display())).ok();
        fs::write(&path, vec![b'x'; 8192]).unwrap();
        let (_conn, warning) = open_writer(&path).unwrap();
        let Some(Error::MovedAside { moved, .. }) = warning else {
            panic!("expected a move aside, got {warning:?}");
        };
        assert_eq!(fs::read(&moved).unwrap(), vec![b'x'; 8192]);
        assert!(open_reader(&path).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_says_what_cannot_be_made_and_leaves_a_file_as_it_is() {
        let dir =
            std::env::temp_dir().join(format!("netmon-history-create-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // A directory that cannot be made (a file is in the way).
        let blocker = dir.join("plain-file");
        fs::write(&blocker, b"x").unwrap();
        let e = create(&blocker.join("sub/netmon.db")).unwrap_err();
        assert!(matches!(e, Error::Directory { .. }), "{e}");
        assert!(e.to_string().contains("plain-file"), "{e}");
        // An existing file is opened, never truncated.
        let file = dir.join("netmon.db");
        fs::write(&file, b"kept").unwrap();
        create(&file).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"kept");
        fs::remove_dir_all(&dir).unwrap();
    }
}
