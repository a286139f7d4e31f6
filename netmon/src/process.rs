//! Process context: what `/proc/<pid>` says about the process behind an event (`exe`,
//! `cmdline`, `user`, `ppid`, `container`), cached per pid and forgotten when the
//! process exits, so a reused pid never inherits another program's context.
//!
//! Exits come from the kernel (`sched:sched_process_exit`, see
//! `netmon-ebpf/src/process_exit.rs`); as a second guard, an entry whose `comm` no
//! longer matches the event's is read again. A process that is gone before netmon
//! looks keeps the kernel's fields and gets null context; every failed read is
//! counted by reason. The parsers (`cgroup`, `status`, `passwd`) are pure and
//! unit-tested; only [`ProcessCache`] touches the file system.
//!
//! This is the one process-context cache and the one `/etc/passwd` reader of netmon:
//! `netmon run` enriches events from it and its rules ask it what an event does not
//! carry (through [`Processes`], a handle shared by the stages of the pipeline's one
//! thread); `netmon snapshot`'s rules ask a [`ProcessCache`] of their own.
//!
//! Over 600 lines: the container-cgroup parser's cases and the tests that pin them
//! (about half the file) belong beside the cache they feed.
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    fs, io,
    path::{Path, PathBuf},
    rc::Rc,
    sync::Arc,
};

use netmon_common::{EventHeader, kind};

use crate::{
    event::{Container, ProcessDetail, ProcessInfo, ProcessStats},
    rules::ProcessResolver,
    sockets::reason,
};

/// Longest `cmdline` kept, in bytes.
const CMDLINE_MAX: usize = 4096;

struct Entry {
    /// `comm` when the entry was read, to notice a pid reused without an exit event.
    comm: String,
    detail: Arc<ProcessDetail>,
}

/// Per-pid cache of process context. Owned by one task; no locks.
pub struct ProcessCache {
    proc_root: PathBuf,
    passwd_path: PathBuf,
    entries: HashMap<u32, Entry>,
    users: Option<HashMap<u32, String>>,
    exits: u64,
    unreadable: BTreeMap<String, u64>,
    /// Most entries kept; beyond it the cache is cleared (exits keep it small anyway).
    max_entries: usize,
}

impl Default for ProcessCache {
    fn default() -> Self {
        ProcessCache::new(Path::new("/proc"), Path::new("/etc/passwd"))
    }
}

impl ProcessCache {
    pub fn new(proc_root: &Path, passwd: &Path) -> ProcessCache {
        ProcessCache {
            proc_root: proc_root.to_owned(),
            passwd_path: passwd.to_owned(),
            entries: HashMap::new(),
            users: None,
            exits: 0,
            unreadable: BTreeMap::new(),
            max_entries: 65536,
        }
    }

    /// Fills `process.detail` from the cache, reading `/proc` on a miss.
    pub fn enrich(&mut self, process: &mut ProcessInfo) {
        process.detail = self.detail(process.pid, process.uid, &process.comm);
    }

    /// Context of `pid` (whose kernel `comm` is `comm`), from the cache or `/proc`.
    pub fn detail(&mut self, pid: u32, uid: u32, comm: &str) -> Arc<ProcessDetail> {
        if pid == 0 {
            return Arc::default();
        }
        if let Some(e) = self.entries.get(&pid)
            && e.comm == comm
        {
            return e.detail.clone();
        }
        let (detail, read_comm) = self.read(pid, Some(uid));
        self.insert(pid, read_comm.unwrap_or_else(|| comm.to_owned()), detail)
    }

    fn insert(&mut self, pid: u32, comm: String, detail: ProcessDetail) -> Arc<ProcessDetail> {
        let detail = Arc::new(detail);
        if self.entries.len() >= self.max_entries {
            self.entries.clear();
        }
        self.entries.insert(
            pid,
            Entry {
                comm,
                detail: detail.clone(),
            },
        );
        detail
    }

    /// The executable of `pid` when only the pid is known (what a rule asks of a
    /// process its event did not describe): from the cache, else read and cached.
    pub fn exe(&mut self, pid: u32) -> Option<String> {
        if pid == 0 {
            return None;
        }
        if let Some(e) = self.entries.get(&pid) {
            return e.detail.exe.clone();
        }
        let (detail, comm) = self.read(pid, None);
        let exe = detail.exe.clone();
        // Gone (no comm read): nothing worth caching; the next event reads again.
        if let Some(comm) = comm {
            self.insert(pid, comm, detail);
        }
        exe
    }

