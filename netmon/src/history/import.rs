//! The one-time import of the scanner's old JSON state file (`scan.state_file`,
//! `hosts.json`) into the history's `hosts` and `ports` tables. Reads the file through
//! the scanner's own loader and never writes it; `meta.hosts_json_imported` records the
//! import, so a later run (or a file that changed since) is never imported again.
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::scan::monitor::load_state;

/// The `meta` key that records the import.
pub const IMPORTED: &str = "hosts_json_imported";

/// Imports `path` unless an import was already done or the file does not exist;
/// returns the hosts imported (`None`: nothing to do). Rows the history already has
/// (from the live scanner) win over the file's.
pub fn hosts_json(conn: &mut Connection, path: &Path) -> Result<Option<usize>, String> {
    let done: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [IMPORTED], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| e.to_string())?;
    if done.is_some() || !path.exists() {
        return Ok(None);
    }
    let inventory = load_state(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let sql = |e: rusqlite::Error| e.to_string();
    let tx = conn.transaction().map_err(sql)?;
    let mut n = 0;
    for h in inventory.hosts.values() {
        let state = match h.state {
            crate::scan::HostState::Up => "up",
            crate::scan::HostState::Down => "down",
        };
        n += tx
            .execute(
                "INSERT INTO hosts (ip, state, mac, name, first_seen, last_seen, last_change) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (ip) DO NOTHING",
                params![
                    h.addr.to_string(),
                    state,
                    h.mac,
                    h.name,
                    h.first_seen.timestamp(),
                    h.last_seen.map(|t| t.timestamp()),
                    h.last_change.timestamp()
                ],
            )
            .map_err(sql)?;
        for p in h.ports.values() {
            let proto = match p.proto {
                crate::event::Proto::Tcp => "tcp",
                crate::event::Proto::Udp => "udp",
            };
            let state = p.state.as_str();
            tx.execute(
                "INSERT INTO ports (ip, proto, port, state, service, version, first_seen, last_change) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (ip, proto, port) DO NOTHING",
                params![
                    h.addr.to_string(),
                    proto,
                    p.port,
                    state,
                    p.service,
                    p.version,
                    p.first_seen.timestamp(),
                    p.last_change.timestamp()
                ],
            )
            .map_err(sql)?;
        }
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)",
        params![
            IMPORTED,
            format!("{} at {}", path.display(), chrono::Utc::now().to_rfc3339())
        ],
    )
    .map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(Some(n))
}
