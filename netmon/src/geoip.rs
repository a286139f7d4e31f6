//! Offline geolocation and ASN of remote addresses: MaxMind-format `.mmdb` databases
//! (GeoLite2, DB-IP Lite, IPinfo Lite: country/city and ASN) named in `[geoip]`, and,
//! when none is configured, Debian's `tor-geoipdb` country files if they are present.
//! No network call, ever. Loopback, private, link-local, CGNAT, ULA and multicast
//! addresses are marked as such and never looked up. A database that is missing,
//! unreadable or corrupt gives one warning and no enrichment; it never stops a caller.
//! Lookups are cached per address (a report asks about the same peers many times).
use std::{
    cell::RefCell,
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod tor;
pub mod writer;

/// Debian's `tor-geoipdb` files, read when no `.mmdb` is configured.
pub const TOR_GEOIP: &str = "/usr/share/tor/geoip";
pub const TOR_GEOIP6: &str = "/usr/share/tor/geoip6";

/// `[geoip]` of the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoipConfig {
    /// A country or city database (`GeoLite2-City.mmdb`, `dbip-city-lite.mmdb`, …).
    pub city: Option<PathBuf>,
    /// An ASN database (`GeoLite2-ASN.mmdb`, …).
    pub asn: Option<PathBuf>,
    /// Do not fall back to Debian's `tor-geoipdb` country files.
    pub no_tor_fallback: bool,
}

/// What is known of one address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geo {
    /// `public`, or why the address was not looked up: `loopback`, `private`,
    /// `link-local`, `cgnat`, `multicast`, `unspecified`, `ula`.
    pub scope: String,
    /// ISO 3166-1 alpha-2 code.
    pub country: Option<String>,
    pub city: Option<String>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
}

/// A database in use, as a report names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseInfo {
    pub path: String,
    /// The database's own type (`GeoLite2-City`), or `tor-geoipdb`.
    pub kind: String,
    pub built: Option<DateTime<Utc>>,
    /// The licence's attribution line.
    pub attribution: String,
}

/// Why an address is not looked up, or `None` for a public unicast address.
pub fn non_public_scope(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("cgnat")
            } else if v4.is_multicast() || v4.is_broadcast() {
                Some("multicast")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("ula")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else {
                None
            }
        }
    }
}

/// One `.mmdb` record's fields netmon reads (GeoIP2/GeoLite2 layout; DB-IP and IPinfo
/// Lite use the same names, IPinfo's `country_code`/`asn` strings too).
#[derive(Deserialize, Default)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<Country<'a>>,
    #[serde(borrow, default)]
    city: Option<Names<'a>>,
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    #[serde(borrow, default)]
    autonomous_system_organization: Option<&'a str>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
    #[serde(borrow, default)]
    asn: Option<&'a str>,
    #[serde(borrow, default)]
    as_name: Option<&'a str>,
}

#[derive(Deserialize, Default)]
struct Country<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize, Default)]
struct Names<'a> {
    #[serde(borrow, default)]
    names: Option<HashMap<&'a str, &'a str>>,
}

type Mmdb = maxminddb::Reader<Vec<u8>>;

/// The open databases and the cache. Not `Sync` (the cache is a `RefCell`): one per
/// report or per thread.
#[derive(Default)]
pub struct GeoIp {
    city: Option<Mmdb>,
    asn: Option<Mmdb>,
    tor: Option<tor::TorDb>,
    databases: Vec<DatabaseInfo>,
    cache: RefCell<HashMap<IpAddr, Geo>>,
}

impl GeoIp {
    /// Opens what `cfg` names (and the tor files when it names nothing and they exist);
    /// every problem is one warning in the second value, never an error.
    pub fn open(cfg: &GeoipConfig) -> (GeoIp, Vec<String>) {
        Self::open_with(cfg, Path::new(TOR_GEOIP), Path::new(TOR_GEOIP6))
    }

    pub fn open_with(cfg: &GeoipConfig, tor4: &Path, tor6: &Path) -> (GeoIp, Vec<String>) {
        let mut g = GeoIp::default();
        let mut warnings = Vec::new();
        for (path, slot) in [(&cfg.city, &mut g.city), (&cfg.asn, &mut g.asn)] {
            let Some(path) = path else { continue };
            match open_mmdb(path) {
                Ok((db, info)) => {
                    *slot = Some(db);
                    g.databases.push(info);
                }
                Err(e) => warnings.push(format!(
                    "geoip: {e}; addresses are shown without it (fix or remove the path in [geoip])"
                )),
            }
        }
        if cfg.city.is_none() && cfg.asn.is_none() && !cfg.no_tor_fallback && tor4.exists() {
            match tor::TorDb::open(tor4, tor6) {
                Ok(db) => {
                    g.databases.push(db.info());
                    g.tor = Some(db);
                }
                Err(e) => warnings.push(format!(
                    "geoip: {}: {e}; addresses are shown without countries",
                    tor4.display()
                )),
            }
        }
        (g, warnings)
    }

