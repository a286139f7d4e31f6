//! The API's bearer token: made at first start into a 0600 file (directory 0700),
//! read back when the file changes (`netmon token --rotate` works on a running agent),
//! compared in constant time (`subtle`). Also counts failed attempts per client
//! address and says how long to hold the next 401 back, so guessing gets slow.
//!
//! Owns no sockets: the router asks [`Auth::check`] and [`Failures::penalty`].
use std::{
    collections::HashMap,
    fs,
    io::{self, Read as _, Write as _},
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use subtle::ConstantTimeEq as _;

/// The default token file.
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/netmon/api.token";
/// Random bytes in a token (printed as hex: 64 characters).
const TOKEN_BYTES: usize = 32;
/// Longest token file netmon reads (a hand-written token may be long, not huge).
const MAX_TOKEN_LEN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token file {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write the API token file {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "the API token file {0} is empty or too long; remove it (a new token is made) or write one line of at least 16 characters"
    )]
    Bad(PathBuf),
}

/// A fresh random token, hex.
pub fn generate() -> io::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The token in `path`, made (0600, its directory 0700) when the file does not exist.
pub fn load_or_create(path: &Path) -> Result<String, TokenError> {
    match read(path) {
        Err(TokenError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let token = generate().map_err(|source| TokenError::Write {
                path: path.to_owned(),
                source,
            })?;
            write(path, &token, false)?;
            Ok(token)
        }
        other => other,
    }
}

/// The token in `path` (first line, trimmed).
pub fn read(path: &Path) -> Result<String, TokenError> {
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_LEN as u64 + 1).read_to_string(&mut text))
        .map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < 16 || text.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Bad(path.to_owned()));
    }
    Ok(token.to_owned())
}

/// Writes `token` into `path` (0600), atomically when `replace` (a temporary file
/// renamed over the old one), else only when the file does not exist yet.
pub fn write(path: &Path, token: &str, replace: bool) -> Result<(), TokenError> {
    let err = |source| TokenError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let target = if replace {
        path.with_extension("token.tmp")
    } else {
        path.to_owned()
    };
    if replace {
        let _ = fs::remove_file(&target);
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(err)?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(err)?;
    if replace {
        fs::rename(&target, path).map_err(err)?;
    }
    Ok(())
}

/// Constant-time equality of a presented token and the real one.
pub fn matches(presented: &[u8], token: &[u8]) -> bool {
    presented.ct_eq(token).into()
}

/// The token the API checks against, re-read when its file changes.
pub struct Auth {
    path: PathBuf,
    current: Mutex<Current>,
}

struct Current {
    token: String,
    mtime: Option<SystemTime>,
    ino: u64,
    checked: Instant,
}

/// How often the token file is looked at for a rotation.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

fn stamp(path: &Path) -> (Option<SystemTime>, u64) {
    fs::metadata(path)
        .map(|m| (m.modified().ok(), m.ino()))
        .unwrap_or((None, 0))
}

impl Auth {
    pub fn new(path: PathBuf, token: String) -> Auth {
        let (mtime, ino) = stamp(&path);
        Auth {
            path,
            current: Mutex::new(Current {
                token,
                mtime,
                ino,
                checked: Instant::now(),
            }),
        }
    }

    /// Whether the `Authorization` header value is `Bearer <the token>`.
    pub fn check(&self, header: Option<&[u8]>) -> bool {
        let Some(presented) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.checked.elapsed() >= RELOAD_EVERY {
            cur.checked = Instant::now();
            let (mtime, ino) = stamp(&self.path);
            if (mtime, ino) != (cur.mtime, cur.ino)
                && let Ok(token) = read(&self.path)
            {
                cur.token = token;
                cur.mtime = mtime;
                cur.ino = ino;
            }
        }
        matches(presented.trim_ascii(), cur.token.as_bytes())
    }
}

/// Failed attempts per client address (bounded: the oldest are forgotten).
#[derive(Default)]
pub struct Failures {
    by_addr: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Addresses remembered at most.
const MAX_ADDRS: usize = 4096;
/// Failures forgotten after this long without another.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Failures allowed before answers slow down.
const FREE_FAILURES: u32 = 3;
/// Longest a 401 is held back.
const MAX_PENALTY: Duration = Duration::from_secs(2);

impl Failures {
    /// Counts a failure from `addr`; how long to wait before answering it.
    pub fn fail(&self, addr: IpAddr) -> Duration {
        let mut m = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if m.len() >= MAX_ADDRS {
            m.retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
            if m.len() >= MAX_ADDRS {
                m.clear();
            }
        }
        let e = m.entry(addr).or_insert((0, now));
        if now.duration_since(e.1) >= FORGET_AFTER {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = now;
        penalty(e.0)
    }

    /// A success from `addr` clears its count.
    pub fn succeed(&self, addr: IpAddr) {
        let mut m = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&addr);
    }
}

/// The wait after the `n`th failure in a row: none for the first few, then 100 ms
/// more each time, up to [`MAX_PENALTY`].
pub fn penalty(n: u32) -> Duration {
    let over = n.saturating_sub(FREE_FAILURES);
    (Duration::from_millis(100) * over).min(MAX_PENALTY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netmon-auth-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn token_is_made_once_private_and_then_read_back() {
        let d = tmp("make");
        let p = d.join("sub/api.token");
        let t = load_or_create(&p).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(load_or_create(&p).unwrap(), t);
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(p.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        let t2 = generate().unwrap();
        write(&p, &t2, true).unwrap();
        assert_eq!(read(&p).unwrap(), t2);
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn short_token_file_is_refused() {
        let d = tmp("short");
        fs::create_dir_all(&d).unwrap();
        let p = d.join("t");
        fs::write(&p, "abc\n").unwrap();
        assert!(matches!(read(&p), Err(TokenError::Bad(_))));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn only_the_bearer_token_passes() {
        let auth = Auth::new(PathBuf::from("/nonexistent"), "0123456789abcdef".into());
        assert!(auth.check(Some(b"Bearer 0123456789abcdef")));
        assert!(!auth.check(Some(b"Bearer 0123456789abcdeF")));
        assert!(!auth.check(Some(b"Bearer 0123456789abcde")));
        assert!(!auth.check(Some(b"Basic 0123456789abcdef")));
        assert!(!auth.check(None));
    }

    #[test]
    fn failures_slow_down_and_success_clears() {
        let f = Failures::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let waits: Vec<_> = (0..6).map(|_| f.fail(a)).collect();
        assert_eq!(waits[0], Duration::ZERO);
        assert!(waits[5] > waits[4] && waits[4] > Duration::ZERO);
        f.succeed(a);
        assert_eq!(f.fail(a), Duration::ZERO);
        assert_eq!(penalty(1000), MAX_PENALTY);
    }
}
