//! Boots one kernel in QEMU with a hard timeout and records its serial console, line by
//! line with the time each line arrived, into a log file and for [`super::report`].
//!
//! TCG, not KVM: on the machines netmon is developed on, a KVM guest hangs at boot
//! (see shared/PLATFORM.md). The guest gets no network card: the tests only use
//! loopback and namespaces they create, and nothing may leave the machine.
use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::report::Line;
use crate::exec;

pub struct Boot<'a> {
    /// A bzImage, or an ELF vmlinux with a PVH note.
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// Appended to the fixed kernel command line.
    pub cmdline_extra: String,
    /// A console line containing this means the guest has booted…
    pub ready: &'a str,
    /// …and must be seen within this long, or QEMU is killed: a boot that wedges is
    /// reported in minutes, whatever `timeout` is.
    pub boot_timeout: Duration,
    /// The whole run, boot included.
    pub timeout: Duration,
    pub log: PathBuf,
}

/// What came out of one VM.
#[derive(Debug)]
pub struct Outcome {
    pub lines: Vec<Line>,
    /// Why QEMU was killed, if it was: `"boot"` or `"run"` timeout.
    pub killed: Option<Killed>,
    /// QEMU's own stderr (why it could not start, usually).
    pub stderr: String,
    pub wall: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Killed {
    /// `ready` did not appear within `boot_timeout`.
    Boot,
    /// The run did not end within `timeout`.
    Run,
}

/// Boots, calling `on_line` for each console line as it arrives; kills QEMU at the timeout.
pub fn boot(b: &Boot, mut on_line: impl FnMut(&Line)) -> Result<Outcome> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "1536", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(b.kernel)
        .arg("-initrd")
        .arg(b.initrd)
        // panic=-1: a panic (or /init exiting) reboots at once, and -no-reboot turns
        // that into QEMU exiting instead of hanging until the timeout.
        .arg("-append")
        // edd=off: probing BIOS disk data takes seconds under TCG, and there is no disk.
        .arg(format!(
            "console=ttyS0 panic=-1 quiet edd=off {}",
            b.cmdline_extra
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let described = exec::describe(&cmd);
    let mut log = BufWriter::new(
        File::create(&b.log).with_context(|| format!("creating {}", b.log.display()))?,
    );
    writeln!(log, "# {described}")?;

    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {described}"))?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let mut stderr = child.stderr.take().context("qemu stderr")?;
    let (tx, rx) = mpsc::channel::<Line>();
    let reader = thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let text = text.trim_end_matches(['\n', '\r']).replace('\r', "");
                    if tx
                        .send(Line {
                            at: start.elapsed(),
                            text,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let stderr_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let run_deadline = start + b.timeout;
    let boot_deadline = start + b.boot_timeout.min(b.timeout);
    let mut booted = false;
    let mut lines = Vec::new();
    let mut killed = None;
    loop {
        let (deadline, why) = if booted {
            (run_deadline, Killed::Run)
        } else {
            (boot_deadline, Killed::Boot)
        };
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                writeln!(log, "{}", line.text)?;
                booted |= line.text.contains(b.ready);
                on_line(&line);
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                killed = Some(why);
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    // After a kill, whatever QEMU wrote before dying is still in the pipe.
    let _ = reader.join();
    for line in rx.try_iter() {
        writeln!(log, "{}", line.text)?;
        lines.push(line);
    }
    let stderr = stderr_reader.join().unwrap_or_default();
    if !stderr.trim().is_empty() {
        writeln!(log, "# qemu stderr:\n{}", stderr.trim_end())?;
    }
    if let Some(why) = killed {
        writeln!(
            log,
            "# killed ({why:?} timeout) after {:.0} s",
            start.elapsed().as_secs_f64()
        )?;
    }
    log.flush()?;
    Ok(Outcome {
        lines,
        killed,
        stderr,
        wall: start.elapsed(),
    })
}
