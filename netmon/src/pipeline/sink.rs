//! The sink: the hub's consumer that renders every event (`--format json|text`) to
//! stdout or the `--output` file, on a thread of its own.
//!
//! Its guarantees are those `netmon run` always had: it gets every event (it subscribes
//! losslessly, so a stalled reader of the output backs up into the ring buffer, where
//! the kernel counts what it cannot hand over), output is flushed whenever the queue
//! runs dry (a pipe sees events within milliseconds), a broken pipe ends the run
//! quietly ([`crate::output::OutputClosed`]) and any other write error ends it with one line. Bytes
//! that go out are counted for the stop watchdog (`watchdog.rs`).
//!
//! An `--output` file holds users' activity: it is created private (0600), a symbolic
//! link in its place is refused, and SIGHUP ([`request_reopen`]) reopens it between two
//! events, as logrotate expects (rename, then HUP: the old file keeps every line
//! written before, the new one gets every line after).
use std::{
    fs::File,
    io::{self, Write},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    thread::{self, JoinHandle},
};

use anyhow::Result;
use tokio::sync::mpsc::error::TryRecvError;

use super::watchdog::Counted;
use crate::output::{Format, Sink, written};

/// Events the sink's queue holds before the hub waits for it.
pub const QUEUE: usize = 4096;

/// Set by SIGHUP, taken by the sink before its next event.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Asks the sink to reopen its `--output` file before the next event (SIGHUP). Without
/// `--output` it does nothing.
pub fn request_reopen() {
    REOPEN.store(true, Ordering::Relaxed);
}

/// Where events go, and how to open it again after a rotation.
pub struct Output {
    sink: Sink,
    path: Option<PathBuf>,
}

/// Opens the output: `path` appended to, or stdout. Done before anything is attached,
/// so a bad path fails with nothing to undo.
pub fn open(format: Format, path: Option<&Path>) -> Result<Output> {
    let out: Box<dyn Write + Send> = match path {
        Some(path) => {
            let file = open_file(path)?;
            warn_if_shared(path, &file);
            Box::new(Counted(file))
        }
        None => Box::new(Counted(io::stdout())),
    };
    Ok(Output {
        sink: Sink::new(format, out),
        path: path.map(Path::to_path_buf),
    })
}

/// `path` for appending: created 0600, never through a symbolic link (someone who can
/// write the directory must not be able to point netmon's output at another file).
fn open_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                anyhow::anyhow!(
                    "--output {} is a symbolic link: netmon does not follow links for its output; give the real path",
                    path.display()
                )
            } else {
                anyhow::Error::new(e)
                    .context(format!("cannot open --output {} for appending", path.display()))
            }
        })
}

