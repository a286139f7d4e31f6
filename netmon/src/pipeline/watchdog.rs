//! Makes SIGINT/SIGTERM stop netmon even when the reader of its output stopped reading.
//!
//! The sink writes to stdout synchronously; when the pipe is full because the reader
//! stalled, it sits in `write`, its queue fills, and the event loop waits for room in
//! it (the sink gets every event) and never sees the signal. The orderly stop
//! (drain, final `stats`, detach) cannot happen then, so after a stop signal a thread of
//! its own watches the output: while bytes keep going out, it waits; when none went
//! out for [`GRACE`], it says so on stderr and ends the process. Ending the process
//! closes every program and link descriptor, so the kernel detaches everything.
use std::{
    io::{self, Write},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

/// How long a stop may wait without a byte of output going out.
pub const GRACE: Duration = Duration::from_secs(5);

/// Exit status when the watchdog ends netmon (the final `stats` line is missing).
const EXIT_STALLED: i32 = 1;

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
static BYTES_OUT: AtomicU64 = AtomicU64::new(0);

/// A writer that counts the bytes its inner writer accepted (the watchdog's measure of
/// progress).
pub struct Counted<W>(pub W);

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        BYTES_OUT.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Registers the signal actions (beside tokio's: both run) and starts the thread.
pub fn install() -> io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the action only stores to an atomic, which is async-signal-safe.
        unsafe {
            signal_hook_registry::register(signal, || {
                STOP_REQUESTED.store(true, Ordering::Relaxed);
            })
        }?;
    }
    thread::Builder::new()
        .name("stop-watchdog".into())
        .spawn(watch)?;
    Ok(())
}

fn watch() {
    while !STOP_REQUESTED.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(100));
    }
    let mut last = BYTES_OUT.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(100));
        let now = BYTES_OUT.load(Ordering::Relaxed);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= GRACE {
            break;
        }
    }
    let msg = format!(
        "netmon: stopping without the final stats: the reader of the output has taken nothing for {} s\n",
        GRACE.as_secs()
    );
    // SAFETY: writing a buffer we own to stderr, then ending the process at once:
    // `exit` would try to flush stdout, whose lock the blocked writer holds.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(EXIT_STALLED);
    }
}
