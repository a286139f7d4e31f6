//! What netmon may still do once it is running: after its programs are attached and
//! the sockets that were already open are read, `netmon run` keeps only the
//! capabilities that reading `/proc`, entering other network namespaces for TCP
//! counters (and the scanner's raw sockets) need, and sets `no_new_privs`, so code
//! that parses packets, banners and other processes' names runs with less power: it
//! can no longer load programs, change the network, override file modes, load
//! modules or gain anything through exec.
//!
//! Start-up needs more (see docs/security.md): `CAP_BPF` and `CAP_PERFMON` to load and
//! attach the programs, `CAP_NET_ADMIN` for the cgroup programs, `CAP_DAC_READ_SEARCH`
//! for tracefs and `/proc/<pid>/fd`, `CAP_SYS_PTRACE` for process context,
//! `CAP_SYS_ADMIN` to mount tracefs when it is not mounted and to read the sockets of
//! other network namespaces.
//! Afterwards the maps and links are used through file descriptors netmon already
//! holds, which needs no capability; closing them at exit detaches everything.
//!
//! The choice of what to keep is pure ([`kept_after_start`]); [`drop_after_start`] is
//! the thin edge that applies it.
use caps::{CapSet, Capability, CapsHashSet};
use thiserror::Error;

/// Capabilities a running netmon still uses.
pub fn kept_after_start(scanner: bool) -> CapsHashSet {
    let mut keep = CapsHashSet::from([
        // /proc/<pid>/exe of every process: ptrace read access.
        Capability::CAP_SYS_PTRACE,
        // setns() into other network namespaces: the flow table refreshes TCP byte
        // counters there with sock_diag (`cli/run/tracker.rs`).
        Capability::CAP_SYS_ADMIN,
    ]);
    if scanner {
        // SYN scan, ICMP echo and traceroute open raw sockets as they go.
        keep.insert(Capability::CAP_NET_RAW);
    }
    keep
}

/// What [`drop_after_start`] left in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Capabilities still permitted (and effective).
    pub kept: Vec<Capability>,
    /// Whether the bounding set was cut too (needs `CAP_SETPCAP`, which a root start
    /// has and a start with ambient capabilities usually does not; `no_new_privs`
    /// stops a regain through exec either way).
    pub bounding_cut: bool,
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("cannot change the {set} capability set: {source}")]
    Caps {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
}

/// Sets `no_new_privs` and reduces this process (every thread started later
/// inherits it) to `keep` ∩ what it has: permitted and effective become that set,
/// inheritable and ambient are emptied, and the bounding set is cut when allowed.
///
/// Capabilities belong to a thread: call this while the process has one thread, after
/// the last privileged step and before any other thread starts (threads started later
/// inherit the reduced sets; one started earlier would keep everything). The test
/// `tests/tests/privileges.rs` checks every thread of a running netmon.
pub fn drop_after_start(keep: &CapsHashSet) -> Result<Dropped, Error> {
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let caps_err = |set| move |source| Error::Caps { set, source };
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err("permitted"))?;
    let kept: CapsHashSet = permitted.intersection(keep).copied().collect();
    let bounding_cut = permitted.contains(&Capability::CAP_SETPCAP);
    if bounding_cut {
        for cap in caps::all().difference(&kept) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(caps_err("bounding"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("inheritable"))?;
    caps::set(None, CapSet::Effective, &kept).map_err(caps_err("effective"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_err("permitted"))?;
    let mut kept: Vec<Capability> = kept.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(Dropped { kept, bounding_cut })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_proc_and_netns_access_always_and_raw_sockets_only_for_the_scanner() {
        let always = [Capability::CAP_SYS_PTRACE, Capability::CAP_SYS_ADMIN];
        assert_eq!(kept_after_start(false), CapsHashSet::from(always));
        let mut scanning = CapsHashSet::from(always);
        scanning.insert(Capability::CAP_NET_RAW);
        assert_eq!(kept_after_start(true), scanning);
        // Nothing that loads programs, changes the network or overrides file modes.
        for cap in [
            Capability::CAP_BPF,
            Capability::CAP_PERFMON,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_DAC_OVERRIDE,
            Capability::CAP_SETUID,
        ] {
            assert!(!kept_after_start(true).contains(&cap), "{cap}");
        }
    }
}
