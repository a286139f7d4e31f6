//! What kind of address an IP is, defined once: the blocks that are *private* (this host
//! and the networks it sits on: loopback, RFC 1918, link-local, CGNAT, IPv6 ULA) and
//! those that name no single host (unspecified, broadcast, multicast). Everything else is
//! *external*: a public unicast address.
//!
//! `netmon scan` scans private addresses without `--allow-public`; `netmon snapshot`
//! counts external peers; EXTERNAL_CONNECTIONS treats [`INTERNAL_BLOCKS`] as not external
//! unless `internal_cidrs` says otherwise. Pure: no I/O.
use std::{net::IpAddr, sync::LazyLock};

use ipnet::IpNet;

/// Loopback, private, link-local and CGNAT/ULA blocks, IPv4 then IPv6.
pub const PRIVATE_BLOCKS: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    // Shared address space (carrier-grade NAT, RFC 6598).
    "100.64.0.0/10",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];

/// Blocks that are no single host's address: multicast, broadcast, unspecified.
pub const NON_HOST_BLOCKS: &[&str] = &[
    "224.0.0.0/4",
    "255.255.255.255/32",
    "0.0.0.0/32",
    "::/128",
    "ff00::/8",
];

/// Every block that is not external, in the order `netmon rules list` shows
/// EXTERNAL_CONNECTIONS' default `internal_cidrs`.
pub const INTERNAL_BLOCKS: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "0.0.0.0/32",
    "::1/128",
    "::/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

fn parsed(blocks: &[&str]) -> Vec<IpNet> {
    blocks
        .iter()
        .map(|b| b.parse().expect("a built-in block is a CIDR"))
        .collect()
}

static PRIVATE: LazyLock<Vec<IpNet>> = LazyLock::new(|| parsed(PRIVATE_BLOCKS));
static INTERNAL: LazyLock<Vec<IpNet>> = LazyLock::new(|| parsed(INTERNAL_BLOCKS));

/// Whether `ip` is loopback, private, link-local, CGNAT or unique-local (an IPv4-mapped
/// IPv6 address counts as its IPv4 address).
pub fn is_private(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    PRIVATE.iter().any(|n| n.contains(&ip))
}

/// Whether `ip` is public unicast: neither private nor one of [`NON_HOST_BLOCKS`].
pub fn is_external(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    !INTERNAL.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_is_private_plus_non_host_blocks() {
        let mut both: Vec<&str> = PRIVATE_BLOCKS
            .iter()
            .chain(NON_HOST_BLOCKS)
            .copied()
            .collect();
        let mut internal = INTERNAL_BLOCKS.to_vec();
        both.sort_unstable();
        internal.sort_unstable();
        assert_eq!(both, internal);
    }

    #[test]
    fn private_and_external() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.255.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_private(ip), "{ip}");
            assert!(!is_external(ip), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_private(ip), "{ip}");
            assert!(is_external(ip), "{ip}");
        }
        // Not a host: neither private nor external.
        for ip in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "ff02::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_private(ip), "{ip}");
            assert!(!is_external(ip), "{ip}");
        }
    }
}
