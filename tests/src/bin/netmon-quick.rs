//! A process that lives about a millisecond, for the process-table tests: optionally
//! renames itself (`prctl(PR_SET_NAME)`), connects to a TCP address, and exits at once
//! (`_exit`, no clean-up), before any `/proc` read could catch it.
//!
//! `netmon-quick ADDR [NAME]`
use std::net::TcpStream;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(addr) = args.first() else {
        eprintln!("usage: netmon-quick ADDR [NAME]");
        std::process::exit(2);
    };
    if let Some(name) = args.get(1) {
        let mut buf = [0u8; 16];
        let n = name.len().min(15);
        buf[..n].copy_from_slice(&name.as_bytes()[..n]);
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
    }
    let code = match TcpStream::connect(addr.as_str()) {
        Ok(s) => {
            std::mem::forget(s);
            0
        }
        Err(_) => 1,
    };
    // SAFETY: ends the process now, as a dropper would.
    unsafe { libc::_exit(code) }
}