    /// The process exited: forget it.
    pub fn exited(&mut self, pid: u32) {
        self.exits += 1;
        self.entries.remove(&pid);
    }

    pub fn stats(&self) -> ProcessStats {
        ProcessStats {
            cached: self.entries.len() as u64,
            exits: self.exits,
            unreadable: self.unreadable.clone(),
        }
    }

    /// A process known only from `/proc` (a socket owner found at start): the kernel's
    /// fields read from `status`, plus the context. `None` when the process is gone.
    pub fn from_proc(&mut self, pid: u32, cgroup2_root: Option<&Path>) -> Option<ProcessInfo> {
        let dir = self.proc_root.join(pid.to_string());
        let status = match fs::read_to_string(dir.join("status")) {
            Ok(s) => s,
            Err(e) => {
                self.count(&e);
                return None;
            }
        };
        let st = parse_status(&status);
        let comm = st.name.clone().unwrap_or_default();
        let cgroup_id = cgroup2_root
            .and_then(|root| {
                let text = fs::read_to_string(dir.join("cgroup")).ok()?;
                cgroup_v2_id(root, &text)
            })
            .unwrap_or(0);
        let uid = st.uid.unwrap_or(0);
        let mut p = ProcessInfo::kernel(pid, pid, comm, uid, st.gid.unwrap_or(0), cgroup_id);
        self.enrich(&mut p);
        Some(p)
    }

    fn count(&mut self, e: &io::Error) {
        *self.unreadable.entry(reason(e).to_owned()).or_default() += 1;
    }

    /// Reads the context of `pid` (whose real uid is `uid`, or what its `status`
    /// says when not given); the `comm` it had then, when readable.
    fn read(&mut self, pid: u32, uid: Option<u32>) -> (ProcessDetail, Option<String>) {
        let dir = self.proc_root.join(pid.to_string());
        let mut detail = ProcessDetail {
            user: uid.and_then(|uid| self.user_name(uid)),
            ..ProcessDetail::default()
        };
        let status = match fs::read_to_string(dir.join("status")) {
            Ok(s) => s,
            Err(e) => {
                self.count(&e);
                return (detail, None);
            }
        };
        let st = parse_status(&status);
        if uid.is_none() {
            detail.user = st.uid.and_then(|uid| self.user_name(uid));
        }
        detail.ppid = st.ppid;
        match fs::read_link(dir.join("exe")) {
            Ok(p) => detail.exe = Some(p.to_string_lossy().into_owned()),
            // Kernel threads have no exe; that is not a failure.
            Err(e) if e.kind() == io::ErrorKind::NotFound && st.is_kernel_thread() => {}
            Err(e) => self.count(&e),
        }
        match fs::read(dir.join("cmdline")) {
            Ok(raw) => detail.cmdline = parse_cmdline(&raw),
            Err(e) => self.count(&e),
        }
        if let Ok(text) = fs::read_to_string(dir.join("cgroup")) {
            detail.container = container_of(&text);
        }
        (detail, st.name)
    }

    /// The name of user `uid`: the first `/etc/passwd` line with that uid, as
    /// `getpwuid` answers (read once, on first use).
    pub fn user_name(&mut self, uid: u32) -> Option<String> {
        let users = self.users.get_or_insert_with(|| {
            fs::read_to_string(&self.passwd_path)
                .map(|t| parse_passwd(&t))
                .unwrap_or_default()
        });
        users.get(&uid).cloned()
    }
}

impl ProcessResolver for ProcessCache {
    fn exe(&mut self, pid: u32) -> Option<String> {
        ProcessCache::exe(self, pid)
    }

    fn user(&mut self, uid: u32) -> Option<String> {
        self.user_name(uid)
    }
}

/// The pipeline's one [`ProcessCache`], shared by the stages of its one thread: the
/// enrichment stage fills events from it, the rules ask it (as their
/// [`ProcessResolver`]) what an event did not carry, so a process is read once.
/// Not `Send`: the stages that share it run on the pipeline's thread.
#[derive(Clone, Default)]
pub struct Processes(Rc<RefCell<ProcessCache>>);

impl Processes {
    pub fn new(cache: ProcessCache) -> Processes {
        Processes(Rc::new(RefCell::new(cache)))
    }