/// An existing file that others may read keeps its mode (it is the user's), but the
/// user hears of it once.
fn warn_if_shared(path: &Path, file: &File) {
    if let Ok(meta) = file.metadata()
        && meta.is_file()
        && meta.mode() & 0o077 != 0
    {
        crate::eline!(
            "netmon: warning: --output {} can be read by other users (mode {:o}); it records every connection: chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        );
    }
}

/// Starts the sink's thread on `events` (a lossless subscription). It ends when the hub
/// closes the queue (`Ok`, everything written and flushed) or when a write fails
/// ([`OutputClosed`] for a broken pipe); dropping the queue then tells the hub.
pub fn spawn(
    output: Output,
    events: crate::pipeline::hub::Subscription,
) -> io::Result<JoinHandle<Result<()>>> {
    thread::Builder::new()
        .name("sink".into())
        .spawn(move || write_all(output, events))
}

/// After SIGHUP: everything so far goes to the old file, then the path is opened anew.
/// A path that cannot be opened keeps the old file (nothing is lost) and says why.
fn reopen_if_asked(output: &mut Output) -> Result<()> {
    let Some(path) = &output.path else {
        return Ok(());
    };
    if !REOPEN.swap(false, Ordering::Relaxed) {
        return Ok(());
    }
    match open_file(path) {
        Ok(file) => written(
            output.sink.replace_output(Box::new(Counted(file))),
            "events",
        ),
        Err(e) => {
            crate::eline!("netmon: warning: {e:#}; still writing to the file open before SIGHUP");
            Ok(())
        }
    }
}

fn write_all(mut output: Output, mut events: crate::pipeline::hub::Subscription) -> Result<()> {
    loop {
        reopen_if_asked(&mut output)?;
        let sink = &mut output.sink;
        // Lent, not shared: the sink only reads the event (see `Subscription::recv_ref`).
        let event = match events.try_recv_ref() {
            Ok(e) => e,
            Err(TryRecvError::Empty) => {
                written(sink.flush(), "events")?;
                match events.blocking_recv_ref() {
                    Some(e) => e,
                    None => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        written(sink.write(event), "events")?;
    }
    written(output.sink.flush(), "events")
}

/// Waits for the sink's thread: its error, if a write failed. `OutputClosed` comes
/// back as is, for `main` to end quietly.
pub fn join(handle: JoinHandle<Result<()>>) -> Result<()> {
    match handle.join() {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("the output thread panicked")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::output::OutputClosed;
    use std::sync::Arc;
    use std::sync::Mutex;

    /// A writer into shared memory, or one whose reader went away.
    #[derive(Clone)]
    struct Shared(Arc<Mutex<Vec<u8>>>, bool);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.1 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            if self.1 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            Ok(())
        }
    }

    fn stats_event() -> Arc<Event> {
        Arc::new(Event {
            ts: chrono::Utc::now(),
            host: "h".into(),
            body: crate::event::EventBody::Stats(Default::default()),
        })
    }

    #[test]
    fn writes_every_event_then_flushes_at_the_end() {
        let buf = Shared(Arc::default(), false);
        let (tx, rx) = crate::pipeline::hub::direct(2);
        let h = spawn(
            Output {
                sink: Sink::new(Format::Json, Box::new(buf.clone())),
                path: None,
            },
            rx,
        )
        .unwrap();
        for _ in 0..10 {
            tx.blocking_send(stats_event()).unwrap();
        }
        drop(tx);
        join(h).unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 10);
        for line in text.lines() {
            let e: Event = serde_json::from_str(line).unwrap();
            assert_eq!(e.body.type_name(), "stats");
        }
    }

    #[test]
    fn a_broken_pipe_ends_with_output_closed() {
        let (tx, rx) = crate::pipeline::hub::direct(2);
        let h = spawn(
            Output {
                sink: Sink::new(Format::Json, Box::new(Shared(Arc::default(), true))),
                path: None,
            },
            rx,
        )
        .unwrap();
        let _ = tx.blocking_send(stats_event());
        let err = join(h).unwrap_err();
        assert!(err.is::<OutputClosed>(), "{err:#}");
        assert!(crate::output::is_output_closed(&err));
    }

    #[test]
    fn the_output_file_is_private_and_never_a_followed_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        open_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = format!("{:#}", open_file(&link).unwrap_err());
        assert!(err.contains("is a symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"");
    }

    #[test]
    fn sighup_after_a_rename_splits_the_events_between_the_files_losing_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let rotated = dir.path().join("events.jsonl.1");
        let (tx, rx) = crate::pipeline::hub::direct(1);
        let h = spawn(open(Format::Json, Some(&path)).unwrap(), rx).unwrap();
        for _ in 0..5 {
            tx.blocking_send(stats_event()).unwrap();
        }
        // With a queue of one, the sink holds at most one unwritten event here: send
        // until the file shows all five, as logrotate would only rename a written file.
        while std::fs::read_to_string(&path).unwrap().lines().count() < 4 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::fs::rename(&path, &rotated).unwrap();
        request_reopen();
        for _ in 0..7 {
            tx.blocking_send(stats_event()).unwrap();
        }
        drop(tx);
        join(h).unwrap();
        let count = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        let (old, new) = (count(&rotated), count(&path));
        assert_eq!(old + new, 12, "old {old}, new {new}");
        assert!((4..=6).contains(&old), "old {old}");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        for p in [&rotated, &path] {
            for line in std::fs::read_to_string(p).unwrap().lines() {
                serde_json::from_str::<Event>(line).unwrap();
            }
        }
    }
}
