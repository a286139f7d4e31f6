//! The history's schema: numbered migration files, applied in order, each in its own
//! transaction, the version kept in `PRAGMA user_version`. A migration is never edited
//! once released; a change is a new file appended to [`MIGRATIONS`].
use rusqlite::Connection;

/// Every migration, in order: version N is `MIGRATIONS[N - 1]`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("migrations/0001_init.sql")),
    (
        "0002_events_type_index",
        include_str!("migrations/0002_events_type_index.sql"),
    ),
    (
        "0003_events_seq",
        include_str!("migrations/0003_events_seq.sql"),
    ),
    (
        "0004_event_batches",
        include_str!("migrations/0004_event_batches.sql"),
    ),
];

/// The schema version this netmon writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("schema version {found} is newer than this netmon knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// The schema version of an open database (0: empty).
pub fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Brings the database to [`LATEST`].
pub fn migrate(conn: &Connection) -> Result<(), MigrateError> {
    migrate_to(conn, LATEST)
}

/// Brings the database to `target` (tests start from older versions).
pub fn migrate_to(conn: &Connection, target: i64) -> Result<(), MigrateError> {
    let found = version(conn)?;
    if found > LATEST {
        return Err(MigrateError::TooNew {
            found,
            known: LATEST,
        });
    }
    for v in found + 1..=target.min(LATEST) {
        let (_, sql) = MIGRATIONS[(v - 1) as usize];
        // user_version inside the transaction: a crash leaves the old version and
        // none of the migration, never half of it.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {v};\nCOMMIT;"
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (name, _)) in MIGRATIONS.iter().enumerate() {
            assert!(
                name.starts_with(&format!("{:04}_", i + 1)),
                "{name} is migration {}",
                i + 1
            );
        }
    }

    #[test]
    fn every_version_migrates_to_the_latest_keeping_rows() {
        for start in 1..=LATEST {
            let conn = Connection::open_in_memory().unwrap();
            migrate_to(&conn, start).unwrap();
            assert_eq!(version(&conn).unwrap(), start);
            conn.execute(
                "INSERT INTO events (ts, type, dst_ip, dst_port) VALUES (1, 'connect', '10.0.0.1', 80)",
                [],
            )
            .unwrap();
            migrate(&conn).unwrap();
            assert_eq!(version(&conn).unwrap(), LATEST);
            let n: i64 = conn
                .query_row("SELECT count(*) FROM events WHERE dst_port = 80", [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(n, 1, "from version {start}");
            // Migrating again is a no-op.
            migrate(&conn).unwrap();
        }
        // The latest schema is the same whichever version a database started from.
        let fresh = Connection::open_in_memory().unwrap();
        migrate(&fresh).unwrap();
        let stepped = Connection::open_in_memory().unwrap();
        for v in 1..=LATEST {
            migrate_to(&stepped, v).unwrap();
        }
        let schema = |c: &Connection| -> Vec<String> {
            let mut s = c
                .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
                .unwrap();
            s.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(schema(&fresh), schema(&stepped));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", LATEST + 1)
            .unwrap();
        assert!(matches!(migrate(&conn), Err(MigrateError::TooNew { .. })));
    }
}
