//! The small value types rules and the configuration share: CIDR blocks, port ranges,
//! and per-rule allowlists. Each parses from the text a person writes in the config
//! file, and its parse error says what was expected.
use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::ProcessInfo;

/// An address block: `10.0.0.0/8`, `fd00::/8`, or a single address (an [`IpNet`] that
/// also parses a bare address and says what was expected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl Cidr {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        // v4-mapped IPv6 is compared as IPv4.
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let expected = || {
            format!(
                "`{s}` is not a CIDR block: expected e.g. `10.0.0.0/8`, `fd00::/8` or an address"
            )
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| expected())?;
        let net = match prefix {
            Some(p) => {
                let p: u8 = p.trim().parse().map_err(|_| expected())?;
                IpNet::new(addr, p).map_err(|_| expected())?
            }
            None => IpNet::from(addr),
        };
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Unlike `IpNet`'s own, always with the prefix (`10.0.0.1/32`).
        write!(f, "{}/{}", self.0.addr(), self.0.prefix_len())
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A port or an inclusive range of ports: `443`, or `"8000-8100"` in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const fn one(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<PortRange, String> {
        let expected = || {
            format!("`{s}` is not a port: expected a port like 443 or a range like \"8000-8100\"")
        };
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let first: u16 = a.trim().parse().map_err(|_| expected())?;
        let last: u16 = b.trim().parse().map_err(|_| expected())?;
        if first > last {
            return Err(format!(
                "`{s}`: a range must go from the lower port to the higher"
            ));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PortRange, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port (0-65535) or a range like \"8000-8100\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortRange, E> {
                u16::try_from(v)
                    .map(PortRange::one)
                    .map_err(|_| E::custom(format!("{v} is not a port: expected 0-65535")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortRange, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u16(self.first)
        } else {
            s.collect_str(self)
        }
    }
}

pub fn any_port(ranges: &[PortRange], port: u16) -> bool {
    ranges.iter().any(|r| r.contains(port))
}

pub fn any_cidr(cidrs: &[Cidr], ip: &IpAddr) -> bool {
    cidrs.iter().any(|c| c.contains(ip))
}

/// What the rules may ask about a process beyond what events carry: its executable and
/// its user's name. Live runs ask the process-context cache (`crate::process`); replay
/// and tests answer from nothing or from a table.
pub trait ProcessResolver {
    /// Path of the executable of `pid`, if known.
    fn exe(&mut self, pid: u32) -> Option<String>;
    /// Name of the user `uid`, if known.
    fn user(&mut self, uid: u32) -> Option<String>;
}

/// Knows nothing: matchers on exe and user names then match only numeric uids.
pub struct NoResolver;

impl ProcessResolver for NoResolver {
    fn exe(&mut self, _pid: u32) -> Option<String> {
        None
    }
    fn user(&mut self, _uid: u32) -> Option<String> {
        None
    }
}

/// The file name of an executable path, without the ` (deleted)` the kernel appends
/// to an unlinked one: `/usr/bin/dig` → `dig`.
pub fn exe_name(exe: &str) -> &str {
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(exe);
    exe.rsplit('/').next().unwrap_or(exe)
}

/// Whether `process` matches any of `names` (its `comm`, or the file name of its
/// executable), `exes` (executable path) or `users` (user name or numeric uid). Empty
/// lists match nothing.
///
/// `comm` is the name of the thread that acted, which in a multithreaded program is
/// often not the program's (`dig` connects from a thread named `isc-net-0000`), so a
/// name also matches the executable's file name: the event's enriched `exe`, or what
/// `resolver` reads. Both are picked by whoever runs the program (`prctl(PR_SET_NAME)`,
/// a copy renamed `tor`), so an entry of `names` with a `/` in it is a full executable
/// path instead, and matches that path only ([`EntryForm`]).
pub fn process_matches(
    process: Option<&ProcessInfo>,
    names: &[String],
    exes: &[String],
    users: &[String],
    resolver: &mut dyn ProcessResolver,
) -> bool {
    let Some(p) = process else {
        return false;
    };
    let is_name = |n: &&String| EntryForm::of(n) == EntryForm::Name;
    if names.iter().filter(is_name).any(|n| *n == p.comm) {
        return true;
    }
    let mut exe = p.detail.exe.clone();
    if !names.is_empty() || !exes.is_empty() {
        exe = exe.or_else(|| resolver.exe(p.pid));
    }
    if let Some(exe) = &exe {
        let name = exe_name(exe);
        if names
            .iter()
            .any(|n| if is_name(&n) { n == name } else { n == exe })
        {
            return true;
        }
        if exes.contains(exe) {
            return true;
        }
    }
    if !users.is_empty() {
        let uid = p.uid.to_string();
        if users.contains(&uid) {
            return true;
        }
        if let Some(name) = resolver.user(p.uid)
            && users.contains(&name)
        {
            return true;
        }
    }
    false
}

/// How an `allow.process` entry is matched, by its text: with a `/` it is an
/// executable's full path (only root can put a program there), without one a name that
/// matches the `comm` or the executable's file name (any user can give a program any
/// name). `netmon rules list` shows which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryForm {
    Name,
    Path,
}

impl EntryForm {
    pub fn of(entry: &str) -> EntryForm {
        if entry.contains('/') {
            EntryForm::Path
        } else {
            EntryForm::Name
        }
    }

    /// As `netmon rules list` shows it after the entry.
    pub fn label(self) -> &'static str {
        match self {
            EntryForm::Name => "name: comm or executable file name, chosen by whoever runs it",
            EntryForm::Path => "path: the executable's full path",
        }
    }
}

