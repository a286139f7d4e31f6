//! Target specifications: what the user typed (`10.0.0.1`, `::1`, `10.0.0.0/24`,
//! `10.0.0.1-20`, `10.0.0.1-10.0.0.9`, `10.0.1-2.1-254`, `db.example`) turned into
//! addresses, and the safety question of whether an address may be scanned at all.
//!
//! Parsing is pure; only `resolve` (hostnames) touches the system resolver. A range is
//! kept as its bounds (`Addrs`) and its members are produced one at a time, so a /12
//! costs what a single address costs until the scan reaches each member.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The most addresses one `netmon scan` expands to: a /12 of IPv4, or a /108 of IPv6.
pub const MAX_ADDRESSES: u64 = 1 << 20;

/// A target the user gave: an address range or a name still to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Addresses (a single address, a CIDR's hosts, a range), in order.
    Addrs(Addrs),
    /// A hostname; resolved at scan time.
    Name(String),
}

/// The addresses of one target, kept as bounds: `iter` yields them in order without
/// ever holding them all, `contains` answers membership in constant time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addrs {
    /// One address.
    One(IpAddr),
    /// A network's hosts (see [`net_hosts`] for the addresses left out).
    Net(IpNet),
    /// Every address from the first to the last, both included, of one family.
    Range(IpAddr, IpAddr),
    /// nmap-style octet ranges, each `(first, last)` included.
    Octets([(u8, u8); 4]),
}

impl Addrs {
    /// The members in order, produced one at a time.
    pub fn iter(&self) -> Box<dyn Iterator<Item = IpAddr> + Send + '_> {
        match *self {
            Addrs::One(ip) => Box::new(std::iter::once(ip)),
            Addrs::Net(IpNet::V4(n)) => Box::new(v4_hosts(n).map(IpAddr::V4)),
            Addrs::Net(IpNet::V6(n)) => Box::new(v6_hosts(n).map(IpAddr::V6)),
            Addrs::Range(IpAddr::V4(a), IpAddr::V4(b)) => {
                Box::new((u32::from(a)..=u32::from(b)).map(|x| IpAddr::V4(x.into())))
            }
            Addrs::Range(a, b) => {
                Box::new((u128_of(a)..=u128_of(b)).map(|x| IpAddr::V6(Ipv6Addr::from(x))))
            }
            Addrs::Octets(r) => Box::new((r[0].0..=r[0].1).flat_map(move |a| {
                (r[1].0..=r[1].1).flat_map(move |b| {
                    (r[2].0..=r[2].1).flat_map(move |c| {
                        (r[3].0..=r[3].1).map(move |d| IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
                    })
                })
            })),
        }
    }

    /// How many members `iter` yields.
    pub fn len(&self) -> u128 {
        match self {
            Addrs::One(_) => 1,
            Addrs::Net(n) => {
                let size = net_size(n);
                match n {
                    IpNet::V4(n) if n.prefix_len() < 31 => size - 2,
                    IpNet::V6(n) if n.prefix_len() <= 126 => size - 2,
                    _ => size,
                }
            }
            Addrs::Range(a, b) => u128_of(*b) - u128_of(*a) + 1,
            Addrs::Octets(r) => r.iter().map(|(a, b)| u128::from(b - a) + 1).product(),
        }
    }

    /// Never empty: every parsed target has at least one member.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `iter` yields `ip` (an IPv4-mapped IPv6 address is not its IPv4 address,
    /// as for `IpAddr`'s equality).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self, ip) {
            (Addrs::One(a), _) => a == ip,
            (Addrs::Net(IpNet::V4(n)), IpAddr::V4(v4)) => {
                n.contains(v4)
                    && (n.prefix_len() >= 31 || (*v4 != n.network() && *v4 != n.broadcast()))
            }
            (Addrs::Net(IpNet::V6(n)), IpAddr::V6(v6)) => {
                n.contains(v6)
                    && (n.prefix_len() > 126 || (*v6 != n.network() && *v6 != n.broadcast()))
            }
            (Addrs::Range(a, b), _) => {
                a.is_ipv4() == ip.is_ipv4() && (u128_of(*a)..=u128_of(*b)).contains(&u128_of(*ip))
            }
            (Addrs::Octets(r), IpAddr::V4(v4)) => v4
                .octets()
                .iter()
                .zip(r)
                .all(|(o, (a, b))| (a..=b).contains(&o)),
            _ => false,
        }
    }
}