    /// The cache, for one call (never held across another stage's).
    pub fn get(&self) -> std::cell::RefMut<'_, ProcessCache> {
        self.0.borrow_mut()
    }
}

impl ProcessResolver for Processes {
    fn exe(&mut self, pid: u32) -> Option<String> {
        self.get().exe(pid)
    }

    fn user(&mut self, uid: u32) -> Option<String> {
        self.get().user_name(uid)
    }
}

/// The pid of a process-exit record from the ring buffer, `None` for other records.
pub fn exit_pid(record: &[u8]) -> Option<u32> {
    if record.len() < std::mem::size_of::<EventHeader>() {
        return None;
    }
    // SAFETY: length checked; EventHeader is a plain repr(C) wire type valid for any bytes.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    (header.kind == kind::EXIT).then_some(header.process.pid)
}

/// What netmon uses from `/proc/<pid>/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub name: Option<String>,
    pub ppid: Option<u32>,
    /// Real uid and gid (what `bpf_get_current_uid_gid` reports).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    kthread: bool,
}

impl Status {
    fn is_kernel_thread(&self) -> bool {
        self.kthread || self.ppid == Some(2) || self.ppid == Some(0)
    }
}

pub fn parse_status(text: &str) -> Status {
    let mut st = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let first = || value.split_whitespace().next()?.parse::<u32>().ok();
        match key {
            "Name" => st.name = Some(value.to_owned()),
            "PPid" => st.ppid = first(),
            "Uid" => st.uid = first(),
            "Gid" => st.gid = first(),
            "Kthread" => st.kthread = value == "1",
            _ => {}
        }
    }
    st
}

/// `cmdline` is NUL-separated; arguments are joined with spaces. Empty for kernel
/// threads and zombies: `None`.
pub fn parse_cmdline(raw: &[u8]) -> Option<String> {
    let raw = &raw[..raw.len().min(CMDLINE_MAX)];
    let trimmed = raw.strip_suffix(b"\0").unwrap_or(raw);
    if trimmed.is_empty() {
        return None;
    }
    let joined: Vec<u8> = trimmed
        .iter()
        .map(|&b| if b == 0 { b' ' } else { b })
        .collect();
    Some(String::from_utf8_lossy(&joined).into_owned())
}

/// uid → name from `/etc/passwd` text. A uid listed twice (an alias such as `toor`
/// after `root`) keeps its first name, as `getpwuid` does.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut users = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse() {
            users.entry(uid).or_insert_with(|| name.to_owned());
        }
    }
    users
}

/// The cgroup v2 id of a process (the inode of its cgroup directory, which is what
/// `bpf_get_current_cgroup_id` returns), from its `/proc/<pid>/cgroup` text.
pub fn cgroup_v2_id(cgroup2_root: &Path, cgroup_text: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let path = cgroup_text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim_start_matches('/');
    fs::metadata(cgroup2_root.join(path)).ok().map(|m| m.ino())
}

/// The container a process runs in, from its `/proc/<pid>/cgroup` text (v1 or v2
/// lines). Recognises the cgroup names that docker, containerd (incl. Kubernetes'
/// `cri-containerd-`), cri-o and podman create, with the systemd and the cgroupfs
/// drivers, and the Kubernetes pod UID (`pod<uid>` in cgroupfs, `pod<uid with _>.slice`
/// with systemd). Conmon and other helpers (`*-conmon-*`) are not the container.
pub fn container_of(cgroup_text: &str) -> Option<Container> {
    let mut best: Option<Container> = None;
    for line in cgroup_text.lines() {
        // `hierarchy-id:controllers:path`; the path may itself contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(c) = container_of_path(path) else {
            continue;
        };
        let better = match &best {
            None => true,
            Some(b) => score(&c) > score(b),
        };
        if better {
            best = Some(c);
        }
    }
    best
}

fn score(c: &Container) -> u8 {
    c.id.is_some() as u8 * 4 + c.runtime.is_some() as u8 * 2 + c.pod_uid.is_some() as u8
}

