//! What a user types to `netmon scan` and `[scan]`: targets, port specs and durations
//! give a value or an error, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netmon::scan::{config, ports, target};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = target::parse(text);
    let tokens: Vec<&str> = text.split_whitespace().take(16).collect();
    let _ = target::parse_all(&tokens);
    let _ = ports::parse(text);
    let _ = config::parse_ports_setting(text);
    let _ = config::parse_duration(text);
});