fn u128_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Why a target token was refused. Every message names the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("invalid target `{token}`: {reason}")]
    Invalid { token: String, reason: String },
    #[error("target `{token}` is too large: {count} addresses (at most {MAX_ADDRESSES})")]
    TooLarge { token: String, count: u128 },
    #[error("cannot resolve `{token}`: {reason}")]
    Resolve { token: String, reason: String },
    #[error(
        "refusing to scan {addr} (from `{token}`): it is a public address; pass --allow-public if you are allowed to scan it"
    )]
    Public { token: String, addr: IpAddr },
    #[error("refusing to scan {addr} (from `{token}`): {reason}")]
    Unscannable {
        token: String,
        addr: IpAddr,
        reason: &'static str,
    },
}

fn invalid(token: &str, reason: impl Into<String>) -> TargetError {
    TargetError::Invalid {
        token: token.to_owned(),
        reason: reason.into(),
    }
}

/// Parses one target token.
pub fn parse(token: &str) -> Result<Target, TargetError> {
    let t = token.trim();
    if t.is_empty() {
        return Err(invalid(token, "empty target"));
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(Target::Addrs(Addrs::One(ip)));
    }
    if t.contains('/') {
        return parse_cidr(token, t);
    }
    if t.contains(':') {
        // IPv6 address range `a::1-a::9` (only whole-address ranges for IPv6).
        if let Some((a, b)) = t.split_once('-') {
            let (a, b) = (
                a.parse::<Ipv6Addr>()
                    .map_err(|_| invalid(token, format!("`{a}` is not an IPv6 address")))?,
                b.parse::<Ipv6Addr>()
                    .map_err(|_| invalid(token, format!("`{b}` is not an IPv6 address")))?,
            );
            return v6_range(token, a, b);
        }
        return Err(invalid(token, "not an IPv6 address"));
    }
    if t.chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '*')
        && t.contains('.')
    {
        if let Some((a, b)) = t.split_once('-')
            && let (Ok(a), Ok(b)) = (a.parse::<Ipv4Addr>(), b.parse::<Ipv4Addr>())
        {
            return v4_range(token, a, b);
        }
        if t.split('.').count() == 4 {
            return parse_octets(token, t);
        }
        if t.split('.').all(|p| p.chars().all(|c| c.is_ascii_digit())) {
            return Err(invalid(token, "not an IPv4 address (expected four octets)"));
        }
    }
    parse_name(token, t)
}

/// Parses every token, stopping at the first bad one.
pub fn parse_all<S: AsRef<str>>(tokens: &[S]) -> Result<Vec<(String, Target)>, TargetError> {
    tokens
        .iter()
        .map(|t| parse(t.as_ref()).map(|p| (t.as_ref().to_owned(), p)))
        .collect()
}

fn parse_cidr(token: &str, t: &str) -> Result<Target, TargetError> {
    let (addr, len) = t.split_once('/').expect("checked by caller");
    let len: u8 = len
        .parse()
        .map_err(|_| invalid(token, format!("prefix length `{len}` is not a number")))?;
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| invalid(token, format!("`{addr}` is not an IP address")))?;
    let net = IpNet::new(ip, len).map_err(|_| {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        invalid(token, format!("prefix length {len} is more than {max}"))
    })?;
    let count = net_size(&net);
    if count > MAX_ADDRESSES as u128 {
        return Err(TargetError::TooLarge {
            token: token.to_owned(),
            count,
        });
    }
    Ok(Target::Addrs(Addrs::Net(net)))
}

