//! What the eBPF programs log (`aya-log-ebpf`: map inserts that fail, ring-buffer
//! reservations that fail, sockets of unknown family, flows netmon did not see begin,
//! offsets that read as zero), forwarded by a thread of its own: to stderr, or as
//! [`KernelLog`] values on a bounded queue that the pipeline turns into `log` events
//! (`--events log`) and `netmon doctor --trace` prints. The thread never waits on that
//! queue: what does not fit is dropped and counted.
//!
//! aya-log 0.3.0 / aya-log-ebpf 0.2.0: the pair released against aya 0.14 / aya-ebpf
//! 0.2 (the aya set the workspace pins; aya-log 0.4 and aya-log-ebpf 0.3 need aya 0.15).
//!
//! Free when off: the programs test a global (`AYA_LOG_LEVEL`, in `.rodata`) before
//! any formatting or buffer work, and the loader writes it before the programs load,
//! so with `--ebpf-log off` (0) the verifier sees a constant and drops the logging
//! code altogether. The `AYA_LOGS` ring buffer then stays empty.
use std::{
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use aya::Ebpf;

use crate::{
    escape,
    event::log::{KernelLog, LogLevel, MAX_MESSAGE_CHARS, MAX_NAME_CHARS},
};

/// `--ebpf-log`: which of the programs' messages to forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EbpfLog {
    /// Nothing (the programs do not even format their messages).
    #[default]
    Off,
    /// Anomalies: failed map inserts, a full ring buffer, failed copies.
    Warn,
    /// Also what the programs skip: flows that began before netmon, unknown families,
    /// namespaces that read as zero.
    Debug,
}

impl EbpfLog {
    /// The value of the programs' `AYA_LOG_LEVEL` global (aya-log-common's `Level`:
    /// error 1, warn 2, info 3, debug 4; 0 disables every message).
    pub(super) fn kernel_level(self) -> u8 {
        match self {
            EbpfLog::Off => 0,
            EbpfLog::Warn => aya_log::Level::Warn as u8,
            EbpfLog::Debug => aya_log::Level::Debug as u8,
        }
    }
}

/// The name of the level global in the programs (`aya_log_ebpf`).
pub(super) const LEVEL_GLOBAL: &str = aya_log::LEVEL;

/// Where the forwarder sends the programs' messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogTo {
    /// One line each on stderr (`netmon run --ebpf-log`).
    #[default]
    Stderr,
    /// [`KernelLog`] values on a bounded queue ([`LogQueue`], taken with
    /// `Tracer::take_log_queue`): `--events log`, `netmon doctor --trace`.
    Queue,
}

/// Messages waiting between the forwarder thread and whoever turns them into events.
pub const QUEUE: usize = 4096;

/// The receiving end of [`LogTo::Queue`]: the messages, and how many were dropped
/// because the queue was full (the forwarder never waits: the kernel's `AYA_LOGS`
/// ring would fill behind it).
pub struct LogQueue {
    pub messages: tokio::sync::mpsc::Receiver<KernelLog>,
    pub dropped: Arc<AtomicU64>,
}

/// A record of aya-log as a `log` event's body, its strings bounded (they come from
/// the kernel; renderers escape them).
pub fn kernel_log(record: &log::Record<'_>) -> KernelLog {
    let level = match record.level() {
        log::Level::Error => LogLevel::Error,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Info => LogLevel::Info,
        log::Level::Debug => LogLevel::Debug,
        log::Level::Trace => LogLevel::Trace,
    };
    let message = record.args().to_string();
    KernelLog {
        level,
        message: escape::bounded(&message, MAX_MESSAGE_CHARS).into_owned(),
        target: escape::bounded(record.target(), MAX_NAME_CHARS).into_owned(),
        location: record.file().map(|f| {
            let at = match record.line() {
                Some(line) => format!("{f}:{line}"),
                None => f.to_owned(),
            };
            escape::bounded(&at, MAX_NAME_CHARS).into_owned()
        }),
    }
}

/// The stderr line of one message: bounded and escaped, so a record can neither
/// forge a line nor act on a terminal.
pub fn stderr_line(log: &KernelLog) -> String {
    format!(
        "netmon: ebpf {}: {}\n",
        log.level.as_str(),
        escape::for_terminal(&log.message)
    )
}

/// aya-log's records, each sent where [`LogTo`] says.
enum Destination {
    Stderr,
    Queue {
        tx: tokio::sync::mpsc::Sender<KernelLog>,
        dropped: Arc<AtomicU64>,
    },
}

