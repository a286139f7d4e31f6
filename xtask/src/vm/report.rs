//! Reading a VM's serial console: the markers `/init` prints, the libtest summaries
//! between them, and the kernel × backend matrix built from them. Pure: lines in,
//! values and text out; nothing here boots or prints.
//!
//! The markers, one per line (the kernel may print before them on the same line, so
//! they are searched for anywhere in it):
//!
//! ```text
//! NETMON-VM-BOOTED kernel=6.1 release=6.1.0-56-cloud-amd64 uptime=3.12
//! NETMON-VM-RUN kernel=6.1 backend=auto test=probe
//! …the test binary's own output…
//! NETMON-VM-RESULT kernel=6.1 backend=auto test=probe status=0
//! NETMON-VM-DONE kernel=6.1 uptime=40.50
//! ```
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

pub const MARK: &str = "NETMON-VM-";

/// One console line and when the host read it (since QEMU started).
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Duration,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    Booted {
        release: String,
    },
    Run {
        backend: String,
        test: String,
    },
    Result {
        backend: String,
        test: String,
        status: i32,
    },
    Done,
}

pub fn marker(line: &str) -> Option<Marker> {
    let at = line.find(MARK)?;
    let rest = &line[at + MARK.len()..];
    let (kind, fields) = rest.split_once(' ').unwrap_or((rest, ""));
    let fields: BTreeMap<&str, &str> = fields
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .collect();
    let get = |k: &str| fields.get(k).map(|v| (*v).to_owned());
    match kind.trim() {
        "BOOTED" => Some(Marker::Booted {
            release: get("release").unwrap_or_default(),
        }),
        "RUN" => Some(Marker::Run {
            backend: get("backend")?,
            test: get("test")?,
        }),
        "RESULT" => Some(Marker::Result {
            backend: get("backend")?,
            test: get("test")?,
            status: fields.get("status")?.parse().ok()?,
        }),
        "DONE" => Some(Marker::Done),
        _ => None,
    }
}

/// The counts of libtest's `test result: ok. 3 passed; 0 failed; 1 ignored; …` line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
}

pub fn summary(line: &str) -> Option<Summary> {
    let rest = &line[line.find("test result: ")? + "test result: ".len()..];
    let (_, counts) = rest.split_once(". ")?;
    let mut s = Summary::default();
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse() else { continue };
        match what {
            "passed" => s.passed = n,
            "failed" => s.failed = n,
            "ignored" => s.ignored = n,
            _ => {}
        }
    }
    Some(s)
}

/// One test binary run for one backend.
#[derive(Debug, Clone)]
pub struct Run {
    pub backend: String,
    pub test: String,
    /// Exit status; `None` when the console ends before the RESULT marker.
    pub status: Option<i32>,
    pub summary: Option<Summary>,
    /// The binary's output (and whatever the kernel printed meanwhile).
    pub output: Vec<String>,
    pub took: Option<Duration>,
}

/// Everything one VM's console said.
#[derive(Debug, Default)]
pub struct Console {
    /// When `/init` started and the kernel release it reported.
    pub booted: Option<(Duration, String)>,
    pub runs: Vec<Run>,
    pub done: Option<Duration>,
    /// The kernel's own words when it panicked (`Fatal exception in interrupt`), if it did.
    pub panic: Option<String>,
}

impl Console {
    /// What the kernel said if it panicked before `/init` started: no test has run.
    pub fn panicked_before_init(&self) -> Option<&str> {
        self.panic.as_deref().filter(|_| self.booted.is_none())
    }
}

pub fn read_console(lines: &[Line]) -> Console {
    let mut c = Console::default();
    let mut current: Option<(usize, Duration)> = None;
    for line in lines {
        match marker(&line.text) {
            Some(Marker::Booted { release }) => c.booted = Some((line.at, release)),
            Some(Marker::Run { backend, test }) => {
                c.runs.push(Run {
                    backend,
                    test,
                    status: None,
                    summary: None,
                    output: Vec::new(),
                    took: None,
                });
                current = Some((c.runs.len() - 1, line.at));
            }
            Some(Marker::Result {
                backend,
                test,
                status,
            }) => {
                let started = current.take();
                if let Some(run) = c
                    .runs
                    .iter_mut()
                    .rev()
                    .find(|r| r.backend == backend && r.test == test)
                {
                    run.status = Some(status);
                    run.took = started.map(|(_, at)| line.at.saturating_sub(at));
                }
            }
            Some(Marker::Done) => c.done = Some(line.at),
            None => {
                if c.panic.is_none() {
                    c.panic = kernel_panic(&line.text);
                }
                if let Some((i, _)) = current {
                    let run = &mut c.runs[i];
                    if let Some(s) = summary(&line.text) {
                        run.summary = Some(s);
                    }
                    run.output.push(line.text.clone());
                }
            }
        }
    }
    c
}

