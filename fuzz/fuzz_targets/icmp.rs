//! ICMP and ICMPv6 replies as the scanner's raw socket receives them (anyone on the path
//! can send one): parsed or ignored, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for v6 in [false, true] {
        let _ = netmon::scan::net::parse_icmp(v6, data);
    }
});
