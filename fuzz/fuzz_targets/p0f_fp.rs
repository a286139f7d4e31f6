//! p0f signature files (`--p0f-fp`: a file netmon did not write): parsed within their
//! bounds, bad lines counted, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let f = netmon::scan::fingerprint::p0f::parse(&text);
    assert!(f.sigs.len() <= netmon::scan::fingerprint::p0f::MAX_SIGNATURES);
});
