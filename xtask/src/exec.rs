//! Runs commands and says which one failed: the only place xtask spawns processes.
use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd`, inheriting stdio; fails naming the command when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs a `cargo test` command, passing its output through, and on failure names
/// every failed test and the first lines of what it printed, so that the end of a
/// long log (all CI shows) says what broke. Add `--no-fail-fast` to `cmd` so one
/// failed test binary does not hide the others.
pub fn run_tests(cmd: &mut Command) -> Result<()> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    let mut failures = TestFailures::default();
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout().lock();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // Keep reading when our own stdout is gone: the child must not block.
            let _ = writeln!(stdout, "{line}");
            failures.feed(&line);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}{}", describe(cmd), failures.summary());
    }
    Ok(())
}

/// The failed tests in a `cargo test` log and the first lines of each one's output.
#[derive(Debug, Default)]
struct TestFailures {
    /// (test name, first lines of its captured output)
    failed: Vec<(String, Vec<String>)>,
    /// The test whose `---- NAME stdout ----` section is being read.
    reading: Option<usize>,
}

impl TestFailures {
    const LINES_KEPT: usize = 12;

    fn feed(&mut self, line: &str) {
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            self.failed.push((name.to_string(), Vec::new()));
            self.reading = None;
        } else if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            self.reading = self.failed.iter().position(|(n, _)| n == name);
        } else if line == "failures:" || line.starts_with("test result:") {
            self.reading = None;
        } else if let Some(i) = self.reading {
            let kept = &mut self.failed[i].1;
            if kept.len() < Self::LINES_KEPT && !line.trim().is_empty() {
                kept.push(line.to_string());
            }
        }
    }

    fn summary(&self) -> String {
        let mut s = String::new();
        for (name, lines) in &self.failed {
            s.push_str(&format!("\n  failed test {name}"));
            for l in lines {
                s.push_str(&format!("\n    | {l}"));
            }
        }
        s
    }
}

/// Runs `cmd` and returns its stdout; fails naming the command when it exits non-zero.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = capture(cmd)?;
    if !out.status.success() {
        bail!(
            "{} failed: {}: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with stdout and stderr captured, whatever its exit status.
pub fn capture(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", describe(cmd)))
}

/// Whether a program is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

fn quote(a: &OsStr) -> String {
    let a = a.to_string_lossy();
    if a.contains(' ') {
        format!("'{a}'")
    } else {
        a.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::TestFailures;

    #[test]
    fn names_each_failed_test_with_the_start_of_its_output() {
        let log = "\
running 3 tests
test a::passes ... ok
test b::breaks ... FAILED
test c::also ... FAILED

failures:

---- b::breaks stdout ----
thread 'b::breaks' panicked at tests/b.rs:10:5:
no connect event within 5 s

---- c::also stdout ----
assertion failed

failures:
    b::breaks
    c::also

test result: FAILED. 1 passed; 2 failed
";
        let mut f = TestFailures::default();
        log.lines().for_each(|l| f.feed(l));
        assert_eq!(
            f.summary(),
            "\n  failed test b::breaks\n    | thread 'b::breaks' panicked at tests/b.rs:10:5:\n    | no connect event within 5 s\n  failed test c::also\n    | assertion failed"
        );
    }

    #[test]
    fn a_passing_log_names_nothing() {
        let mut f = TestFailures::default();
        "test a ... ok\ntest result: ok. 1 passed"
            .lines()
            .for_each(|l| f.feed(l));
        assert_eq!(f.summary(), "");
    }
}
