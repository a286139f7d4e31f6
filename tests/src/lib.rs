//! Helpers for netmon's root-only integration tests: a private network namespace per
//! test (restored on drop), a real `netmon run` child whose JSON lines are parsed back
//! with serde, and the `netmon-testpeer` process that plays the other side.
//!
//! Environment: `NETMON_BIN` (the netmon binary; default: `netmon` beside the test's
//! target directory), `NETMON_BACKEND` (`auto` by default), `NETMON_EXPECT_AUTO` (the
//! backend `auto` must pick on this kernel, when the runner knows it).
use std::{
    ffi::CString,
    fs::File,
    io::{BufRead, BufReader},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    thread,
    time::{Duration, Instant},
};

use netmon::event::{Event, EventBody};

/// True when running as root; tests print why they skip otherwise.
pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips (returns from) the calling test with a printed reason unless root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipped: needs root (loads eBPF programs, creates network namespaces)");
            return;
        }
    };
}

pub fn backend() -> String {
    std::env::var("NETMON_BACKEND").unwrap_or_else(|_| "auto".into())
}

/// The netmon binary under test.
pub fn netmon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETMON_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> -> target/<profile>/netmon
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("netmon"))
        .expect("test binary lives in target/<profile>/deps")
}

/// The peer binary built from this package.
pub fn testpeer_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_netmon-testpeer") {
        let p = PathBuf::from(p);
        if p.exists() {
            return p;
        }
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("netmon-testpeer"))
        .expect("test binary lives in target/<profile>/deps")
}

/// The map-churning workloads of `tests/blind.rs` (`netmon-blind`).
pub fn blind_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_netmon-blind") {
        let p = PathBuf::from(p);
        if p.exists() {
            return p;
        }
    }
    testpeer_bin().with_file_name("netmon-blind")
}

/// The short-lived connecting binary built from this package (`netmon-quick`).
pub fn quick_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_netmon-quick") {
        let p = PathBuf::from(p);
        if p.exists() {
            return p;
        }
    }
    testpeer_bin().with_file_name("netmon-quick")
}

/// A fresh network namespace for the calling thread, with `lo` up. Sockets and child
/// processes created by this thread live in it; dropping the guard returns the thread
/// to the namespace it had.
pub struct NetNs {
    old: File,
    /// Inode of the new namespace, as netmon reports it in `netns`.
    pub inode: u32,
}

impl NetNs {
    pub fn new() -> NetNs {
        let old = File::open("/proc/thread-self/ns/net").expect("open current netns");
        // SAFETY: unshare only affects the calling thread's namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        set_lo_up();
        let inode = netns_inode();
        NetNs { old, inode }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // SAFETY: a valid netns fd.
        unsafe { libc::setns(self.old.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

impl Default for NetNs {
    fn default() -> Self {
        NetNs::new()
    }
}

/// Inode of the calling thread's network namespace.
pub fn netns_inode() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat netns")
        .ino() as u32
}

fn set_lo_up() {
    // SAFETY: plain socket + ioctl on a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0);
        let mut req: libc::ifreq = std::mem::zeroed();
        let name = CString::new("lo").unwrap();
        for (i, b) in name.as_bytes_with_nul().iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req),
            0,
            "bring lo up"
        );
        libc::close(fd);
    }
}

/// What a test's `netmon run` adds for its history: nothing when `args` already say
/// (`--history FILE`, `--no-history`), else `--no-history`, so that no test writes to
/// the default /var/lib/netmon/netmon.db that every run would share. A test about the
/// history gives its own file in a [`Scratch`] directory.
pub fn history_args(args: &[&str]) -> &'static [&'static str] {
    if args
        .iter()
        .any(|a| *a == "--no-history" || *a == "--history" || a.starts_with("--history="))
    {
        &[]
    } else {
        &["--no-history"]
    }
}

/// The name the kernel gives the calling thread (`comm`).
pub fn thread_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .expect("read comm")
        .trim_end()
        .to_owned()
}

/// The name of this process (its thread-group leader's `comm`): what netmon reports
/// as `process.comm`; the acting thread's name is `process.thread` when it differs.
pub fn process_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("read comm")
        .trim_end()
        .to_owned()
}

