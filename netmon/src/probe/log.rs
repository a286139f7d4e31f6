//! What the eBPF programs log (`aya-log-ebpf`: map inserts that fail, ring-buffer
//! reservations that fail, sockets of unknown family, flows netmon did not see begin,
//! offsets that read as zero), forwarded to stderr by a thread of its own.
//!
//! Free when off: the programs test a global (`AYA_LOG_LEVEL`, in `.rodata`) before
//! any formatting or buffer work, and the loader writes it before the programs load,
//! so with `--ebpf-log off` (0) the verifier sees a constant and drops the logging
//! code altogether. The `AYA_LOGS` ring buffer then stays empty.
use std::{
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use aya::Ebpf;

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

/// Prints each record as one line on stderr (or stdout, for `netmon doctor --trace`).
struct Lines {
    stdout: bool,
}

impl log::Log for Lines {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!(
            "netmon: ebpf {}: {}\n",
            record.level().as_str().to_ascii_lowercase(),
            record.args()
        );
        let _ = if self.stdout {
            std::io::stdout().lock().write_all(line.as_bytes())
        } else {
            std::io::stderr().lock().write_all(line.as_bytes())
        };
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
    /// Takes `AYA_LOGS` out of `ebpf` and forwards it (to stdout when `stdout`, else
    /// stderr) until dropped.
    pub(super) fn start(ebpf: &mut Ebpf, stdout: bool) -> Result<Forwarder, String> {
        let mut logger = aya_log::EbpfLogger::init_with_logger(ebpf, Lines { stdout })
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
        Ok(Forwarder {
            stop,
            thread: Some(thread),
        })
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
}
