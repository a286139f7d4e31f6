//! The configuration parser: any text gives a `Config` or a located error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = netmon::config::parse(text, std::path::Path::new("fuzz.toml")) {
        let _ = e.to_string();
    }
});
