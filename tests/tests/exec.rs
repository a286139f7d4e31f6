//! The process table end to end: short-lived programs (a real `sh -c curl`, a real
//! `dig`, a program that exits right after its `connect()`, one that renames itself
//! `tor`) run in a private network namespace against local servers, and a real netmon
//! must name each by what the kernel saw at exec: full `exe`, `cmdline`, `user`,
//! `ppid`/`parent`, `start_time` and `ancestors`, although `/proc` is empty by the time
//! the event is enriched.
use std::{
    io::{Read, Write},
    net::TcpListener,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use netmon::event::{Connection, Event, EventBody, ProcessInfo};
use netmon_tests::{ConfigFile, Dnsmasq, NetNs, Netmon, dig, free_port, quick_bin, require_root};

const WAIT: Duration = Duration::from_secs(20);

/// A listener that accepts (and answers HTTP requests with a tiny 200) forever.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                if let Ok(n) = s.read(&mut buf)
                    && n > 0
                {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                }
            });
        }
    });
    port
}

fn connect_to(e: &Event, port: u16) -> Option<&Connection> {
    match &e.body {
        EventBody::Connect(c) if c.dst.port == port => Some(c),
        _ => None,
    }
}

fn my_exe() -> String {
    std::env::current_exe()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn curl_from_sh_is_named_with_its_exe_cmdline_and_ancestors() {
    require_root!();
    let _ns = NetNs::new();
    let port = http_server();
    let mut netmon = Netmon::start(&["--events", "exec"]);
    let url = format!("http://127.0.0.1:{port}/");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("curl -s {url} >/dev/null"))
        .status()
        .unwrap();
    assert!(status.success());
    let ev = netmon
        .wait_for(WAIT, |e| connect_to(e, port).is_some())
        .unwrap_or_else(|| panic!("no connect to {port}: {:#?}", netmon.seen));
    let p = connect_to(&ev, port).unwrap().process.clone().unwrap();
    assert_eq!(p.comm, "curl", "{p:?}");
    let d = &p.detail;
    let exe = d.exe.as_deref().unwrap_or_default();
    assert!(exe.starts_with('/') && exe.ends_with("/curl"), "{p:?}");
    assert_eq!(
        d.cmdline.as_deref(),
        Some(format!("curl -s {url}").as_str())
    );
    assert_eq!((p.uid, d.user.as_deref()), (0, Some("root")));
    assert!(d.start_time.is_some(), "{p:?}");
    // curl's parent is the shell, whose parent is this test.
    let sh = d.parent.as_deref().unwrap_or_default();
    assert!(sh.ends_with("/sh"), "{p:?}");
    assert_eq!(d.ancestors.first().map(String::as_str), Some(sh));
    assert_eq!(d.ancestors.get(1), Some(&my_exe()), "{p:?}");
    assert!(d.ppid.is_some_and(|pp| pp != std::process::id()));
    // The `exec` event of the same curl, with the same lineage.
    let x = netmon
        .wait_for(WAIT, |e| {
            matches!(&e.body, EventBody::Exec(x) if x.process.pid == p.pid
                && x.process.detail.exe.as_deref() == Some(exe))
        })
        .expect("no exec event for curl");
    let EventBody::Exec(x) = &x.body else {
        unreachable!()
    };
    assert_eq!(x.process.detail.ancestors, d.ancestors);
    assert_eq!(x.process.comm, "curl");
    let (status, _) = netmon.stop();
    assert!(status.success());
}

#[test]
fn exec_events_are_off_by_default() {
    require_root!();
    let _ns = NetNs::new();
    let port = http_server();
    let mut netmon = Netmon::start(&[]);
    let status = Command::new(quick_bin())
        .arg(format!("127.0.0.1:{port}"))
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        netmon
            .wait_for(WAIT, |e| connect_to(e, port).is_some())
            .is_some()
    );
    let (_, events) = netmon.stop();
    assert!(
        !events.iter().any(|e| matches!(e.body, EventBody::Exec(_))),
        "exec events without --events exec"
    );
    // But the table was fed: the final stats count execs and forks.
    let stats = events
        .iter()
        .rev()
        .find_map(|e| match &e.body {
            EventBody::Stats(s) => Some(s.clone()),
            _ => None,
        })
        .expect("final stats");
    let json = serde_json::to_value(&stats).unwrap();
    assert!(json["processes"]["execs"].as_u64() >= Some(1), "{json}");
    assert!(json["processes"]["forks"].as_u64() >= Some(1), "{json}");
}