pub fn gettid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// A running `netmon run --format json`, its events parsed as they arrive.
pub struct Netmon {
    child: Child,
    events: Receiver<Event>,
    /// Every event received so far, in order.
    pub seen: Vec<Event>,
    /// Lines that did not parse as events (must stay empty).
    pub bad_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Everything netmon wrote to stderr so far.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Netmon {
    /// Starts netmon with the backend under test and waits for its `probe` line.
    pub fn start(extra: &[&str]) -> Netmon {
        let backend = backend();
        match Netmon::try_start(&backend, extra) {
            Ok(n) => n,
            Err(e) => panic!("netmon --backend {backend} did not start: {e}"),
        }
    }

    /// Starts netmon with `backend`; `Err` with its stderr when it exits before
    /// printing its `probe` line (e.g. a backend this kernel refuses).
    pub fn try_start(backend: &str, extra: &[&str]) -> Result<Netmon, String> {
        Netmon::try_start_wrapped(&[], &netmon_bin(), backend, extra)
    }

    /// As [`Netmon::try_start`], with the binary `netmon` started through `wrapper`
    /// (e.g. `setpriv --reuid … --ambient-caps …`), when `wrapper` is not empty.
    /// Without `--history FILE` (or `--no-history`) in `extra` it runs with
    /// `--no-history`: tests never share the default /var/lib/netmon/netmon.db.
    pub fn try_start_wrapped(
        wrapper: &[&str],
        netmon: &std::path::Path,
        backend: &str,
        extra: &[&str],
    ) -> Result<Netmon, String> {
        let mut args = history_args(extra).to_vec();
        args.extend_from_slice(extra);
        Netmon::try_start_default_history(wrapper, netmon, backend, &args)
    }

    /// As [`Netmon::try_start_wrapped`], with netmon's own history default (the file
    /// in /var/lib/netmon): only for tests of that default.
    pub fn try_start_default_history(
        wrapper: &[&str],
        netmon: &std::path::Path,
        backend: &str,
        extra: &[&str],
    ) -> Result<Netmon, String> {
        let mut args = vec!["run", "--format", "json", "--backend", backend];
        args.extend_from_slice(extra);
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(netmon);
                c
            }
            None => Command::new(netmon),
        };
        let mut child = command
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", netmon.display()));
        let stderr_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = stderr_text.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        let bad_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let bad = bad_lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Event>(&line) {
                    Ok(ev) => {
                        if tx.send(ev).is_err() {
                            break;
                        }
                    }
                    Err(e) => bad.lock().unwrap().push(format!("{e}: {line}")),
                }
            }
        });
        let mut netmon = Netmon {
            child,
            events: rx,
            seen: Vec::new(),
            bad_lines,
            stderr: stderr_text.clone(),
        };
        let Some(probe) = netmon.wait_for(Duration::from_secs(60), |e| {
            matches!(e.body, EventBody::Probe(_))
        }) else {
            let _ = netmon.child.wait();
            thread::sleep(Duration::from_millis(100));
            return Err(stderr_text.lock().unwrap().clone());
        };
        let EventBody::Probe(report) = &probe.body else {
            unreachable!()
        };
        check_probe(report, backend);
        Ok(netmon)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first event (already seen or arriving within `timeout`) matching `pred`.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return Some(e.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ev) => {
                    let hit = pred(&ev);
                    self.seen.push(ev.clone());
                    if hit {
                        return Some(ev);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None;
                }
            }
        }
    }

    /// Collects events for `dur` (for checking that something does *not* happen).
    pub fn collect_for(&mut self, dur: Duration) {
        let _ = self.wait_for(dur, |_| false);
    }

    /// SIGTERM, then all remaining output and the exit status.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<Event>) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait netmon") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "netmon did not exit within 30 s of SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
        };
        while let Ok(ev) = self.events.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(ev);
        }
        let bad = self.bad_lines.lock().unwrap().clone();
        assert!(
            bad.is_empty(),
            "netmon wrote lines that are not events: {bad:?}"
        );
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Netmon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The probe line must show the requested backend on every capability it covers, and
/// `auto` must pick what the runner expects on this kernel.
fn check_probe(report: &netmon::event::ProbeReport, backend: &str) {
    let expect = match backend {
        "auto" => std::env::var("NETMON_EXPECT_AUTO").ok(),
        other => Some(other.to_owned()),
    };
    // The process table's tracepoints exist on every kernel netmon supports: failing to
    // attach them (a verifier rejection on an old kernel, say) fails every test.
    let table = report
        .capabilities
        .iter()
        .find(|c| c.capability == "process_exit");
    assert!(
        table.is_some_and(|c| c.backend.is_some()),
        "process table (exec/fork/exit tracepoints) not attached: {table:?}"
    );
    for cap in &report.capabilities {
        // Optional capabilities use the cgroup hooks whatever the backend.
        if OPTIONAL_CAPABILITIES.contains(&cap.capability.as_str()) {
            continue;
        }
        let used = cap.backend.as_deref();
        assert!(
            used.is_some(),
            "capability {} not attached: {:?}",
            cap.capability,
            cap.skipped
        );
        if let Some(want) = &expect {
            assert_eq!(
                used,
                Some(want.as_str()),
                "capability {}: {:?}",
                cap.capability,
                cap
            );
        }
    }
}

