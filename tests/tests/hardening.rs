//! Hostile input to the command line (issue 18): values that must be refused at
//! validation instead of crashing later, output that cannot be written (`/dev/full`),
//! recordings with bytes that are not UTF-8, allowlist entries by name or path. Runs the
//! built binary as a user would; needs no root.
use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use netmon_tests::netmon_bin;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rules")
}

/// A file under a directory unique to this test process.
fn temp_file(name: &str, text: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netmon-hardening-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    File::create(&path).unwrap().write_all(text).unwrap();
    path
}

fn full() -> Stdio {
    File::options()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full")
        .into()
}

fn netmon(args: &[&str], stdout: Stdio, stderr: Stdio) -> Output {
    Command::new(netmon_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .output()
        .expect("run netmon")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn no_panic(out: &Output) {
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

#[test]
fn huge_values_are_refused_by_rules_check_with_file_line_and_key() {
    for (name, toml, key, line) in [
        (
            "ping.toml",
            "[scan]\nping_interval = \"99999999999999999999\"\n",
            "scan.ping_interval",
            2,
        ),
        (
            "window_s.toml",
            "[rules]\n[rules.dns_tunneling]\nwindow_s = 9223372036854775807\n",
            "rules.dns_tunneling.window_s",
            3,
        ),
        (
            "window.toml",
            "[rules.external_connections]\nwindow = \"9999999d\"\n",
            "rules.external_connections.window",
            2,
        ),
        (
            "cooldown.toml",
            "[rules]\ncooldown_s = 18446744073709551615\n",
            "rules.cooldown_s",
            2,
        ),
        (
            "rule_cooldown.toml",
            "[rules.suspicious_port]\ncooldown_s = 9223372036854775807\n",
            "rules.suspicious_port.cooldown_s",
            2,
        ),
        (
            "threshold.toml",
            "[rules.high_connection_count]\nthreshold = 18446744073709551615\n",
            "rules.high_connection_count.threshold",
            2,
        ),
        (
            "interval.toml",
            "[scan]\ndiscovery_interval = 9223372036854775807\n",
            "scan.discovery_interval",
            2,
        ),
        (
            "rate.toml",
            "[scan]\nrate_pps = 4294967295\n",
            "scan.rate_pps",
            2,
        ),
    ] {
        let path = temp_file(name, toml.as_bytes());
        let p = path.to_str().unwrap();
        let out = netmon(&["rules", "check", p], Stdio::piped(), Stdio::piped());
        no_panic(&out);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        assert!(err.contains(&format!("{p}:{line}:")), "{name}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{name}: {err}");
        // What passes `rules check` is what `replay` loads: the same refusal, no panic.
        let out = netmon(
            &["replay", "--config", p, "/dev/null"],
            Stdio::piped(),
            Stdio::piped(),
        );
        no_panic(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out.stderr));
    }
}

#[test]
fn huge_scan_flags_are_refused() {
    for args in [
        &[
            "scan",
            "127.0.0.1",
            "--timeout",
            "99999999999999999999",
            "-n",
        ][..],
        &[
            "scan",
            "127.0.0.1",
            "--timeout",
            "99999999999999999999d",
            "-n",
        ],
    ] {
        let out = netmon(args, Stdio::piped(), Stdio::piped());
        no_panic(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn unwritable_stdout_or_stderr_is_an_exit_code_not_a_panic() {
    let ok = temp_file("ok.toml", b"[rules]\ncooldown_s = 10\n");
    let bad = temp_file("bad.toml", b"[rules]\ncooldown_s = -1\n");
    let fires = fixtures().join("suspicious_port-fires.jsonl");
    let (ok, bad, fires) = (
        ok.to_str().unwrap(),
        bad.to_str().unwrap(),
        fires.to_str().unwrap(),
    );
    for (args, stdout_full, code) in [
        // The one result line cannot be written: an error, exit 2.
        (&["rules", "check", ok][..], true, 2),
        // The error cannot be shown: still exit 2.
        (&["rules", "check", bad], false, 2),
        (&["rules", "check", ok], false, 0),
        // Alerts cannot be written: exit 2; the summary cannot be: the alerts' exit 1.
        (&["replay", fires], true, 2),
        (&["replay", fires], false, 1),
        (&["rules", "list"], true, 2),
    ] {
        let (stdout, stderr) = if stdout_full {
            (full(), Stdio::piped())
        } else {
            (Stdio::null(), full())
        };
        let out = netmon(args, stdout, stderr);
        no_panic(&out);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?} (stdout full: {stdout_full}): {}",
            text(&out.stderr)
        );
        if stdout_full && code == 2 {
            let err = text(&out.stderr);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains("No space left on device"), "{err}");
        }
    }
}

#[test]
fn scan_json_to_a_full_stdout_is_an_error_not_a_panic() {
    // A connect scan of one closed loopback port: needs no privilege.
    let args = [
        "scan",
        "127.0.0.1",
        "-p",
        "1",
        "--method",
        "connect",
        "-n",
        "--format",
        "json",
        "--Pn",
    ];
    let out = netmon(&args, full(), Stdio::piped());
    no_panic(&out);
    let err = text(&out.stderr);
    if err.contains("not permitted") || err.contains("privilege") {
        eprintln!("skipped: {err}");
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{err}");
    let out = netmon(&args, Stdio::null(), full());
    no_panic(&out);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn replay_skips_and_counts_lines_that_are_not_utf8() {
    let events = std::fs::read(fixtures().join("suspicious_port-fires.jsonl")).unwrap();
    let mut hostile = b"\xff\xfe not text \xc3\x28\n".to_vec();
    hostile.extend_from_slice(&events);
    let path = temp_file("hostile.jsonl", &hostile);
    let clean = netmon(
        &[
            "replay",
            fixtures()
                .join("suspicious_port-fires.jsonl")
                .to_str()
                .unwrap(),
        ],
        Stdio::piped(),
        Stdio::piped(),
    );
    let out = netmon(
        &["replay", path.to_str().unwrap()],
        Stdio::piped(),
        Stdio::piped(),
    );
    no_panic(&out);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the alerts after it still fire: {err}"
    );
    assert_eq!(
        out.stdout, clean.stdout,
        "the same alerts as without the line"
    );
    assert!(err.contains(":1: skipped, not UTF-8"), "{err}");
    assert!(err.contains("1 lines skipped"), "{err}");
}

#[test]
fn rules_list_says_whether_an_allow_entry_is_a_name_or_a_path() {
    let cfg = temp_file(
        "allow.toml",
        b"[rules.external_connections]\nallow = { process = [\"tor\", \"/usr/bin/tor\"] }\n",
    );
    let out = netmon(
        &["rules", "list", "--config", cfg.to_str().unwrap()],
        Stdio::piped(),
        Stdio::piped(),
    );
    let list = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let line = |entry: &str| {
        list.lines()
            .find(|l| l.trim_start().starts_with(&format!("\"{entry}\"")))
            .unwrap_or_else(|| panic!("no line for {entry}: {list}"))
            .to_owned()
    };
    assert!(line("tor").contains("(name:"), "{list}");
    assert!(line("/usr/bin/tor").contains("(path:"), "{list}");
}

#[test]
fn replay_text_escapes_a_hostile_process_name() {
    // The recording of a process that renamed itself (`prctl(PR_SET_NAME)`) to clear
    // the screen and forge a line of its own.
    let events = std::fs::read_to_string(fixtures().join("suspicious_port-fires.jsonl")).unwrap();
    let hostile = events.replace(
        "\"comm\": \"nc\"",
        "\"comm\": \"\\u001b[2J\\u001b[Hnc\\n[CRITICAL] FORGED\\u202e\"",
    );
    assert_ne!(hostile, events, "the fixture names a process `nc`");
    let path = temp_file("hostile-comm.jsonl", hostile.as_bytes());
    let out = netmon(
        &["replay", "--format", "text", path.to_str().unwrap()],
        Stdio::piped(),
        Stdio::piped(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("[HIGH] SUSPICIOUS_PORT"), "{shown}");
    assert!(
        !shown.contains('\x1b') && !shown.contains('\u{202e}'),
        "{shown}"
    );
    assert!(
        !shown.lines().any(|l| l.starts_with("[CRITICAL]")),
        "a forged line: {shown}"
    );
    assert!(shown.contains("\\x1b[2J"), "the escape shows: {shown}");
}