fn container_of_path(path: &str) -> Option<Container> {
    let mut c = Container::default();
    let mut under_docker = false;
    let mut under_libpod = false;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let name = seg.strip_suffix(".scope").unwrap_or(seg);
        if let Some(uid) = pod_uid(name) {
            c.pod_uid = Some(uid);
            continue;
        }
        if name == "docker" {
            under_docker = true;
            continue;
        }
        if name == "libpod_parent" || name == "machine.slice" {
            under_libpod = name == "libpod_parent";
            continue;
        }
        for (prefix, runtime) in [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("libpod-", "podman"),
            ("containerd-", "containerd"),
            ("nerdctl-", "containerd"),
        ] {
            if let Some(rest) = name.strip_prefix(prefix)
                && is_container_id(rest)
            {
                c.id = Some(rest.to_owned());
                c.runtime = Some(runtime.to_owned());
            }
        }
        if c.id.is_none() && is_container_id(name) {
            c.id = Some(name.to_owned());
            c.runtime = if under_docker {
                Some("docker".into())
            } else if under_libpod {
                Some("podman".into())
            } else {
                None // a bare id under kubepods: docker or containerd, the path does not say
            };
        }
    }
    (c.id.is_some() || c.pod_uid.is_some()).then_some(c)
}

/// 64 lowercase hex digits (docker, containerd, cri-o and podman ids).
fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The pod UID of a `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice`
/// (systemd) segment.
fn pod_uid(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".slice").unwrap_or(seg);
    let at = seg.rfind("pod")?;
    let before = &seg[..at];
    if !(before.is_empty() || before.ends_with('-')) {
        return None;
    }
    let uid = seg[at + 3..].replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    ok.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3c9b1e2a7d8c6b5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";
    const POD: &str = "8a1b2c3d-4e5f-6789-abcd-ef0123456789";

    fn c(id: Option<&str>, runtime: Option<&str>, pod: Option<&str>) -> Option<Container> {
        Some(Container {
            id: id.map(str::to_owned),
            runtime: runtime.map(str::to_owned),
            pod_uid: pod.map(str::to_owned),
        })
    }

    #[test]
    fn docker_cgroupfs_and_systemd() {
        assert_eq!(
            container_of(&format!("0::/docker/{ID}\n")),
            c(Some(ID), Some("docker"), None)
        );
        assert_eq!(
            container_of(&format!("0::/system.slice/docker-{ID}.scope\n")),
            c(Some(ID), Some("docker"), None)
        );
        // cgroup v1 lines of a hybrid host.
        let v1 = format!(
            "12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n"
        );
        assert_eq!(container_of(&v1), c(Some(ID), Some("docker"), None));
    }

    #[test]
    fn kubernetes_containerd_systemd_driver() {
        let pod_ = POD.replace('-', "_");
        let path = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(
            container_of(&path),
            c(Some(ID), Some("containerd"), Some(POD))
        );
        // Guaranteed QoS pods sit right under kubepods.slice.
        let path = format!("0::/kubepods.slice/kubepods-pod{pod_}.slice/cri-containerd-{ID}.scope");
        assert_eq!(
            container_of(&path),
            c(Some(ID), Some("containerd"), Some(POD))
        );
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        let path = format!("0::/kubepods/besteffort/pod{POD}/{ID}\n");
        assert_eq!(container_of(&path), c(Some(ID), None, Some(POD)));
        let path = format!("0::/kubepods/burstable/pod{POD}/crio-{ID}\n");
        assert_eq!(container_of(&path), c(Some(ID), Some("cri-o"), Some(POD)));
        // The pod's own cgroup (the pause sandbox is a container of its own): pod only.
        let path = format!("0::/kubepods/burstable/pod{POD}\n");
        assert_eq!(container_of(&path), c(None, None, Some(POD)));
    }

    #[test]
    fn cri_o_systemd_driver_and_conmon() {
        let pod_ = POD.replace('-', "_");
        let path = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_}.slice/crio-{ID}.scope"
        );
        assert_eq!(container_of(&path), c(Some(ID), Some("cri-o"), Some(POD)));
        // conmon watches the container but is not in it.
        let path = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_}.slice/crio-conmon-{ID}.scope"
        );
        assert_eq!(container_of(&path), c(None, None, Some(POD)));
    }

    #[test]
    fn podman_rootful_rootless_and_cgroupfs() {
        assert_eq!(
            container_of(&format!("0::/machine.slice/libpod-{ID}.scope\n")),
            c(Some(ID), Some("podman"), None)
        );
        assert_eq!(
            container_of(&format!(
                "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"
            )),
            c(Some(ID), Some("podman"), None)
        );
        assert_eq!(
            container_of(&format!("0::/libpod_parent/libpod-{ID}\n")),
            c(Some(ID), Some("podman"), None)
        );
        assert_eq!(
            container_of(&format!("0::/machine.slice/libpod-conmon-{ID}.scope\n")),
            None
        );
    }

    #[test]
    fn plain_hosts_are_not_containers() {
        for text in [
            "0::/user.slice/user-1000.slice/session-3.scope\n",
            "0::/system.slice/ssh.service\n",
            "0::/\n",
            "12:pids:/\n0::/init.scope\n",
            "",
            "garbage",
            // Not 64 hex digits.
            "0::/docker/abc123\n",
            // "pod" inside a word is not a pod segment.
            "0::/system.slice/ipod-8a1b2c3d-4e5f-6789-abcd-ef0123456789.service\n",
        ] {
            assert_eq!(container_of(text), None, "{text:?}");
        }
    }

    #[test]
    fn status_cmdline_and_passwd() {
        let st = parse_status(
            "Name:\tsshd\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t812\nPid:\t812\nPPid:\t1\nUid:\t0\t0\t0\t0\nGid:\t4\t4\t4\t4\n",
        );
        assert_eq!(st.name.as_deref(), Some("sshd"));
        assert_eq!((st.ppid, st.uid, st.gid), (Some(1), Some(0), Some(4)));
        assert_eq!(
            parse_cmdline(b"/usr/bin/python3\0-m\0http.server\0"),
            Some("/usr/bin/python3 -m http.server".into())
        );
        assert_eq!(parse_cmdline(b""), None);
        assert_eq!(parse_cmdline(&[b'a'; 10_000]).unwrap().len(), CMDLINE_MAX);
        let users = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n# comment\nbad\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        );
        assert_eq!(users.get(&0).map(String::as_str), Some("root"));
        assert_eq!(users.get(&1000).map(String::as_str), Some("alice"));
        assert_eq!(users.len(), 2);
    }

    #[test]
    fn a_uid_listed_twice_keeps_its_first_name_as_getpwuid_does() {
        let users = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\ntoor:x:0:0:alias:/root:/bin/sh\nbob:x:1001:1001::/b:/bin/sh\nrobert:x:1001:1001::/b:/bin/sh\n",
        );
        assert_eq!(users.get(&0).map(String::as_str), Some("root"));
        assert_eq!(users.get(&1001).map(String::as_str), Some("bob"));
        // The cache and the rules' resolver are the same reader: they agree.
        let root = temp_dir("dup-uid");
        let passwd = root.join("passwd");
        fs::write(
            &passwd,
            "bob:x:1001:1001::/b:/bin/sh\nrobert:x:1001:1001::/b:/bin/sh\n",
        )
        .unwrap();
        fake_proc(&root, 4343, "curl", "/usr/bin/curl");
        let mut shared = Processes::new(ProcessCache::new(&root, &passwd));
        // (fake_proc's process runs as uid 1000, unknown here.)
        assert_eq!(
            shared.get().detail(4343, 1001, "curl").user.as_deref(),
            Some("bob")
        );
        assert_eq!(
            ProcessResolver::user(&mut shared, 1001).as_deref(),
            Some("bob")
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn the_rules_resolver_answers_from_the_cache_and_fills_it() {
        let root = temp_dir("resolver");
        let passwd = root.join("passwd");
        fs::write(&passwd, "alice:x:1000:1000::/home/alice:/bin/sh\n").unwrap();
        fake_proc(&root, 5151, "dig", "/usr/bin/dig");
        let mut shared = Processes::new(ProcessCache::new(&root, &passwd));
        let mut rules_side = shared.clone();
        assert_eq!(rules_side.exe(5151).as_deref(), Some("/usr/bin/dig"));
        // Read once: a changed /proc is not read again, by either side.
        fake_proc(&root, 5151, "dig", "/usr/bin/other");
        assert_eq!(rules_side.exe(5151).as_deref(), Some("/usr/bin/dig"));
        let d = shared.get().detail(5151, 1000, "dig");
        assert_eq!(d.exe.as_deref(), Some("/usr/bin/dig"));
        assert_eq!(d.user.as_deref(), Some("alice"));
        assert_eq!(shared.get().stats().cached, 1);
        assert_eq!(ProcessResolver::exe(&mut shared, 999_998), None);
        let _ = fs::remove_dir_all(&root);
    }

    /// A fake `/proc` with one process, to drive the cache without real processes.
    fn fake_proc(dir: &Path, pid: u32, name: &str, exe: &str) {
        let p = dir.join(pid.to_string());
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("status"), format!("Name:\t{name}\nPPid:\t1\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n")).unwrap();
        fs::write(p.join("cmdline"), format!("{exe}\0--flag\0")).unwrap();
        fs::write(
            p.join("cgroup"),
            format!("0::/system.slice/docker-{ID}.scope\n"),
        )
        .unwrap();
        let _ = fs::remove_file(p.join("exe"));
        std::os::unix::fs::symlink(exe, p.join("exe")).unwrap();
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netmon-proc-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn caches_per_pid_and_forgets_on_exit_so_a_reused_pid_is_read_again() {
        let root = temp_dir("reuse");
        let passwd = root.join("passwd");
        fs::write(&passwd, "alice:x:1000:1000::/home/alice:/bin/sh\n").unwrap();
        fake_proc(&root, 4242, "curl", "/usr/bin/curl");
        let mut cache = ProcessCache::new(&root, &passwd);
        let d = cache.detail(4242, 1000, "curl");
        assert_eq!(d.exe.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(d.cmdline.as_deref(), Some("/usr/bin/curl --flag"));
        assert_eq!(d.user.as_deref(), Some("alice"));
        assert_eq!(d.ppid, Some(1));
        assert_eq!(
            d.container.as_ref().unwrap().runtime.as_deref(),
            Some("docker")
        );
        // The same process again: served from the cache even if /proc changes.
        fake_proc(&root, 4242, "curl", "/usr/bin/other");
        assert_eq!(
            cache.detail(4242, 1000, "curl").exe.as_deref(),
            Some("/usr/bin/curl")
        );
        // It exits; the pid is reused by another program: read afresh.
        cache.exited(4242);
        fake_proc(&root, 4242, "nc", "/usr/bin/nc");
        assert_eq!(
            cache.detail(4242, 1000, "nc").exe.as_deref(),
            Some("/usr/bin/nc")
        );
        // Reused without an exit event (lost): the comm differs, so it is read again.
        fake_proc(&root, 4242, "sshd", "/usr/sbin/sshd");
        assert_eq!(
            cache.detail(4242, 1000, "sshd").exe.as_deref(),
            Some("/usr/sbin/sshd")
        );
        let s = cache.stats();
        assert_eq!((s.cached, s.exits), (1, 1));
        assert!(s.unreadable.is_empty());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_process_gone_before_lookup_keeps_kernel_fields_and_counts_the_reason() {
        let root = temp_dir("gone");
        let mut cache = ProcessCache::new(&root, &root.join("no-passwd"));
        let mut p = ProcessInfo::kernel(999_999, 999_999, "short".into(), 0, 0, 5);
        cache.enrich(&mut p);
        assert_eq!(p.comm, "short");
        assert_eq!(p.cgroup_id, 5);
        assert_eq!(*p.detail, ProcessDetail::default());
        assert_eq!(cache.stats().unreadable.get("gone"), Some(&1));
        assert!(cache.from_proc(999_999, None).is_none());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn reads_this_process_from_the_real_proc() {
        let mut cache = ProcessCache::default();
        let me = cache.from_proc(std::process::id(), None).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(me.detail.exe.is_some());
        assert!(me.detail.cmdline.is_some());
        assert!(me.detail.ppid.is_some());
    }

    #[test]
    fn exit_records_are_recognised() {
        let mut header = EventHeader {
            kind: kind::EXIT,
            backend: 0,
            ktime_ns: 1,
            process: netmon_common::Process::EMPTY,
        };
        header.process.pid = 77;
        // SAFETY: EventHeader is plain old data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&header as *const EventHeader).cast::<u8>(),
                std::mem::size_of::<EventHeader>(),
            )
        };
        assert_eq!(exit_pid(bytes), Some(77));
        header.kind = kind::CONNECT;
        // SAFETY: as above.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&header as *const EventHeader).cast::<u8>(),
                std::mem::size_of::<EventHeader>(),
            )
        };
        assert_eq!(exit_pid(bytes), None);
        assert_eq!(exit_pid(&[0; 3]), None);
    }
}
