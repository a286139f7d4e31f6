//! What a running netmon may still do: after start it keeps only CAP_SYS_PTRACE and
//! CAP_SYS_ADMIN and sets no_new_privs, still names processes, and still detaches everything at exit;
//! and it runs without root with the capabilities the shipped systemd unit grants.
use std::{net::TcpStream, path::PathBuf, time::Duration};

use netmon::event::EventBody;
use netmon_tests::{
    NetNs, Netmon, Peer, backend, bpf_ids_held_by, bpf_prog_exists, conn_events, netmon_bin,
    require_root,
};

const WAIT: Duration = Duration::from_secs(20);
/// `CAP_SYS_PTRACE` (19) and `CAP_SYS_ADMIN` (21).
const KEPT: u64 = 1 << 19 | 1 << 21;

/// `CapEff`, `CapPrm`, `CapBnd` (hex) and `NoNewPrivs` of a process: the same in every
/// one of its threads (capabilities are per thread), else the test fails.
fn privileges_of(pid: u32) -> (u64, u64, u64, u32) {
    let mut all = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| (t.file_name(), status_privileges(&t.path().join("status"))));
    let (_, first) = all.next().expect("a process without threads");
    for (tid, p) in all {
        assert_eq!(p, first, "thread {tid:?} of {pid} has other privileges");
    }
    first
}

fn status_privileges(path: &std::path::Path) -> (u64, u64, u64, u32) {
    let pid = path.display();
    let status = std::fs::read_to_string(path).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .to_string()
    };
    let hex = |name: &str| u64::from_str_radix(&field(name), 16).unwrap();
    (
        hex("CapEff:"),
        hex("CapPrm:"),
        hex("CapBnd:"),
        field("NoNewPrivs:").parse().unwrap(),
    )
}

