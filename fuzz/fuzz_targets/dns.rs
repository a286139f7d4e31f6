//! The DNS path from kernel record to `dns` event: record decoding, payload splitting
//! (UDP and TCP), message parsing and query/response matching must never panic,
//! whatever the bytes and whatever the lengths claim.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netmon::{
    clock::BootClock,
    dns::{Packet, Tracker, decode_packet, parse_payload},
    event::Proto,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let proto = if selector & 1 == 0 { Proto::Udp } else { Proto::Tcp };
    // The wire may claim more than was captured.
    let claimed = payload.len() + (selector as usize >> 1) * 7;
    let _ = parse_payload(proto, payload, claimed);
    // Raw bytes as a kernel record.
    let clock = BootClock::from_offset_ns(0);
    let _ = decode_packet(data, &clock);
    // Through the tracker, as a query leaving and as a response arriving.
    let mut tracker = Tracker::new();
    let mut out = Vec::new();
    for egress in [true, false] {
        let p = Packet {
            ts: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            proto,
            src: "127.0.0.1:40000".parse().unwrap(),
            dst: "127.0.0.1:53".parse().unwrap(),
            egress,
            socket_cookie: 1,
            process: None,
            payload_len: claimed as u32,
            payload: payload.to_vec(),
        };
        tracker.on_packet(&p, &mut out);
    }
});