/// What the kernel said when it panicked, from its `Kernel panic - not syncing: …` line.
fn kernel_panic(text: &str) -> Option<String> {
    const PANIC: &str = "Kernel panic - not syncing:";
    let (_, why) = text.split_once(PANIC)?;
    Some(why.trim().to_owned())
}

/// The result of one kernel × backend: the suite's test counts, and what went wrong.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cell {
    pub passed: u32,
    pub failed: u32,
    /// One line per test binary that did not pass, e.g. `probe: exit 101`.
    pub problems: Vec<String>,
}

impl Cell {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// `ok 12/12` or `FAIL 10/12`: tests passed / tests run.
    pub fn text(&self) -> String {
        let verdict = if self.ok() { "ok" } else { "FAIL" };
        format!("{verdict} {}/{}", self.passed, self.passed + self.failed)
    }
}

/// Judges `backend` on one console: every binary of `tests` must have run and exited 0.
pub fn cell(console: &Console, backend: &str, tests: &[String]) -> Cell {
    let mut cell = Cell::default();
    let mut missing = Vec::new();
    for test in tests {
        let Some(run) = console
            .runs
            .iter()
            .find(|r| r.backend == backend && &r.test == test)
        else {
            missing.push(test.as_str());
            continue;
        };
        if let Some(s) = run.summary {
            cell.passed += s.passed;
            cell.failed += s.failed;
        }
        match run.status {
            Some(0) => {}
            // busybox `timeout -s KILL` kills the binary: 128 + SIGKILL.
            Some(137) => cell
                .problems
                .push(format!("{test}: killed by the in-guest timeout")),
            Some(n) => cell.problems.push(format!("{test}: exit {n}")),
            None => cell
                .problems
                .push(format!("{test}: did not finish (no RESULT marker)")),
        }
    }
    if !missing.is_empty() {
        // One line, not one per binary: when a VM dies, every binary is missing.
        cell.problems
            .push(format!("never ran (no RUN marker): {}", missing.join(", ")));
    }
    cell
}

/// One kernel's line of the matrix.
#[derive(Debug, Clone)]
pub struct Row {
    pub kernel: String,
    pub release: String,
    /// QEMU start → `/init` running.
    pub boot: Option<Duration>,
    /// `/init` running → DONE.
    pub tests: Option<Duration>,
    /// Why the VM as a whole failed (timeout, missing markers), if it did.
    pub problems: Vec<String>,
    /// What happened on the way that did not fail it (a boot tried again).
    pub notes: Vec<String>,
    /// One per backend, in the matrix's column order.
    pub cells: Vec<Cell>,
}