/// The capabilities have been dropped once the loop runs: the probe line comes after
/// the drop, so poll briefly rather than guess.
fn wait_for_privileges(pid: u32, want_eff: u64) -> (u64, u64, u64, u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let p = privileges_of(pid);
        if p.0 == want_eff || std::time::Instant::now() > deadline {
            return p;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A listener in `ns` (a test peer blocked in accept, so alive while netmon reads
/// its /proc entry), seen by `netmon` with its process named, then one connection.
fn assert_names_a_connection(netmon: &mut Netmon, ns: &NetNs) {
    let server = Peer::spawn(&["tcp-server", "127.0.0.1:0", "10"]);
    let port = server.port();
    let listen = netmon.wait_for(WAIT, |e| {
        e.body.type_name() == "listen"
            && e.body
                .connection()
                .is_some_and(|c| c.dst.port == port && c.netns == Some(ns.inode))
    });
    let listen = listen.unwrap_or_else(|| panic!("no listen event: {:#?}", netmon.seen));
    let process = listen.body.connection().unwrap().process.clone();
    let process = process.expect("listen without process");
    assert_eq!(process.pid, server.pid());
    // The executable's path comes from /proc/<pid>/exe: ptrace read access.
    assert!(
        process
            .detail
            .exe
            .as_deref()
            .is_some_and(|e| e.ends_with("/netmon-testpeer")),
        "exe not read after the drop: {process:?}"
    );
    drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    let accepted = netmon.wait_for(WAIT, |e| {
        e.body.type_name() == "accept" && e.body.connection().is_some_and(|c| c.dst.port == port)
    });
    assert!(accepted.is_some(), "no accept event: {:#?}", netmon.seen);
    assert_eq!(conn_events(&netmon.seen, "accept", ns.inode).count(), 1);
}

fn stop_and_check_detached(netmon: Netmon) {
    let (progs, _links) = bpf_ids_held_by(netmon.pid());
    assert!(!progs.is_empty(), "netmon holds no programs");
    let (status, _) = netmon.stop();
    assert!(status.success(), "netmon exited with {status}");
    // A raw tracepoint's program (the process table's `sched_process_fork`) is freed
    // after an RCU grace period once its link is closed, which a loaded machine can
    // stretch to a few hundred ms: allow 2 s, then every program must be gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let left = loop {
        let left: Vec<_> = progs.iter().filter(|id| bpf_prog_exists(**id)).collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(left.is_empty(), "programs left loaded: {left:?}");
}

#[test]
fn netmon_run_keeps_only_ptrace_and_sys_admin_and_sets_no_new_privs() {
    require_root!();
    let ns = NetNs::new();
    let mut netmon = Netmon::start(&[]);
    let (eff, prm, bnd, nnp) = wait_for_privileges(netmon.pid(), KEPT);
    assert_eq!(eff, KEPT, "effective {eff:#x}");
    assert_eq!(prm, KEPT, "permitted {prm:#x}");
    assert_eq!(bnd, KEPT, "bounding {bnd:#x}");
    assert_eq!(nnp, 1, "no_new_privs not set");
    assert_names_a_connection(&mut netmon, &ns);
    stop_and_check_detached(netmon);
}

#[test]
fn keep_privileges_keeps_them() {
    require_root!();
    let _ns = NetNs::new();
    let mine = privileges_of(std::process::id());
    let netmon = Netmon::start(&["--keep-privileges"]);
    std::thread::sleep(Duration::from_millis(300));
    let (eff, _, bnd, nnp) = privileges_of(netmon.pid());
    assert_eq!((eff, bnd, nnp), (mine.0, mine.2, 0));
    stop_and_check_detached(netmon);
}

/// The `AmbientCapabilities=` of the shipped unit, as setpriv's `+cap,+cap` list.
fn unit_capabilities() -> String {
    let unit = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/netmon.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit grants no AmbientCapabilities");
    line.split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn runs_as_nobody_with_the_systemd_units_capabilities() {
    require_root!();
    let caps = unit_capabilities();
    // A copy that uid nobody may execute, whatever the mode of the build tree.
    let dir = std::env::temp_dir().join(format!("netmon-privileges-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("netmon");
    std::fs::copy(netmon_bin(), &bin).unwrap();
    for (path, mode) in [(&dir, 0o755), (&bin, 0o755)] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let inh = format!("--inh-caps=-all,{caps}");
    let amb = format!("--ambient-caps=-all,{caps}");
    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        inh.as_str(),
        amb.as_str(),
    ];
    let ns = NetNs::new();
    // netmon's own history default (/var/lib/netmon/netmon.db), which nobody cannot
    // create or write (the directory is root's, 0700, or /var/lib is): one warning,
    // and monitoring goes on without a history.
    let started =
        Netmon::try_start_default_history(&wrapper, &bin, &backend(), &["--stats-interval", "1"]);
    let _ = std::fs::remove_dir_all(&dir);
    let mut netmon =
        started.unwrap_or_else(|e| panic!("netmon did not start as nobody with {caps}: {e}"));
    let uid_line = std::fs::read_to_string(format!("/proc/{}/status", netmon.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    assert!(uid_line.contains("65534"), "{uid_line}");
    let (eff, prm, _bnd, nnp) = wait_for_privileges(netmon.pid(), KEPT);
    assert_eq!((eff, prm, nnp), (KEPT, KEPT, 1));
    assert_names_a_connection(&mut netmon, &ns);
    let stats = netmon
        .wait_for(WAIT, |e| matches!(e.body, EventBody::Stats(_)))
        .expect("no stats line");
    let EventBody::Stats(stats) = &stats.body else {
        unreachable!()
    };
    assert!(
        stats.history.is_none() && !stats.consumers.contains_key("history"),
        "a history writer runs as nobody: {stats:?}"
    );
    let stderr = netmon.stderr.lock().unwrap().clone();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("history")).collect();
    assert_eq!(warnings.len(), 1, "one line about the history: {stderr}");
    assert!(
        warnings[0].starts_with("netmon: warning: the history is off: ")
            && warnings[0].contains(netmon::history::DEFAULT_PATH.rsplit_once('/').unwrap().0)
            && warnings[0].contains("--no-history"),
        "{}",
        warnings[0]
    );
    stop_and_check_detached(netmon);
}
