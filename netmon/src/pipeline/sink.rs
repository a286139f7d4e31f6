//! The sink: the hub's consumer that renders every event (`--format json|text`) to
//! stdout or the `--output` file, on a thread of its own.
//!
//! Its guarantees are those `netmon run` always had: it gets every event (it subscribes
//! losslessly, so a stalled reader of the output backs up into the ring buffer, where
//! the kernel counts what it cannot hand over), output is flushed whenever the queue
//! runs dry (a pipe sees events within milliseconds), a broken pipe ends the run
//! quietly ([`crate::output::OutputClosed`]) and any other write error ends it with one line. Bytes
//! that go out are counted for the stop watchdog (`watchdog.rs`).
use std::{
    io::{self, Write},
    path::Path,
    sync::Arc,
    thread::{self, JoinHandle},
};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc::{self, error::TryRecvError};

use super::watchdog::Counted;
use crate::{
    event::Event,
    output::{Format, Sink, written},
};

/// Events the sink's queue holds before the hub waits for it.
pub const QUEUE: usize = 4096;

/// Opens the output: `path` appended to, or stdout. Done before anything is attached,
/// so a bad path fails with nothing to undo.
pub fn open(format: Format, path: Option<&Path>) -> Result<Sink> {
    let out: Box<dyn Write + Send> = match path {
        Some(path) => Box::new(Counted(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| {
                    format!("cannot open --output {} for appending", path.display())
                })?,
        )),
        None => Box::new(Counted(io::stdout())),
    };
    Ok(Sink::new(format, out))
}

/// Starts the sink's thread on `events` (a lossless subscription). It ends when the hub
/// closes the queue (`Ok`, everything written and flushed) or when a write fails
/// ([`OutputClosed`] for a broken pipe); dropping the queue then tells the hub.
pub fn spawn(sink: Sink, events: mpsc::Receiver<Arc<Event>>) -> io::Result<JoinHandle<Result<()>>> {
    thread::Builder::new()
        .name("sink".into())
        .spawn(move || write_all(sink, events))
}

fn write_all(mut sink: Sink, mut events: mpsc::Receiver<Arc<Event>>) -> Result<()> {
    loop {
        let event = match events.try_recv() {
            Ok(e) => e,
            Err(TryRecvError::Empty) => {
                written(sink.flush(), "events")?;
                match events.blocking_recv() {
                    Some(e) => e,
                    None => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        written(sink.write(&event), "events")?;
    }
    written(sink.flush(), "events")
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
    use crate::output::OutputClosed;
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
        let (tx, rx) = mpsc::channel(2);
        let h = spawn(Sink::new(Format::Json, Box::new(buf.clone())), rx).unwrap();
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
        let (tx, rx) = mpsc::channel(2);
        let h = spawn(
            Sink::new(Format::Json, Box::new(Shared(Arc::default(), true))),
            rx,
        )
        .unwrap();
        let _ = tx.blocking_send(stats_event());
        let err = join(h).unwrap_err();
        assert!(err.is::<OutputClosed>(), "{err:#}");
        assert!(crate::output::is_output_closed(&err));
    }
}