/// The addresses of a network. For IPv4 prefixes up to /30 (and IPv6 up to /126) the
/// network and broadcast addresses are left out, as no host answers there.
pub fn net_hosts(net: &IpNet) -> Vec<IpAddr> {
    match net {
        IpNet::V4(n) => v4_hosts(*n).map(IpAddr::V4).collect(),
        IpNet::V6(n) => v6_hosts(*n).map(IpAddr::V6).collect(),
    }
}

fn v4_hosts(n: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    // ipnet leaves out the network and broadcast addresses below /31, as wanted.
    n.hosts()
}

fn v6_hosts(n: Ipv6Net) -> impl Iterator<Item = Ipv6Addr> {
    // ipnet's IPv6 hosts are every address; as for IPv4, the first and last are left
    // out up to /126.
    let mut hosts = n.hosts();
    if n.prefix_len() <= 126 {
        hosts.next();
        hosts.next_back();
    }
    hosts
}

fn net_size(net: &IpNet) -> u128 {
    let bits = net.max_prefix_len() - net.prefix_len();
    if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    }
}

fn v4_range(token: &str, a: Ipv4Addr, b: Ipv4Addr) -> Result<Target, TargetError> {
    let (a, b) = (u32::from(a), u32::from(b));
    if a > b {
        return Err(invalid(token, "the range ends before it starts"));
    }
    let count = u128::from(b - a) + 1;
    if count > MAX_ADDRESSES as u128 {
        return Err(TargetError::TooLarge {
            token: token.into(),
            count,
        });
    }
    Ok(Target::Addrs(Addrs::Range(
        IpAddr::V4(a.into()),
        IpAddr::V4(b.into()),
    )))
}

fn v6_range(token: &str, a: Ipv6Addr, b: Ipv6Addr) -> Result<Target, TargetError> {
    let (a, b) = (u128::from(a), u128::from(b));
    if a > b {
        return Err(invalid(token, "the range ends before it starts"));
    }
    let count = (b - a).saturating_add(1);
    if count > MAX_ADDRESSES as u128 {
        return Err(TargetError::TooLarge {
            token: token.into(),
            count,
        });
    }
    Ok(Target::Addrs(Addrs::Range(
        IpAddr::V6(a.into()),
        IpAddr::V6(b.into()),
    )))
}

/// nmap-style octet ranges: `10.0.0.1-20`, `10.0.1-3.*`.
fn parse_octets(token: &str, t: &str) -> Result<Target, TargetError> {
    let mut ranges = [(0u8, 0u8); 4];
    for (i, part) in t.split('.').enumerate() {
        let octet = |s: &str| -> Result<u8, TargetError> {
            s.parse::<u8>()
                .map_err(|_| invalid(token, format!("octet `{s}` is not a number from 0 to 255")))
        };
        ranges[i] = if part == "*" {
            (0, 255)
        } else if let Some((a, b)) = part.split_once('-') {
            let (a, b) = (octet(a)?, octet(b)?);
            if a > b {
                return Err(invalid(
                    token,
                    format!("octet range `{part}` ends before it starts"),
                ));
            }
            (a, b)
        } else {
            let v = octet(part)?;
            (v, v)
        };
    }
    let count: u128 = ranges.iter().map(|(a, b)| u128::from(b - a) + 1).product();
    if count > MAX_ADDRESSES as u128 {
        return Err(TargetError::TooLarge {
            token: token.into(),
            count,
        });
    }
    Ok(Target::Addrs(Addrs::Octets(ranges)))
}

fn parse_name(token: &str, t: &str) -> Result<Target, TargetError> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name = t.strip_suffix('.').unwrap_or(t);
    if name.len() > 253 || !name.split('.').all(ok_label) {
        return Err(invalid(token, "not an IP address, CIDR, range or hostname"));
    }
    if name.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(invalid(token, "not an IPv4 address (expected four octets)"));
    }
    Ok(Target::Name(name.to_owned()))
}

/// Resolves a hostname with the system resolver (all its addresses, v4 and v6).
pub async fn resolve(name: &str) -> Result<Vec<IpAddr>, TargetError> {
    let addrs = tokio::net::lookup_host((name, 0))
        .await
        .map_err(|e| TargetError::Resolve {
            token: name.to_owned(),
            reason: e.to_string(),
        })?;
    let set: BTreeSet<IpAddr> = addrs.map(|a| a.ip()).collect();
    if set.is_empty() {
        return Err(TargetError::Resolve {
            token: name.into(),
            reason: "no addresses".into(),
        });
    }
    Ok(set.into_iter().collect())
}

