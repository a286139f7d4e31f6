//! The built `netmon` binary run as a user would: help, bad flags, bad paths, missing
//! privileges. None of these load anything into the kernel.
use std::process::{Command, Output};

fn netmon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netmon"))
        .args(args)
        .output()
        .expect("run netmon")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_explains_the_commands() {
    let out = netmon(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run"), "{text}");
    let out = netmon(&["run", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--format",
        "--output",
        "--backend",
        "--stats-interval",
        "--ring-buffer-kib",
    ] {
        assert!(text.contains(flag), "run --help lacks {flag}: {text}");
    }
}

#[test]
fn unknown_flag_exits_2_naming_it() {
    let out = netmon(&["run", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--frobnicate"), "{}", stderr(&out));
}

#[test]
fn bad_values_exit_2_with_the_reason() {
    let out = netmon(&["run", "--ring-buffer-kib", "3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("power of two"), "{}", stderr(&out));
    let out = netmon(&["run", "--format", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    let out = netmon(&["run", "--backend", "magic"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unwritable_output_exits_2_before_attaching() {
    let out = netmon(&["run", "--output", "/nonexistent-dir/events.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("/nonexistent-dir/events.jsonl"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn without_privileges_exits_2_saying_what_to_do() {
    // As root, drop to nobody for this one command; otherwise we already lack them.
    let is_root = unsafe { libc_geteuid() } == 0;
    let out = if is_root {
        let Ok(out) = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(env!("CARGO_BIN_EXE_netmon"))
            .args(["run"])
            .output()
        else {
            eprintln!("skipped: setpriv not available");
            return;
        };
        out
    } else {
        netmon(&["run"])
    };
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
    assert!(out.stdout.is_empty());
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