/// Capabilities that are not provided by the requested backend (see `probe.rs`):
/// DNS capture on cgroup hooks, and the process-exit tracepoint.
pub const OPTIONAL_CAPABILITIES: &[&str] = &["dns", "process_exit"];

/// A directory of the test's own under `/tmp` (`netmon-test-{tag}-{pid}-{n}`), removed
/// with everything in it on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Made, empty.
    pub fn new(tag: &str) -> Scratch {
        Scratch::under(&std::env::temp_dir(), tag)
    }

    /// Made, empty, under `base` (e.g. beside a binary, for hard links to it).
    pub fn under(base: &Path, tag: &str) -> Scratch {
        let s = Scratch::reserve_under(base, tag);
        std::fs::create_dir_all(&s.0).unwrap();
        s
    }

    /// Named but not made: for what netmon must create itself (and its mode).
    pub fn reserve(tag: &str) -> Scratch {
        Scratch::reserve_under(&std::env::temp_dir(), tag)
    }

    fn reserve_under(base: &Path, tag: &str) -> Scratch {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("netmon-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free port on the calling thread's namespace (TCP and UDP both free when checked).
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Writes a configuration file for netmon and removes it on drop.
pub struct ConfigFile {
    pub path: PathBuf,
}

impl ConfigFile {
    pub fn new(text: &str) -> ConfigFile {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("netmon-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write config");
        ConfigFile { path }
    }

    pub fn arg(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A real dnsmasq on loopback (127.0.0.1 and ::1) of the calling thread's namespace,
/// answering only from the records it is given (`--no-resolv --no-hosts`).
pub struct Dnsmasq {
    child: Child,
    pub port: u16,
}

impl Dnsmasq {
    /// `records` are dnsmasq options such as `--host-record=web.test,127.0.0.7` or
    /// `--address=/tunnel.test/127.0.0.9`.
    pub fn start(port: u16, records: &[&str]) -> Dnsmasq {
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--interface=lo",
            "--listen-address=127.0.0.1,::1",
            "--pid-file=",
            "--user=root",
            "--cache-size=0",
            "--log-facility=/dev/null",
        ])
        .arg(format!("--port={port}"))
        .args(records)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        let child = cmd
            .spawn()
            .expect("spawn dnsmasq (apt-get install dnsmasq)");
        let d = Dnsmasq { child, port };
        // Ready when it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = Command::new("dig")
                .args([
                    "+short",
                    "+time=1",
                    "+tries=1",
                    "-p",
                    &port.to_string(),
                    "@127.0.0.1",
                    "ready.invalid",
                ])
                .output();
            if out.is_ok_and(|o| o.status.success()) {
                return d;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("dnsmasq did not answer on port {port} within 10 s");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `dig ARGS…` and returns (pid, stdout).
pub fn dig(args: &[&str]) -> (u32, String) {
    let child = Command::new("dig")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn dig (apt-get install dnsutils)");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait dig");
    assert!(out.status.success(), "dig {args:?} failed");
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Alerts of one rule among `events`.
pub fn alerts<'a>(
    events: &'a [Event],
    rule: &'a str,
) -> impl Iterator<Item = &'a netmon::event::Alert> + 'a {
    events.iter().filter_map(move |e| match &e.body {
        EventBody::Alert(a) if a.rule == rule => Some(a),
        _ => None,
    })
}

/// A running `netmon-testpeer` child.
pub struct Peer {
    pub child: Child,
    lines: Receiver<String>,
}

impl Peer {
    /// Spawns `netmon-testpeer ARGS…` (in the calling thread's network namespace).
    pub fn spawn(args: &[&str]) -> Peer {
        Peer::spawn_with_stdin(args, Stdio::null())
    }

    /// As [`Peer::spawn`], with stdin a pipe: the peer's `tcp-many` holds its
    /// connections until [`Peer::release`].
    pub fn spawn_holding(args: &[&str]) -> Peer {
        Peer::spawn_with_stdin(args, Stdio::piped())
    }

    /// Closes the peer's stdin.
    pub fn release(&mut self) {
        drop(self.child.stdin.take());
    }

    fn spawn_with_stdin(args: &[&str], stdin: Stdio) -> Peer {
        Peer::spawn_program(&testpeer_bin(), args, stdin)
    }

    /// Spawns `program ARGS…` (another test binary that prints one fact per line),
    /// stdin a pipe that [`Peer::release`] closes.
    pub fn spawn_program(program: &Path, args: &[&str], stdin: Stdio) -> Peer {
        let mut child = Command::new(program)
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer { child, lines: rx }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the peer prints (within 30 s).
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("testpeer printed nothing within 30 s")
    }

    /// The port from the `port N` line a `tcp-server` peer prints once it listens.
    pub fn port(&self) -> u16 {
        self.numbered_line("port")
    }

    /// The source port from the `local N` line a `udp-send` peer prints.
    pub fn local_port(&self) -> u16 {
        self.numbered_line("local")
    }

    /// The count of the next line, which must read `<word> N` (within 120 s: the
    /// map-churning workloads take a while).
    pub fn count(&self, word: &str) -> u64 {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no `{word} N` line within 120 s"));
        line.strip_prefix(word)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the peer printed {line:?}, not `{word} N`"))
    }

    /// The number of the next line, which must read `<word> N`.
    fn numbered_line(&self, word: &str) -> u16 {
        let line = self.line();
        line.strip_prefix(word)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("testpeer printed {line:?}, not `{word} N`"))
    }

    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait testpeer")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Program and link ids netmon holds, read from its fdinfo while it runs.
pub fn bpf_ids_held_by(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let mut progs = Vec::new();
    let mut links = Vec::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("prog_id:") {
                progs.extend(v.trim().parse::<u32>().ok());
            }
            if let Some(v) = line.strip_prefix("link_id:") {
                links.extend(v.trim().parse::<u32>().ok());
            }
        }
    }
    progs.sort();
    progs.dedup();
    links.sort();
    links.dedup();
    (progs, links)
}

/// Whether a BPF program with this id is still loaded in the kernel.
pub fn bpf_prog_exists(id: u32) -> bool {
    bpf_obj_get_fd_by_id(BPF_PROG_GET_FD_BY_ID, id)
}

/// Whether a BPF link with this id still exists.
pub fn bpf_link_exists(id: u32) -> bool {
    bpf_obj_get_fd_by_id(BPF_LINK_GET_FD_BY_ID, id)
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

fn bpf_obj_get_fd_by_id(cmd: libc::c_long, id: u32) -> bool {
    // union bpf_attr for *_GET_FD_BY_ID starts with the u32 id.
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: a valid attr buffer of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if fd >= 0 {
        // SAFETY: we own the fd just returned.
        unsafe { libc::close(fd as i32) };
        true
    } else {
        false
    }
}

/// Filters: connection events of one type inside one network namespace.
pub fn conn_events<'a>(
    events: &'a [Event],
    kind: &'a str,
    netns: u32,
) -> impl Iterator<Item = &'a netmon::event::Connection> + 'a {
    events.iter().filter_map(move |e| {
        let c = e.body.connection()?;
        (e.body.type_name() == kind && c.netns == Some(netns)).then_some(c)
    })
}
