//! Service identification from what a scanned host answers (any bytes, any length), for
//! every probe, and the printable excerpt of a banner: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netmon::scan::service::{self, Probe};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, banner)) = data.split_first() else {
        return;
    };
    let port = [21u16, 22, 25, 80, 443, 3306, 5432, 6379, 11211, 8080][sel as usize % 10];
    for probe in [
        Probe::Greeting,
        Probe::Http,
        Probe::Tls,
        Probe::Redis,
        Probe::Postgres,
        Probe::Memcached,
    ] {
        if let Some(info) = service::identify(probe, port, banner) {
            let _ = format!("{info:?}");
        }
    }
    let _ = service::excerpt(banner);
    let _ = service::parse_mysql_greeting(banner);
});