    /// The databases in use (empty: no enrichment).
    pub fn databases(&self) -> &[DatabaseInfo] {
        &self.databases
    }

    pub fn lookup(&self, ip: IpAddr) -> Geo {
        let ip = ip.to_canonical();
        if let Some(scope) = non_public_scope(ip) {
            return Geo {
                scope: scope.into(),
                ..Geo::default()
            };
        }
        if let Some(g) = self.cache.borrow().get(&ip) {
            return g.clone();
        }
        let mut geo = Geo {
            scope: "public".into(),
            ..Geo::default()
        };
        for db in [&self.city, &self.asn].into_iter().flatten() {
            // A record that does not decode is no information, not an error.
            if let Ok(r) = db.lookup(ip)
                && let Ok(Some(rec)) = r.decode::<Record>()
            {
                merge(&mut geo, &rec);
            }
        }
        if geo.country.is_none()
            && let Some(t) = &self.tor
        {
            geo.country = t.country(ip).map(str::to_owned);
        }
        self.cache.borrow_mut().insert(ip, geo.clone());
        geo
    }
}

fn merge(geo: &mut Geo, rec: &Record) {
    let country = rec
        .country
        .as_ref()
        .and_then(|c| c.iso_code)
        .or(rec.country_code);
    if geo.country.is_none() {
        geo.country = country.map(str::to_owned);
    }
    if geo.city.is_none() {
        geo.city = rec
            .city
            .as_ref()
            .and_then(|c| c.names.as_ref())
            .and_then(|n| n.get("en"))
            .map(|s| (*s).to_owned());
    }
    if geo.asn.is_none() {
        geo.asn = rec.autonomous_system_number.or_else(|| {
            rec.asn
                .and_then(|a| a.trim_start_matches("AS").parse().ok())
        });
    }
    if geo.as_org.is_none() {
        geo.as_org = rec
            .autonomous_system_organization
            .or(rec.as_name)
            .map(str::to_owned);
    }
}

fn open_mmdb(path: &Path) -> Result<(Mmdb, DatabaseInfo), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let db = maxminddb::Reader::from_source(bytes)
        .map_err(|e| format!("{} is not a MaxMind DB file: {e}", path.display()))?;
    // A few lookups catch a truncated or damaged search tree now rather than per row.
    for ip in [
        IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    ] {
        if let Err(e) = db.lookup(ip) {
            if db.metadata().ip_version == 4 && ip.is_ipv6() {
                continue;
            }
            return Err(format!("{} is damaged: {e}", path.display()));
        }
    }
    let m = db.metadata();
    let kind = m.database_type.clone();
    let built = DateTime::from_timestamp(m.build_epoch.min(i64::MAX as u64) as i64, 0);
    let attribution = attribution(&kind, m.description.get("en").map(String::as_str));
    let info = DatabaseInfo {
        path: path.display().to_string(),
        kind,
        built,
        attribution,
    };
    Ok((db, info))
}