/// Whether `ip` is a loopback, private, link-local or unique-local address: one that
/// `netmon scan` scans without `--allow-public` (defined in [`crate::addr`]).
pub fn is_private(ip: &IpAddr) -> bool {
    crate::addr::is_private(*ip)
}

/// Addresses nothing may be scanned at: unspecified, multicast, broadcast (an
/// IPv4-mapped IPv6 address is judged as the IPv4 address it is).
pub fn unscannable_reason(ip: &IpAddr) -> Option<&'static str> {
    match &ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("it is the unspecified address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("it is the broadcast address"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("it is a multicast address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("it is the unspecified address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("it is a multicast address"),
        _ => None,
    }
}

/// Checks one address against the public-target rule. A cloud metadata address
/// (`config::METADATA_ADDRS`) may only be scanned when the target names it alone.
pub fn check_allowed(token: &str, ip: IpAddr, allow_public: bool) -> Result<(), TargetError> {
    if let Some(reason) = unscannable_reason(&ip) {
        return Err(TargetError::Unscannable {
            token: token.into(),
            addr: ip,
            reason,
        });
    }
    if super::config::is_metadata(&ip) && token.parse::<IpAddr>() != Ok(ip) {
        return Err(TargetError::Unscannable {
            token: token.into(),
            addr: ip,
            reason: "it is a cloud metadata address (name it alone to scan it)",
        });
    }
    if !allow_public && !is_private(&ip) {
        return Err(TargetError::Public {
            token: token.into(),
            addr: ip,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(t: &str) -> Vec<String> {
        match parse(t).unwrap() {
            Target::Addrs(a) => {
                let v: Vec<String> = a.iter().map(|a| a.to_string()).collect();
                assert_eq!(v.len() as u128, a.len(), "{t}");
                v
            }
            Target::Name(n) => panic!("{t} parsed as the name {n}"),
        }
    }

    #[test]
    fn single_addresses_v4_and_v6() {
        assert_eq!(addrs("10.0.0.1"), ["10.0.0.1"]);
        assert_eq!(addrs("::1"), ["::1"]);
        assert_eq!(addrs("fd00::5"), ["fd00::5"]);
    }

    #[test]
    fn cidrs_skip_network_and_broadcast() {
        let a = addrs("10.1.2.0/24");
        assert_eq!(a.len(), 254);
        assert_eq!(a[0], "10.1.2.1");
        assert_eq!(a[253], "10.1.2.254");
        assert_eq!(addrs("10.1.2.4/31"), ["10.1.2.4", "10.1.2.5"]);
        assert_eq!(addrs("10.1.2.4/32"), ["10.1.2.4"]);
        assert_eq!(addrs("fd00::/126"), ["fd00::1", "fd00::2"]);
    }

    #[test]
    fn ranges() {
        assert_eq!(addrs("10.0.0.1-3"), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert_eq!(addrs("10.0.0.254-10.0.1.1").len(), 4);
        assert_eq!(addrs("10.0.1-2.1").len(), 2);
        assert_eq!(addrs("10.0.0.*").len(), 256);
        assert_eq!(addrs("fd00::1-fd00::3").len(), 3);
    }

    #[test]
    fn membership_agrees_with_the_members() {
        // Every address around each target: `contains` says yes exactly for what
        // `iter` yields (the scan's de-duplication across targets relies on it).
        for t in [
            "10.1.2.0/24",
            "10.1.2.4/31",
            "10.1.2.4/32",
            "10.1.2.250-10.1.3.5",
            "10.1.1-3.254-255",
            "10.1.2.7",
        ] {
            let Target::Addrs(a) = parse(t).unwrap() else {
                panic!("{t}")
            };
            let members: BTreeSet<IpAddr> = a.iter().collect();
            for x in u32::from(Ipv4Addr::new(10, 1, 0, 0))..u32::from(Ipv4Addr::new(10, 1, 5, 0)) {
                let ip = IpAddr::V4(x.into());
                assert_eq!(a.contains(&ip), members.contains(&ip), "{t}: {ip}");
            }
            let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 7).to_ipv6_mapped());
            assert!(!a.contains(&mapped), "{t}");
        }
        for t in ["fd00::/120", "fd00::/127", "fd00::fe-fd00::102"] {
            let Target::Addrs(a) = parse(t).unwrap() else {
                panic!("{t}")
            };
            let members: BTreeSet<IpAddr> = a.iter().collect();
            for x in 0u128..0x200 {
                let ip = IpAddr::V6(Ipv6Addr::from(0xfd00u128 << 112 | x));
                assert_eq!(a.contains(&ip), members.contains(&ip), "{t}: {ip}");
            }
        }
    }

    #[test]
    fn a_large_network_is_kept_as_its_bounds() {
        // A /12 (the largest accepted) parses to its prefix, not to a million entries.
        let t = parse("10.16.0.0/12").unwrap();
        assert_eq!(
            t,
            Target::Addrs(Addrs::Net("10.16.0.0/12".parse().unwrap()))
        );
        let Target::Addrs(a) = t else { unreachable!() };
        assert_eq!(a.len(), (1 << 20) - 2);
        let mut it = a.iter();
        assert_eq!(it.next(), Some("10.16.0.1".parse().unwrap()));
        assert_eq!(it.last(), Some("10.31.255.254".parse().unwrap()));
    }

    #[test]
    fn hostnames() {
        assert_eq!(
            parse("db-1.example").unwrap(),
            Target::Name("db-1.example".into())
        );
        assert_eq!(
            parse("localhost").unwrap(),
            Target::Name("localhost".into())
        );
    }

    #[test]
    fn errors_name_the_bad_token() {
        for bad in [
            "10.0.0.300",
            "10.0.0.0/33",
            "10.0.0.0/x",
            "10.0.0.9-1",
            "10.0.0",
            "fd00::/64",
            "not a host",
            "-x",
            "10.0.0.1-10.0.0.0",
            ":::",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{bad}`")), "{bad}: {err}");
        }
        assert!(matches!(
            parse("fd00::/64"),
            Err(TargetError::TooLarge { .. })
        ));
        assert!(parse("0.0.0.0/8").is_err());
    }

    #[test]
    fn public_addresses_need_permission() {
        for private in [
            "127.0.0.1",
            "10.1.1.1",
            "192.168.0.1",
            "172.31.0.1",
            "::1",
            "fd12::1",
            "fe80::1",
            "100.64.0.1",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(check_allowed(private, ip, false).is_ok(), "{private}");
        }
        let ip: IpAddr = "8.8.8.8".parse().unwrap();
        let err = check_allowed("8.8.8.8", ip, false).unwrap_err().to_string();
        assert!(err.contains("--allow-public"), "{err}");
        assert!(check_allowed("8.8.8.8", ip, true).is_ok());
        assert!(check_allowed("2001:db8::1", "2001:db8::1".parse().unwrap(), false).is_err());
        assert!(check_allowed("x", "224.0.0.1".parse().unwrap(), true).is_err());
        assert!(check_allowed("x", "0.0.0.0".parse().unwrap(), true).is_err());
        // IPv4-mapped IPv6 gets the same always-refused checks.
        for mapped in [
            "::ffff:224.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
        ] {
            let ip: IpAddr = mapped.parse().unwrap();
            assert!(check_allowed(mapped, ip, true).is_err(), "{mapped}");
        }
        // A metadata address: only when named alone.
        let md: IpAddr = "169.254.169.254".parse().unwrap();
        assert!(check_allowed("169.254.169.254", md, false).is_ok());
        let err = check_allowed("169.254.0.0/16", md, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("metadata"), "{err}");
        let md6: IpAddr = "fd00:ec2::254".parse().unwrap();
        assert!(check_allowed("fd00:ec2::/120", md6, false).is_err());
    }
}