/// The kernel × backend table, then one line per problem.
pub fn render_matrix(backends: &[String], rows: &[Row]) -> String {
    let secs =
        |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()));
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut header = vec![
        "kernel".to_owned(),
        "release".into(),
        "boot".into(),
        "tests".into(),
    ];
    header.extend(backends.iter().cloned());
    table.push(header);
    for r in rows {
        let mut line = vec![
            r.kernel.clone(),
            if r.release.is_empty() {
                "?".into()
            } else {
                r.release.clone()
            },
            secs(r.boot),
            secs(r.tests),
        ];
        line.extend(r.cells.iter().map(Cell::text));
        table.push(line);
    }
    let columns = table.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            table
                .iter()
                .filter_map(|l| l.get(i))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &table {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    for r in rows {
        for p in &r.problems {
            let _ = writeln!(out, "{}: {p}", r.kernel);
        }
        for n in &r.notes {
            let _ = writeln!(out, "{}: note: {n}", r.kernel);
        }
        for (backend, c) in backends.iter().zip(&r.cells) {
            for p in &c.problems {
                let _ = writeln!(out, "{} {backend}: {p}", r.kernel);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<Line> {
        text.lines()
            .enumerate()
            .map(|(i, t)| Line {
                at: Duration::from_secs(i as u64),
                text: t.to_owned(),
            })
            .collect()
    }

    #[test]
    fn reads_markers_even_after_kernel_noise() {
        assert_eq!(
            marker(
                "[    3.1] random: crng init doneNETMON-VM-RESULT kernel=6.1 backend=kprobe test=probe status=2"
            ),
            Some(Marker::Result {
                backend: "kprobe".into(),
                test: "probe".into(),
                status: 2
            })
        );
        assert_eq!(
            marker("NETMON-VM-BOOTED kernel=5.10 release=5.10.0-35-cloud-amd64 uptime=2.50"),
            Some(Marker::Booted {
                release: "5.10.0-35-cloud-amd64".into()
            })
        );
        assert_eq!(
            marker("NETMON-VM-RESULT kernel=6.1 backend=auto test=probe status="),
            None
        );
        assert_eq!(marker("test probe::attaches ... ok"), None);
    }

    #[test]
    fn reads_libtest_summaries() {
        assert_eq!(
            summary(
                "test result: FAILED. 2 passed; 1 failed; 3 ignored; 0 measured; 0 filtered out; finished in 1.02s"
            ),
            Some(Summary {
                passed: 2,
                failed: 1,
                ignored: 3
            })
        );
        assert_eq!(summary("running 3 tests"), None);
    }

    #[test]
    fn reads_a_panic_before_init() {
        // The console of a 6.12.118 boot under TCG (CI, 2026-12-07), shortened.
        let c = read_console(&lines(
            "\
Booting from ROM..[    2.023085] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI
[    2.027391]  start_secondary+0x11e/0x140
[    2.028000] Kernel panic - not syncing: Fatal exception in interrupt
[    5.429980] Kernel Offset: disabled",
        ));
        assert!(c.booted.is_none());
        assert_eq!(
            c.panicked_before_init(),
            Some("Fatal exception in interrupt")
        );
        let fine = read_console(&lines(CONSOLE));
        assert!(fine.booted.is_some());
        assert_eq!(fine.panicked_before_init(), None);
        // A panic once /init runs is a failure of what ran, never booted again.
        let later = read_console(&lines(&format!(
            "{CONSOLE}[   40.1] Kernel panic - not syncing: softlockup: hung tasks\n"
        )));
        assert_eq!(later.panic.as_deref(), Some("softlockup: hung tasks"));
        assert_eq!(later.panicked_before_init(), None);
    }

    const CONSOLE: &str = "\
[    0.000000] Linux version 6.1.0-56-cloud-amd64
NETMON-VM-BOOTED kernel=6.1 release=6.1.0-56-cloud-amd64 uptime=1.00
NETMON-VM-RUN kernel=6.1 backend=auto test=probe
running 2 tests
test attaches ... ok
test sees_connect ... ok
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.50s
NETMON-VM-RESULT kernel=6.1 backend=auto test=probe status=0
NETMON-VM-RUN kernel=6.1 backend=kprobe test=probe
running 2 tests
test attaches ... FAILED
test sees_connect ... ok
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.50s
NETMON-VM-RESULT kernel=6.1 backend=kprobe test=probe status=101
NETMON-VM-RUN kernel=6.1 backend=tracepoint test=probe
running 2 tests
";

    #[test]
    fn judges_each_backend_from_the_console() {
        let c = read_console(&lines(CONSOLE));
        assert_eq!(
            c.booted,
            Some((Duration::from_secs(1), "6.1.0-56-cloud-amd64".into()))
        );
        assert_eq!(c.runs.len(), 3);
        assert_eq!(c.runs[0].took, Some(Duration::from_secs(5)));
        assert!(
            c.runs[1]
                .output
                .iter()
                .any(|l| l == "test attaches ... FAILED")
        );
        assert_eq!(c.done, None);

        let tests = ["probe".to_owned()];
        let auto = cell(&c, "auto", &tests);
        assert!(auto.ok());
        assert_eq!(auto.text(), "ok 2/2");
        let kprobe = cell(&c, "kprobe", &tests);
        assert_eq!(kprobe.text(), "FAIL 1/2");
        assert_eq!(kprobe.problems, ["probe: exit 101"]);
        let tracepoint = cell(&c, "tracepoint", &tests);
        assert_eq!(
            tracepoint.problems,
            ["probe: did not finish (no RESULT marker)"]
        );
        let fentry = cell(&c, "fentry", &tests);
        assert_eq!(fentry.text(), "FAIL 0/0");
        assert_eq!(fentry.problems, ["never ran (no RUN marker): probe"]);
    }

    #[test]
    fn renders_the_matrix_with_its_problems() {
        let backends = ["auto".to_owned(), "kprobe".to_owned()];
        let ok = Cell {
            passed: 2,
            failed: 0,
            problems: vec![],
        };
        let bad = Cell {
            passed: 0,
            failed: 0,
            problems: vec!["probe: exit 2".into()],
        };
        let rows = [
            Row {
                kernel: "5.10".into(),
                release: "5.10.0-35-cloud-amd64".into(),
                boot: Some(Duration::from_millis(4200)),
                tests: Some(Duration::from_secs(30)),
                problems: vec![],
                notes: vec![],
                cells: vec![ok.clone(), bad],
            },
            Row {
                kernel: "6.12".into(),
                release: String::new(),
                boot: None,
                tests: None,
                problems: vec!["timed out after 300 s".into()],
                notes: vec!["boot 1 of 3: the kernel panicked before /init; booted again".into()],
                cells: vec![ok.clone(), ok],
            },
        ];
        let text = render_matrix(&backends, &rows);
        let expected = "\
kernel  release                boot  tests  auto    kprobe
5.10    5.10.0-35-cloud-amd64  4.2s  30.0s  ok 2/2  FAIL 0/0
6.12    ?                      -     -      ok 2/2  ok 2/2
5.10 kprobe: probe: exit 2
6.12: timed out after 300 s
6.12: note: boot 1 of 3: the kernel panicked before /init; booted again
";
        assert_eq!(text, expected);
    }
}
