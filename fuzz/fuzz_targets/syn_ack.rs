//! TCP replies as the SYN scan's raw socket receives them (anyone on the path can send
//! one): the IPv4/IPv6 header, the TCP header and its options parsed, then fingerprinted
//! against the built-in signatures; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netmon::scan::{fingerprint, reply};

fuzz_target!(|data: &[u8]| {
    let (sets, _) = fingerprint::load(None, false).expect("built-in signatures");
    let hop = data.first().copied();
    for r in [
        reply::parse_v4(data),
        reply::parse_v6(data, hop, hop),
    ]
    .into_iter()
    .flatten()
    {
        let _ = fingerprint::observed(&r);
        let _ = fingerprint::best(&sets, &r);
    }
    let _ = netmon::scan::tcpopt::parse(data);
});
