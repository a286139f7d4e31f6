//! Ring-buffer records as the kernel side hands them over (any bytes, any length, any
//! kind): an event or a decode error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netmon::clock::BootClock;

fuzz_target!(|data: &[u8]| {
    let clock = BootClock::from_offset_ns(1_700_000_000_000_000_000);
    if let Ok(ev) = netmon::decode::decode(data, &clock, &"fuzz".into()) {
        let _ = serde_json::to_string(&ev);
    }
});
