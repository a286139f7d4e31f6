//! The configuration parser: any text gives a `Config` or a located error, never a panic;
//! and whatever it accepts builds the rule engine (which then takes events) and the scan
//! monitor without a panic: what passes `rules check` must run (issue 18, item 6).
#![no_main]

use libfuzzer_sys::fuzz_target;
use netmon::{
    event::{Connection, Direction, Endpoint, Event, EventBody, Family, ProcessInfo, Proto},
    rules::{Engine, NoResolver},
    scan::monitor::Monitor,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut cfg = match netmon::config::parse(text, std::path::Path::new("fuzz.toml")) {
        Ok(cfg) => cfg,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = netmon::rules::describe(&cfg.rules);
    let mut engine = Engine::new(&cfg.rules, Box::new(NoResolver));
    let mut out = Vec::new();
    // Events far apart and stepping back, so windows and cooldowns do arithmetic on them.
    for (i, secs) in [0i64, 1, 86_400 * 400, -86_400 * 400, i32::MAX as i64].into_iter().enumerate() {
        let c = Connection {
            proto: Proto::Tcp,
            family: Family::Ipv4,
            direction: Some(Direction::Outbound),
            src: Some(Endpoint::new("10.0.0.2".parse().unwrap(), 40000)),
            dst: Endpoint::new(format!("8.8.{i}.8").parse().unwrap(), 4444),
            process: Some(ProcessInfo::kernel(7, 7, "app".into(), 1000, 1000, 1)),
            backend: "fuzz".into(),
            netns: None,
            failed: false,
            bytes: None,
            existing: false,
        };
        let ev = Event {
            ts: chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap(),
            host: "fuzz".into(),
            body: EventBody::Connect(c),
        };
        engine.on_event(&ev, &mut out);
    }
    // Never read (or later write) a state file the input names.
    cfg.scan.state_file = "/nonexistent/netmon-fuzz/hosts.json".into();
    let _ = Monitor::new(&cfg.scan);
});