/// The attribution line each vendor's licence asks for.
fn attribution(kind: &str, description: Option<&str>) -> String {
    let k = kind.to_ascii_lowercase();
    if k.contains("geolite") {
        "This product includes GeoLite2 data created by MaxMind, available from https://www.maxmind.com (CC BY-SA 4.0).".into()
    } else if k.contains("dbip") || k.contains("db-ip") {
        "IP Geolocation by DB-IP (https://db-ip.com), CC BY 4.0.".into()
    } else if k.contains("ipinfo") {
        "IP address data powered by IPinfo (https://ipinfo.io), CC BY-SA 4.0.".into()
    } else {
        description
            .unwrap_or("(no attribution in the database's metadata)")
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn db(dir: &Path) -> PathBuf {
        let mut w = writer::Writer::new("GeoLite2-City", 1_764_000_000);
        w.insert(
            "203.0.113.0/24".parse().unwrap(),
            json!({"country": {"iso_code": "JP"}, "city": {"names": {"en": "Tokyo"}}}),
        );
        w.insert(
            "2001:db8:1::/48".parse().unwrap(),
            json!({"country": {"iso_code": "DE"}}),
        );
        let p = dir.join("city.mmdb");
        std::fs::write(&p, w.build()).unwrap();
        p
    }

    fn asn(dir: &Path) -> PathBuf {
        let mut w = writer::Writer::new("GeoLite2-ASN", 1_764_000_000);
        w.insert(
            "203.0.113.0/25".parse().unwrap(),
            json!({"autonomous_system_number": 64500, "autonomous_system_organization": "Example <Net>"}),
        );
        let p = dir.join("asn.mmdb");
        std::fs::write(&p, w.build()).unwrap();
        p
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netmon-geoip-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_built_database_answers_and_private_addresses_are_never_looked_up() {
        let d = tmp("answers");
        let cfg = GeoipConfig {
            city: Some(db(&d)),
            asn: Some(asn(&d)),
            no_tor_fallback: true,
        };
        let (g, warnings) = GeoIp::open(&cfg);
        assert!(warnings.is_empty(), "{warnings:?}");
        let a = g.lookup("203.0.113.7".parse().unwrap());
        assert_eq!(a.scope, "public");
        assert_eq!(a.country.as_deref(), Some("JP"));
        assert_eq!(a.city.as_deref(), Some("Tokyo"));
        assert_eq!(a.asn, Some(64500));
        assert_eq!(a.as_org.as_deref(), Some("Example <Net>"));
        let b = g.lookup("203.0.113.200".parse().unwrap());
        assert_eq!((b.country.as_deref(), b.asn), (Some("JP"), None));
        let c = g.lookup("2001:db8:1::5".parse().unwrap());
        assert_eq!(c.country.as_deref(), Some("DE"));
        // IPv4-mapped IPv6 (dual-stack sockets) is the IPv4 address.
        let m = g.lookup("::ffff:203.0.113.7".parse().unwrap());
        assert_eq!(m.country.as_deref(), Some("JP"));
        assert_eq!(g.lookup("198.51.100.1".parse().unwrap()).country, None);
        for (ip, scope) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("192.168.0.1", "private"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "cgnat"),
            ("::1", "loopback"),
            ("fd00::1", "ula"),
        ] {
            let g = g.lookup(ip.parse().unwrap());
            assert_eq!(g.scope, scope, "{ip}");
            assert_eq!(g.country, None);
        }
        assert_eq!(g.databases().len(), 2);
        assert_eq!(g.databases()[0].kind, "GeoLite2-City");
        assert!(g.databases()[0].attribution.contains("MaxMind"));
        assert_eq!(g.databases()[0].built.unwrap().timestamp(), 1_764_000_000);
    }

    #[test]
    fn missing_or_corrupt_databases_are_one_warning_each() {
        let d = tmp("corrupt");
        let bad = d.join("bad.mmdb");
        std::fs::write(&bad, b"not a database at all").unwrap();
        let cfg = GeoipConfig {
            city: Some(d.join("missing.mmdb")),
            asn: Some(bad),
            no_tor_fallback: false,
        };
        let (g, warnings) = GeoIp::open(&cfg);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("missing.mmdb"), "{warnings:?}");
        assert!(warnings[1].contains("not a MaxMind DB"), "{warnings:?}");
        assert!(g.databases().is_empty());
        assert_eq!(g.lookup("203.0.113.7".parse().unwrap()).country, None);
    }

    #[test]
    fn tor_files_are_the_fallback() {
        let d = tmp("tor");
        let v4 = d.join("geoip");
        let v6 = d.join("geoip6");
        std::fs::write(
            &v4,
            "# Generated: Thu, 25 Jun 2026 04:33:59 GMT\n# Vendor:    IPFire Project\n# License:   CC BY-SA 4.0\n15726992,15726999,??\n3405803776,3405804031,AU\n",
        )
        .unwrap();
        std::fs::write(
            &v6,
            "2001:db8::,2001:db8:ffff:ffff:ffff:ffff:ffff:ffff,NL\n",
        )
        .unwrap();
        let (g, warnings) = GeoIp::open_with(&GeoipConfig::default(), &v4, &v6);
        assert!(warnings.is_empty(), "{warnings:?}");
        // 3405803776 = 203.0.113.0
        assert_eq!(
            g.lookup("203.0.113.9".parse().unwrap()).country.as_deref(),
            Some("AU")
        );
        assert_eq!(
            g.lookup("2001:db8::9".parse().unwrap()).country.as_deref(),
            Some("NL")
        );
        assert_eq!(g.lookup("203.0.114.1".parse().unwrap()).country, None);
        assert_eq!(g.databases()[0].kind, "tor-geoipdb");
        assert!(
            g.databases()[0]
                .attribution
                .contains("IPFire Project (CC BY-SA 4.0)")
        );
        assert_eq!(
            g.databases()[0].built.unwrap().to_rfc3339(),
            "2026-06-25T04:33:59+00:00"
        );
    }
}