impl log::Log for Destination {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let log = kernel_log(record);
        match self {
            Destination::Stderr => {
                let _ = std::io::stderr()
                    .lock()
                    .write_all(stderr_line(&log).as_bytes());
            }
            Destination::Queue { tx, dropped } => {
                // Never waits: a full queue (or a receiver gone) costs this message,
                // counted, and the thread goes on reading the kernel's ring.
                if tx.try_send(log).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn flush(&self) {}
}

/// The forwarding thread; stopping it (or dropping it) forwards what is left first.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// How often the thread reads the log ring buffer.
const POLL: Duration = Duration::from_millis(100);

impl Forwarder {
    /// Takes `AYA_LOGS` out of `ebpf` and forwards it until dropped; with
    /// [`LogTo::Queue`], also returns the queue's receiving end.
    pub(super) fn start(
        ebpf: &mut Ebpf,
        to: LogTo,
    ) -> Result<(Forwarder, Option<LogQueue>), String> {
        let (destination, queue) = match to {
            LogTo::Stderr => (Destination::Stderr, None),
            LogTo::Queue => {
                let (tx, messages) = tokio::sync::mpsc::channel(QUEUE);
                let dropped = Arc::new(AtomicU64::new(0));
                (
                    Destination::Queue {
                        tx,
                        dropped: dropped.clone(),
                    },
                    Some(LogQueue { messages, dropped }),
                )
            }
        };
        let mut logger = aya_log::EbpfLogger::init_with_logger(ebpf, destination)
            .map_err(|e| format!("cannot read the programs' log: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::Builder::new()
            .name("ebpf-log".into())
            .spawn(move || {
                loop {
                    logger.flush();
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    thread::sleep(POLL);
                }
            })
            .map_err(|e| format!("cannot start the eBPF log thread: {e}"))?;
        Ok((
            Forwarder {
                stop,
                thread: Some(thread),
            },
            queue,
        ))
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_disables_every_kernel_message() {
        assert_eq!(EbpfLog::Off.kernel_level(), 0);
        assert!(EbpfLog::Warn.kernel_level() < EbpfLog::Debug.kernel_level());
        assert_eq!(EbpfLog::default(), EbpfLog::Off);
    }

    fn record_to<T>(level: log::Level, message: &str, f: impl FnOnce(&log::Record<'_>) -> T) -> T {
        f(&log::Record::builder()
            .level(level)
            .target("netmon::tcp")
            .file(Some("netmon-ebpf/src/tcp.rs"))
            .line(Some(287))
            .args(format_args!("{message}"))
            .build())
    }

    #[test]
    fn records_become_log_bodies_bounded() {
        let log = record_to(log::Level::Debug, "port 1 → 2", kernel_log);
        assert_eq!(log.level, LogLevel::Debug);
        assert_eq!(log.message, "port 1 → 2");
        assert_eq!(log.target, "netmon::tcp");
        assert_eq!(log.location.as_deref(), Some("netmon-ebpf/src/tcp.rs:287"));
        let long = "x".repeat(10_000);
        let log = record_to(log::Level::Warn, &long, kernel_log);
        assert_eq!(log.level, LogLevel::Warn);
        assert_eq!(log.message.chars().count(), MAX_MESSAGE_CHARS);
        assert!(log.message.ends_with('…'));
    }

    #[test]
    fn stderr_lines_cannot_forge_a_line_or_act_on_a_terminal() {
        let log = record_to(
            log::Level::Warn,
            "a\nnetmon: forged\x1b[2J\u{202e}",
            kernel_log,
        );
        let line = stderr_line(&log);
        assert_eq!(
            line,
            "netmon: ebpf warn: a\\nnetmon: forged\\x1b[2J\\u{202e}\n"
        );
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = Destination::Queue {
            tx,
            dropped: dropped.clone(),
        };
        for i in 0..5 {
            record_to(log::Level::Debug, &format!("m{i}"), |r| {
                log::Log::log(&d, r)
            });
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        assert_eq!(rx.try_recv().unwrap().message, "m0");
        assert_eq!(rx.try_recv().unwrap().message, "m1");
        assert!(rx.try_recv().is_err());
        // A receiver gone costs the message too, counted, never a wait or a panic.
        drop(rx);
        record_to(log::Level::Debug, "late", |r| log::Log::log(&d, r));
        assert_eq!(dropped.load(Ordering::Relaxed), 4);
    }
}