#[test]
fn dig_is_named_as_dig_with_its_thread_exe_and_cmdline() {
    require_root!();
    let _ns = NetNs::new();
    let port = free_port();
    let config = ConfigFile::new(&format!("[dns]\nports = [{port}]\n"));
    let mut netmon = Netmon::start(&["--config", &config.arg()]);
    let _server = Dnsmasq::start(port, &["--host-record=web.test,127.0.0.7"]);
    let p = port.to_string();
    let (pid, out) = dig(&["+short", "-p", &p, "@127.0.0.1", "web.test", "A"]);
    assert_eq!(out.trim(), "127.0.0.7");
    let ev = netmon
        .wait_for(WAIT, |e| {
            matches!(&e.body, EventBody::Dns(d) if d.query == "web.test"
                && d.process.as_ref().is_some_and(|p| p.pid == pid))
        })
        .unwrap_or_else(|| panic!("no dns event by dig {pid}: {:#?}", netmon.seen));
    let EventBody::Dns(d) = &ev.body else {
        unreachable!()
    };
    let proc_: &ProcessInfo = d.process.as_ref().unwrap();
    // The process's name, not its `isc-net-NNNN` thread's (that one is in `thread`).
    assert_eq!(proc_.comm, "dig", "{proc_:?}");
    if let Some(t) = &proc_.thread {
        assert_ne!(t, "dig");
    }
    let exe = proc_.detail.exe.as_deref().unwrap_or_default();
    assert!(exe.starts_with('/') && exe.ends_with("/dig"), "{proc_:?}");
    let cmdline = proc_.detail.cmdline.as_deref().unwrap_or_default();
    assert!(
        cmdline.starts_with("dig +short -p") && cmdline.ends_with("web.test A"),
        "{proc_:?}"
    );
    assert_eq!(proc_.detail.user.as_deref(), Some("root"));
    assert_eq!(proc_.detail.ppid, Some(std::process::id()));
    assert_eq!(proc_.detail.parent, Some(my_exe()));
    let (status, _) = netmon.stop();
    assert!(status.success());
}

#[test]
fn a_thousand_processes_that_exit_right_after_connect_are_all_fully_named() {
    require_root!();
    let _ns = NetNs::new();
    let port = http_server();
    let mut netmon = Netmon::start(&[]);
    let quick = quick_bin();
    let quick_s = quick.to_string_lossy().into_owned();
    let addr = format!("127.0.0.1:{port}");
    const N: usize = 1000;
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..N {
        let status = Command::new(&quick).arg(&addr).status().unwrap();
        assert!(status.success());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let named = |e: &Event| -> Option<u32> {
        let p = connect_to(e, port)?.process.as_ref()?;
        let d = &p.detail;
        (p.comm == "netmon-quick"
            && d.exe.as_deref() == Some(quick_s.as_str())
            && d.cmdline.as_deref() == Some(format!("{quick_s} {addr}").as_str())
            && d.ppid == Some(std::process::id())
            && d.parent.as_deref() == Some(my_exe().as_str())
            && d.user.as_deref() == Some("root")
            && d.start_time.is_some())
        .then_some(p.pid)
    };
    loop {
        netmon.collect_for(Duration::from_millis(500));
        let connects = netmon
            .seen
            .iter()
            .filter(|e| connect_to(e, port).is_some())
            .count();
        if connects >= N || Instant::now() > deadline {
            break;
        }
    }
    let mut unnamed = Vec::new();
    for e in &netmon.seen {
        if connect_to(e, port).is_none() {
            continue;
        }
        match named(e) {
            Some(pid) => {
                pids.insert(pid);
            }
            None => unnamed.push(e.clone()),
        }
    }
    assert!(
        unnamed.is_empty(),
        "{} not fully named, e.g. {:#?}",
        unnamed.len(),
        unnamed.first()
    );
    assert_eq!(pids.len(), N, "connects of distinct processes");
    let (status, _) = netmon.stop();
    assert!(status.success());
}

#[test]
fn a_process_renamed_tor_shows_its_real_exe_and_does_not_pass_a_path_allowlist() {
    require_root!();
    let _ns = NetNs::new();
    let port = http_server();
    // Connections to this port alert unless they come from the real tor binary.
    let config = ConfigFile::new(&format!(
        "[rules.suspicious_port]\nextra_ports = [{port}]\nallow = {{ process = [\"/usr/bin/tor\"] }}\n"
    ));
    let mut netmon = Netmon::start(&["--config", &config.arg()]);
    let quick = quick_bin();
    let mut child = Command::new(&quick)
        .args([format!("127.0.0.1:{port}"), "tor".into()])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let ev = netmon
        .wait_for(WAIT, |e| {
            connect_to(e, port).is_some_and(|c| c.process.as_ref().is_some_and(|p| p.pid == pid))
        })
        .expect("no connect");
    let p = connect_to(&ev, port).unwrap().process.clone().unwrap();
    assert_eq!(p.comm, "tor");
    assert_eq!(p.detail.exe.as_deref(), Some(quick.to_str().unwrap()));
    let alert = netmon.wait_for(WAIT, |e| {
        matches!(&e.body, EventBody::Alert(a) if a.rule == "SUSPICIOUS_PORT"
            && a.process.as_ref().is_some_and(|p| p.pid == pid))
    });
    let alert =
        alert.unwrap_or_else(|| panic!("the fake tor passed the allowlist: {:#?}", netmon.seen));
    let EventBody::Alert(a) = &alert.body else {
        unreachable!()
    };
    let ap = a.process.as_ref().unwrap();
    assert_eq!(ap.detail.exe.as_deref(), Some(quick.to_str().unwrap()));
    let (status, _) = netmon.stop();
    assert!(status.success());
}
