//! `netmon replay` over the regression fixtures in `tests/fixtures/rules/` (each rule: a
//! stream that fires it and one that must stay quiet), and `netmon rules check|list`.
//! Runs the built binary as a user would; needs no root.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use netmon::event::{Event, EventBody};
use netmon_tests::netmon_bin;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rules")
}

fn replay(file: &str, extra: &[&str]) -> (Output, Vec<netmon::event::Alert>) {
    let out = Command::new(netmon_bin())
        .arg("replay")
        .arg(fixtures().join(file))
        .args(extra)
        .output()
        .expect("run netmon replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let alerts = stdout
        .lines()
        .map(|l| serde_json::from_str::<Event>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .map(|e| match e.body {
            EventBody::Alert(a) => a,
            other => panic!("replay printed a non-alert: {other:?}"),
        })
        .collect();
    (out, alerts)
}

fn check_pair(stem: &str, rule: &str, extra: &[&str]) {
    let (out, alerts) = replay(&format!("{stem}-fires.jsonl"), extra);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stem}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        alerts.iter().any(|a| a.rule == rule),
        "{stem}-fires.jsonl did not fire {rule}: {alerts:#?}"
    );
    for a in &alerts {
        assert!(a.flows.len() <= 5);
        assert!(!a.summary.is_empty() && !a.recommendation.is_empty());
    }
    let (out, alerts) = replay(&format!("{stem}-quiet.jsonl"), extra);
    assert!(alerts.is_empty(), "{stem}-quiet.jsonl fired: {alerts:#?}");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn suspicious_port() {
    check_pair("suspicious_port", "SUSPICIOUS_PORT", &[]);
}

#[test]
fn high_connection_count() {
    check_pair("high_connection_count", "HIGH_CONNECTION_COUNT", &[]);
    let (_, alerts) = replay("high_connection_count-fires.jsonl", &[]);
    let n = alerts
        .iter()
        .filter(|a| a.rule == "HIGH_CONNECTION_COUNT")
        .count();
    assert_eq!(n, 1, "the cooldown holds the other 10 hits back");
}

#[test]
fn external_connections() {
    check_pair("external_connections", "EXTERNAL_CONNECTIONS", &[]);
}

#[test]
fn unusual_listeners() {
    check_pair("unusual_listeners", "UNUSUAL_LISTENERS", &[]);
}

#[test]
fn dns_tunneling() {
    check_pair("dns_tunneling", "DNS_TUNNELING", &[]);
}

#[test]
fn port_risk() {
    check_pair("port_risk", "PORT_RISK", &[]);
    let (_, alerts) = replay("port_risk-fires.jsonl", &[]);
    let a = alerts.iter().find(|a| a.rule == "PORT_RISK").unwrap();
    assert_eq!(a.score, Some(9));
}

#[test]
fn custom_rule() {
    let config = fixtures().join("custom.toml");
    let config = config.to_string_lossy();
    check_pair("custom", "PSQL_TO_PROD", &["--config", &config]);
}

#[test]
fn malformed_lines_are_reported_and_lose_no_alert() {
    let (out, alerts) = replay("malformed-fires.jsonl", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(alerts.iter().any(|a| a.rule == "SUSPICIOUS_PORT"));
    assert!(
        stderr.contains("malformed-fires.jsonl:3: skipped, not an event"),
        "{stderr}"
    );
    assert!(stderr.contains("3 lines skipped"), "{stderr}");
}

#[test]
fn text_format_prints_alert_blocks() {
    let out = Command::new(netmon_bin())
        .args(["replay", "--format", "text"])
        .arg(fixtures().join("suspicious_port-fires.jsonl"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("alert   [HIGH] SUSPICIOUS_PORT: nc[100] connected to port 31337"),
        "{text}"
    );
    assert!(text.contains("\n    what to do: "), "{text}");
    assert!(
        text.contains("\n    flow: connect 127.0.0.1:40000 -> 127.0.0.1:31337"),
        "{text}"
    );
}

fn netmon(args: &[&str]) -> Output {
    Command::new(netmon_bin()).args(args).output().unwrap()
}

#[test]
fn rules_check_accepts_a_good_file_and_names_line_and_key_of_a_bad_one() {
    let good = fixtures().join("custom.toml");
    let out = netmon(&["rules", "check", &good.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    let bad = std::env::temp_dir().join(format!("netmon-bad-{}.toml", std::process::id()));
    std::fs::write(
        &bad,
        "[rules]\ncooldown_s = 5\n\n[rules.high_connection_count]\nthreshhold = 10\n",
    )
    .unwrap();
    let out = netmon(&["rules", "check", &bad.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::remove_file(&bad);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = format!(
        "{}:5:1: key `rules.high_connection_count.threshhold`: unknown field `threshhold`, expected one of",
        bad.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert!(stderr.contains("`threshold`"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn run_and_replay_refuse_a_bad_config_with_exit_2() {
    let bad = std::env::temp_dir().join(format!("netmon-bad2-{}.toml", std::process::id()));
    std::fs::write(&bad, "[dns]\nports = [\"fifty-three\"]\n").unwrap();
    let path = bad.to_string_lossy().into_owned();
    for args in [
        vec!["replay", "/dev/null", "--config", &path],
        vec!["run", "--config", &path],
        vec!["rules", "list", "--config", &path],
    ] {
        let out = netmon(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(":2:"), "{args:?}: {stderr}");
        assert!(stderr.contains("dns.ports"), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_file(&bad);
}

#[test]
fn rules_list_shows_the_effective_rules() {
    let out = netmon(&[
        "rules",
        "list",
        "--format",
        "json",
        "--config",
        &fixtures().join("custom.toml").to_string_lossy(),
    ]);
    assert!(out.status.success());
    let rules: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rules.iter().map(|r| r["rule"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "SUSPICIOUS_PORT",
            "HIGH_CONNECTION_COUNT",
            "EXTERNAL_CONNECTIONS",
            "UNUSUAL_LISTENERS",
            "DNS_TUNNELING",
            "PORT_RISK",
            "PSQL_TO_PROD"
        ]
    );
    assert_eq!(rules[1]["settings"]["threshold"], 50);
    let text = netmon(&["rules", "list"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("SUSPICIOUS_PORT        on  high"));
}

#[test]
fn a_deprecated_window_s_loads_with_one_warning_naming_file_and_line() {
    let file = std::env::temp_dir().join(format!("netmon-window-s-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        "[rules]\ncooldown_s = 5\n[rules.dns_tunneling]\nwindow_s = 90\n",
    )
    .unwrap();
    let path = file.to_string_lossy().into_owned();
    let check = netmon(&["rules", "check", &path]);
    let list = netmon(&["rules", "list", "--format", "json", "--config", &path]);
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(check.status.success(), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "netmon: warning: {path}:4:1: key `rules.dns_tunneling.window_s`: `window_s` is \
             deprecated and will be removed: write `window = \"90s\"`"
        )
    );
    // It took effect, shown in the current spelling.
    let rules: Vec<serde_json::Value> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dns = rules.iter().find(|r| r["rule"] == "DNS_TUNNELING").unwrap();
    assert_eq!(dns["settings"]["window"], "90s");
    assert!(dns["settings"].get("window_s").is_none());
}