/// Per-rule allowlist: an event that matches any entry does not trigger the rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Allow {
    /// Process names (`comm`, at most 15 characters as the kernel keeps them, or the
    /// executable's file name), or full executable paths (an entry with a `/`).
    pub process: Vec<String>,
    /// Executable paths (`/usr/sbin/sshd`).
    pub exe: Vec<String>,
    /// User names or numeric uids.
    pub users: Vec<String>,
    /// Remote (or, for listeners, local) addresses.
    pub cidrs: Vec<Cidr>,
    /// Service ports.
    pub ports: Vec<PortRange>,
}

impl Allow {
    pub fn is_empty(&self) -> bool {
        *self == Allow::default()
    }

    /// Whether the allowlist covers this process, address or port.
    pub fn allows(
        &self,
        process: Option<&ProcessInfo>,
        ip: Option<&IpAddr>,
        port: Option<u16>,
        resolver: &mut dyn ProcessResolver,
    ) -> bool {
        if let Some(ip) = ip
            && any_cidr(&self.cidrs, ip)
        {
            return true;
        }
        if let Some(port) = port
            && any_port(&self.ports, port)
        {
            return true;
        }
        process_matches(process, &self.process, &self.exe, &self.users, resolver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_binary_does_not_pass_a_path_entry() {
        // A user's copy of anything, named `tor`, with its comm set to `tor`.
        let fake = ProcessInfo {
            detail: std::sync::Arc::new(crate::event::ProcessDetail {
                exe: Some("/home/mallory/tor".into()),
                ..Default::default()
            }),
            ..ProcessInfo::kernel(9, 9, "tor".into(), 1000, 1000, 1)
        };
        let real = ProcessInfo {
            detail: std::sync::Arc::new(crate::event::ProcessDetail {
                exe: Some("/usr/bin/tor".into()),
                ..Default::default()
            }),
            ..ProcessInfo::kernel(8, 8, "tor".into(), 107, 107, 1)
        };
        let (path, name) = (vec!["/usr/bin/tor".to_owned()], vec!["tor".to_owned()]);
        assert!(!process_matches(
            Some(&fake),
            &path,
            &[],
            &[],
            &mut NoResolver
        ));
        assert!(process_matches(
            Some(&real),
            &path,
            &[],
            &[],
            &mut NoResolver
        ));
        // A name is what it always was: the attacker's pick passes it.
        assert!(process_matches(
            Some(&fake),
            &name,
            &[],
            &[],
            &mut NoResolver
        ));
        assert_eq!(EntryForm::of("/usr/bin/tor"), EntryForm::Path);
        assert_eq!(EntryForm::of("tor"), EntryForm::Name);
    }

    #[test]
    fn cidrs_match_their_block_only() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(&"10.9.8.7".parse().unwrap()));
        assert!(!c.contains(&"11.0.0.1".parse().unwrap()));
        assert!(c.contains(&"::ffff:10.1.1.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(&"1.2.3.4".parse().unwrap()));
        let one: Cidr = "fd00::1".parse().unwrap();
        assert_eq!(one.0.prefix_len(), 128);
        assert!(one.contains(&"fd00::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
    }

    struct Exes;
    impl ProcessResolver for Exes {
        fn exe(&mut self, pid: u32) -> Option<String> {
            (pid == 7).then(|| "/usr/sbin/named".into())
        }
        fn user(&mut self, _uid: u32) -> Option<String> {
            None
        }
    }

    #[test]
    fn process_names_match_the_comm_or_the_executable_name() {
        let names = vec!["dig".to_owned()];
        // `dig` connects from a thread named `isc-net-0000`.
        let mut thread = ProcessInfo::kernel(42, 43, "isc-net-0000".into(), 0, 0, 0);
        assert!(!process_matches(
            Some(&thread),
            &names,
            &[],
            &[],
            &mut NoResolver
        ));
        thread.detail = std::sync::Arc::new(crate::event::ProcessDetail {
            exe: Some("/usr/bin/dig".into()),
            ..Default::default()
        });
        assert!(process_matches(
            Some(&thread),
            &names,
            &[],
            &[],
            &mut NoResolver
        ));
        assert!(process_matches(
            Some(&thread),
            &[],
            &["/usr/bin/dig".to_owned()],
            &[],
            &mut NoResolver
        ));
        // Only the whole file name counts, not a part of the path.
        let bin = vec!["bin".to_owned(), "usr".to_owned(), "di".to_owned()];
        assert!(!process_matches(
            Some(&thread),
            &bin,
            &[],
            &[],
            &mut NoResolver
        ));
        // Without enriched details the resolver is asked.
        let named = ProcessInfo::kernel(7, 8, "isc-loop-0001".into(), 0, 0, 0);
        assert!(process_matches(
            Some(&named),
            &["named".to_owned()],
            &[],
            &[],
            &mut Exes
        ));
        assert!(!process_matches(
            Some(&named),
            &["dig".to_owned()],
            &[],
            &[],
            &mut Exes
        ));
        assert_eq!(exe_name("/usr/bin/nc.openbsd (deleted)"), "nc.openbsd");
        assert_eq!(exe_name("busybox"), "busybox");
    }

    #[test]
    fn port_ranges_parse_and_match() {
        let r: PortRange = "8000-8100".parse().unwrap();
        assert!(r.contains(8050) && !r.contains(8101));
        assert!("9-1".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
        assert_eq!(PortRange::one(22).to_string(), "22");
    }
}
