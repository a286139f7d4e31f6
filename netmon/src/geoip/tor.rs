//! Debian's `tor-geoipdb` country files: `/usr/share/tor/geoip` (lines `FROM,TO,CC`
//! with IPv4 addresses as integers) and `geoip6` (`FROM,TO,CC` with IPv6 addresses),
//! `#` comments. Country only; ranges sorted for a binary search. Malformed lines are
//! skipped and counted; a file with no usable line is an error.
use std::{
    net::{IpAddr, Ipv6Addr},
    path::Path,
};

use chrono::{DateTime, Utc};

use super::DatabaseInfo;

pub struct TorDb {
    v4: Vec<(u32, u32, [u8; 2])>,
    v6: Vec<(u128, u128, [u8; 2])>,
    path: String,
    built: Option<DateTime<Utc>>,
    /// From the header's `Vendor:` and `License:` lines.
    vendor: Option<String>,
    license: Option<String>,
}

fn cc(s: &str) -> Option<[u8; 2]> {
    let b = s.trim().as_bytes();
    (b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic))
        .then(|| [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()])
}

impl TorDb {
    pub fn open(v4: &Path, v6: &Path) -> Result<TorDb, String> {
        let text = std::fs::read_to_string(v4).map_err(|e| e.to_string())?;
        let header = |key: &str| {
            text.lines()
                .take_while(|l| l.starts_with('#'))
                .find_map(|l| l.trim_start_matches('#').trim().strip_prefix(key))
                .map(|v| v.trim().to_owned())
        };
        // `# Generated: Thu, 25 Jun 2026 04:33:59 GMT`; else the file's time.
        let built = header("Generated:")
            .and_then(|g| DateTime::parse_from_rfc2822(&g.replace("GMT", "+0000")).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| {
                std::fs::metadata(v4)
                    .and_then(|m| m.modified())
                    .ok()
                    .map(DateTime::<Utc>::from)
            });
        let mut db = TorDb {
            v4: Vec::new(),
            v6: Vec::new(),
            path: v4.display().to_string(),
            built,
            vendor: header("Vendor:"),
            license: header("License:"),
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut f = line.split(',');
            if let (Some(a), Some(b), Some(c)) = (f.next(), f.next(), f.next())
                && let (Ok(a), Ok(b), Some(c)) = (a.trim().parse(), b.trim().parse(), cc(c))
            {
                db.v4.push((a, b, c));
            }
        }
        // The IPv6 file is optional (older packages had none).
        if let Ok(text) = std::fs::read_to_string(v6) {
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let mut f = line.split(',');
                if let (Some(a), Some(b), Some(c)) = (f.next(), f.next(), f.next())
                    && let (Ok(a), Ok(b), Some(c)) = (
                        a.trim().parse::<Ipv6Addr>(),
                        b.trim().parse::<Ipv6Addr>(),
                        cc(c),
                    )
                {
                    db.v6.push((a.into(), b.into(), c));
                }
            }
        }
        if db.v4.is_empty() && db.v6.is_empty() {
            return Err("no `FROM,TO,CC` line in it".into());
        }
        db.v4.sort_unstable();
        db.v6.sort_unstable();
        Ok(db)
    }

    pub fn info(&self) -> DatabaseInfo {
        DatabaseInfo {
            path: self.path.clone(),
            kind: "tor-geoipdb".into(),
            built: self.built,
            attribution: format!(
                "Country data from Debian's tor-geoipdb{}{}.",
                self.vendor
                    .as_ref()
                    .map_or(String::new(), |v| format!(", by {v}")),
                self.license
                    .as_ref()
                    .map_or(String::new(), |l| format!(" ({l})"))
            ),
        }
    }

    pub fn country(&self, ip: IpAddr) -> Option<&str> {
        fn find<T: Ord + Copy>(v: &[(T, T, [u8; 2])], x: T) -> Option<&[u8; 2]> {
            let i = v.partition_point(|r| r.0 <= x).checked_sub(1)?;
            (x <= v[i].1).then_some(&v[i].2)
        }
        let c = match ip.to_canonical() {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }?;
        std::str::from_utf8(c).ok()
    }
}
