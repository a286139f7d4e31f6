//! The process table: who each pid is (`exe`, `cmdline`, `user`, `ppid`, `parent`,
//! `start_time`, `ancestors`, `container`), kept from the kernel's exec, fork and exit
//! records (`netmon-ebpf/src/tracepoint_process.rs`), so a process that lived 1 ms is
//! still named, and its renaming itself never changes its `exe`.
//!
//! Processes that ran before netmon are seeded from `/proc` at start ([`ProcessCache::seed`]);
//! `/proc` is otherwise only a fallback, for a pid the kernel told nothing about (the
//! process table's tracepoints missing, or a record lost). A fork record replaces
//! whatever the table held for the child's pid, so a reused pid never inherits the old
//! process's context; an exited process stays [`EXIT_GRACE_NS`] for the events still
//! in flight about it, and is dropped only if its pid was not reused meanwhile (pid +
//! start time). The parsers (`cgroup`, `status`, `stat`, `passwd`) are pure and
//! unit-tested; only [`ProcessCache`] touches the file system.
//!
//! This is the one process table of netmon: `netmon run` enriches events from it and
//! its rules ask it what an event does not carry (through [`Processes`], a handle
//! shared by the stages of the pipeline's one thread); `netmon snapshot`'s rules ask a
//! [`ProcessCache`] of their own.
//!
//! Over 600 lines: the container-cgroup parser's cases and the tests that pin them
//! (about half the file) belong beside the cache they feed.
use std::{
    borrow::Cow,
    cell::RefCell,
    collections::{BTreeMap, HashMap, VecDeque},
    fs, io,
    path::{Path, PathBuf},
    rc::Rc,
    sync::Arc,
};

use chrono::{DateTime, Utc};
use netmon_common::{EventHeader, kind};

use crate::{
    event::{Container, ProcessDetail, ProcessInfo, ProcessStats},
    rules::ProcessResolver,
    sockets::reason,
};

/// Longest `cmdline` kept, in bytes.
const CMDLINE_MAX: usize = 4096;
/// Levels of `ancestors` kept.
pub const ANCESTORS_MAX: usize = 8;
/// How long an exited process stays in the table: events about it may still be in
/// flight (a close after its exit, a connect completed in softirq).
pub const EXIT_GRACE_NS: u64 = 5_000_000_000;

/// What the kernel recorded when a process exec'd (`kind::EXEC`), decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exec {
    /// When the exec happened.
    pub ts: DateTime<Utc>,
    pub pid: u32,
    pub cgroup_id: u64,
    pub uid: u32,
    pub gid: u32,
    /// The new program's name (`comm`).
    pub comm: String,
    /// 0 when unknown.
    pub ppid: u32,
    /// `task->start_time` (CLOCK_MONOTONIC ns), 0 when unknown.
    pub start_ns: u64,
    pub start_time: Option<DateTime<Utc>>,
    /// The path given to `execve`.
    pub filename: String,
    /// The argument block, NUL-separated (at most 1 KiB).
    pub args: Vec<u8>,
}

/// A new process (`kind::FORK`), decoded: it runs its parent's program until it execs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fork {
    pub parent_pid: u32,
    /// The forking thread's name, which the child inherits.
    pub comm: String,
    pub child_pid: u32,
    pub child_start_ns: u64,
    pub child_start_time: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// From the kernel's exec or fork record: authoritative for this pid until the
    /// kernel says otherwise.
    Kernel,
    /// Read from `/proc`: checked against the event's `comm`, since the table may have
    /// missed the pid's reuse.
    Proc,
}

struct Entry {
    /// The thread-group leader's `comm`, as last seen.
    comm: String,
    detail: Arc<ProcessDetail>,
    source: Source,
    /// With the pid, the identity of the process (0: unknown).
    start_ns: u64,
    /// When its exit was seen (CLOCK_MONOTONIC ns).
    exited_ns: Option<u64>,
}

/// The process table. Owned by one task; no locks.
pub struct ProcessCache {
    proc_root: PathBuf,
    passwd_path: PathBuf,
    entries: foldhash::HashMap<u32, Entry>,
    users: Users,
    /// Exited entries in exit order: (pid, start_ns, exited_ns).
    exited: VecDeque<(u32, u64, u64)>,
    exits: u64,
    execs: u64,
    forks: u64,
    evicted: u64,
    unreadable: BTreeMap<String, u64>,
    /// Most entries kept; beyond it exited entries go first, then any.
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
            entries: Default::default(),
            users: Users::default(),
            exited: VecDeque::new(),
            exits: 0,
            execs: 0,
            forks: 0,
            evicted: 0,
            unreadable: BTreeMap::new(),
            max_entries: 65536,
        }
    }

    /// Most processes kept at once.
    pub fn with_max_entries(mut self, n: usize) -> ProcessCache {
        self.max_entries = n.max(1);
        self
    }

    /// Reads every process in `/proc` into the table (once, at start, before the
    /// privileges drop), so processes that ran before netmon are known with their
    /// lineage.
    pub fn seed(&mut self) {
        let Ok(dir) = fs::read_dir(&self.proc_root) else {
            return;
        };
        let mut pids: Vec<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        for pid in pids {
            if self.entries.contains_key(&pid) {
                continue;
            }
            let (detail, comm) = self.read(pid, None);
            if let Some(comm) = comm {
                self.insert(pid, comm, detail, Source::Proc, 0);
            }
        }
        // Lineage once everyone is known (parents have lower pids only usually).
        let pids: Vec<u32> = self.entries.keys().copied().collect();
        for pid in pids {
            let ppid = self.entries[&pid].detail.ppid.unwrap_or(0);
            let (parent, ancestors) = self.lineage(ppid, pid);
            if let Some(e) = self.entries.get_mut(&pid) {
                let d = Arc::make_mut(&mut e.detail);
                d.parent = parent;
                d.ancestors = ancestors;
            }
        }
    }

    /// Fills in `process` (the kernel's view of one event's task) from the table,
    /// reading `/proc` on a miss: `detail`, the process's name in `comm` and the
    /// thread's in `thread` when they differ.
    pub fn enrich(&mut self, process: &mut ProcessInfo) {
        if process.pid == 0 {
            process.detail = Arc::default();
            return;
        }
        let leader_event = process.tid == process.pid || process.tid == 0;
        let thread_comm = std::mem::take(&mut process.comm);
        let (leader, detail) = self.lookup(process.pid, process.uid, &thread_comm, leader_event);
        process.detail = detail;
        if *leader != thread_comm && !leader_event {
            process.comm = leader.into_owned();
            process.thread = Some(thread_comm);
        } else {
            process.comm = thread_comm;
        }
    }

    /// Context of `pid` (whose kernel `comm` is `comm`), from the table or `/proc`.
    pub fn detail(&mut self, pid: u32, uid: u32, comm: &str) -> Arc<ProcessDetail> {
        if pid == 0 {
            return Arc::default();
        }
        self.lookup(pid, uid, comm, true).1
    }

    /// (the process's name, its context) for an event of `pid` by a thread named
    /// `comm` (the leader itself when `leader_event`). The name is borrowed from the
    /// table on a hit: most events' thread is the leader, and copying its name for
    /// each would be an allocation per event for nothing.
    fn lookup(
        &mut self,
        pid: u32,
        uid: u32,
        comm: &str,
        leader_event: bool,
    ) -> (Cow<'_, str>, Arc<ProcessDetail>) {
        let hit = match self.entries.get_mut(&pid) {
            Some(e) => {
                // A kernel-fed live entry is this pid's process whatever the thread calls
                // itself; otherwise only a leader's event of another name is a sign the
                // pid was reused unseen (another thread's name is just a thread name).
                let trusted = (e.source == Source::Kernel && e.exited_ns.is_none())
                    || !leader_event
                    || e.comm == comm;
                if trusted && leader_event && e.comm != comm && e.exited_ns.is_none() {
                    // The leader renamed itself (`prctl(PR_SET_NAME)`): its name changes,
                    // its program does not.
                    e.comm = comm.to_owned();
                }
                trusted
            }
            None => false,
        };
        if hit {
            let e = &self.entries[&pid];
            return (Cow::Borrowed(&e.comm), e.detail.clone());
        }
        let (mut detail, read_comm) = self.read(pid, Some(uid));
        let (parent, ancestors) = self.lineage(detail.ppid.unwrap_or(0), pid);
        detail.parent = parent;
        detail.ancestors = ancestors;
        let name = match read_comm {
            Some(n) if !leader_event => n,
            _ => comm.to_owned(),
        };
        let detail = self.insert(pid, name.clone(), detail, Source::Proc, 0);
        (Cow::Owned(name), detail)
    }

    fn insert(
        &mut self,
        pid: u32,
        comm: String,
        detail: ProcessDetail,
        source: Source,
        start_ns: u64,
    ) -> Arc<ProcessDetail> {
        let detail = Arc::new(detail);
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(&pid) {
            self.make_room();
        }
        self.entries.insert(
            pid,
            Entry {
                comm,
                detail: detail.clone(),
                source,
                start_ns,
                exited_ns: None,
            },
        );
        detail
    }

    /// The table is full: exited processes go first, else one live entry (counted).
    fn make_room(&mut self) {
        while let Some((pid, start, _)) = self.exited.pop_front() {
            if self.remove_exited(pid, start) {
                return;
            }
        }
        if let Some(&pid) = self.entries.keys().next() {
            self.entries.remove(&pid);
            self.evicted += 1;
        }
    }

    /// Removes `pid` if it is still the exited process that started at `start`.
    fn remove_exited(&mut self, pid: u32, start: u64) -> bool {
        match self.entries.get(&pid) {
            Some(e) if e.exited_ns.is_some() && e.start_ns == start => {
                self.entries.remove(&pid);
                true
            }
            _ => false,
        }
    }

    /// (`parent`, `ancestors`) of a process whose parent is `ppid`, from the table.
    fn lineage(&self, mut ppid: u32, pid: u32) -> (Option<String>, Vec<String>) {
        let mut parent = None;
        let mut ancestors = Vec::new();
        let mut seen = pid;
        while ancestors.len() < ANCESTORS_MAX && ppid != 0 && ppid != seen {
            let Some(e) = self.entries.get(&ppid) else {
                break;
            };
            if ancestors.is_empty() {
                parent = e.detail.exe.clone();
            }
            ancestors.push(e.detail.exe.clone().unwrap_or_else(|| e.comm.clone()));
            seen = ppid;
            ppid = e.detail.ppid.unwrap_or(0);
        }
        (parent, ancestors)
    }

    /// The kernel saw `x` exec: the pid now runs what `x` says.
    pub fn exec(&mut self, x: Exec) {
        self.execs += 1;
        // The cgroup does not change at exec: keep what the fork entry knew.
        let container = match self.entries.get(&x.pid) {
            Some(e) => e.detail.container.clone(),
            None => fs::read_to_string(self.proc_root.join(format!("{}/cgroup", x.pid)))
                .ok()
                .and_then(|t| container_of(&t)),
        };
        let exe = if x.filename.starts_with('/')
            && !x.filename.starts_with("/dev/fd/")
            && !x.filename.starts_with("/proc/")
        {
            Some(x.filename.clone())
        } else {
            // A relative path or an fd (`fexecve`): the kernel's link, if still there.
            fs::read_link(self.proc_root.join(format!("{}/exe", x.pid)))
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
                .or_else(|| (!x.filename.is_empty()).then(|| x.filename.clone()))
        };
        let (parent, ancestors) = self.lineage(x.ppid, x.pid);
        let detail = ProcessDetail {
            exe,
            cmdline: parse_cmdline(&x.args),
            user: self.user_name(x.uid),
            ppid: (x.ppid != 0).then_some(x.ppid),
            parent,
            start_time: x.start_time,
            ancestors,
            container,
        };
        self.insert(x.pid, x.comm, detail, Source::Kernel, x.start_ns);
    }

    /// The kernel saw `f.parent_pid` fork a new process: it runs the parent's program.
    pub fn fork(&mut self, f: Fork) {
        self.forks += 1;
        let parent = match self.entries.get(&f.parent_pid) {
            Some(e) => e.detail.clone(),
            // A parent the table missed (a lost record): read it, it is alive.
            None => {
                let (mut d, comm) = self.read(f.parent_pid, None);
                (d.parent, d.ancestors) = self.lineage(d.ppid.unwrap_or(0), f.parent_pid);
                let comm = comm.unwrap_or_else(|| f.comm.clone());
                self.insert(f.parent_pid, comm, d, Source::Proc, 0)
            }
        };
        let (parent_exe, ancestors) = self.lineage(f.parent_pid, f.child_pid);
        let detail = ProcessDetail {
            ppid: Some(f.parent_pid),
            parent: parent_exe,
            start_time: f.child_start_time,
            ancestors,
            ..(*parent).clone()
        };
        self.insert(
            f.child_pid,
            f.comm,
            detail,
            Source::Kernel,
            f.child_start_ns,
        );
    }

    /// The executable of `pid` when only the pid is known (what a rule asks of a
    /// process its event did not describe): from the table, else read and kept.
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
            self.insert(pid, comm, detail, Source::Proc, 0);
        }
        exe
    }

    /// The process exited at `now_ns` (CLOCK_MONOTONIC): it stays [`EXIT_GRACE_NS`]
    /// for the events still in flight about it, then goes unless its pid was reused.
    pub fn exited(&mut self, pid: u32, now_ns: u64) {
        self.exits += 1;
        if let Some(e) = self.entries.get_mut(&pid) {
            e.exited_ns = Some(now_ns);
            self.exited.push_back((pid, e.start_ns, now_ns));
        }
        while let Some(&(pid, start, at)) = self.exited.front() {
            if now_ns.saturating_sub(at) < EXIT_GRACE_NS {
                break;
            }
            self.exited.pop_front();
            self.remove_exited(pid, start);
        }
    }

    pub fn stats(&self) -> ProcessStats {
        ProcessStats {
            cached: self.entries.len() as u64,
            exits: self.exits,
            execs: self.execs,
            forks: self.forks,
            evicted: self.evicted,
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
        if let Ok(stat) = fs::read_to_string(dir.join("stat")) {
            detail.start_time = stat_start_ticks(&stat).and_then(|t| self.users.boot_wall(t));
        }
        (detail, st.name)
    }

    /// The name of user `uid` through the system's user database (NSS, so LDAP and
    /// sssd users resolve too); answers, misses included, are cached.
    pub fn user_name(&mut self, uid: u32) -> Option<String> {
        self.users.name(uid, &self.passwd_path)
    }
}

/// User names by uid, cached (negative answers too: a uid unknown to NSS is asked once).
#[derive(Default)]
struct Users {
    names: HashMap<u32, Option<String>>,
    /// `/etc/passwd` of a test's fake root, when not the system's.
    file: Option<HashMap<u32, String>>,
    boot: Option<Option<(i64, i64)>>,
}

impl Users {
    fn name(&mut self, uid: u32, passwd: &Path) -> Option<String> {
        if let Some(n) = self.names.get(&uid) {
            return n.clone();
        }
        let name = if passwd == Path::new("/etc/passwd") {
            nss_user_name(uid)
        } else {
            let file = self.file.get_or_insert_with(|| {
                fs::read_to_string(passwd)
                    .map(|t| parse_passwd(&t))
                    .unwrap_or_default()
            });
            file.get(&uid).cloned()
        };
        if self.names.len() >= 65536 {
            self.names.clear();
        }
        self.names.insert(uid, name.clone());
        name
    }

    /// Wall time of `ticks` clock ticks after boot (`/proc/<pid>/stat`'s start time).
    fn boot_wall(&mut self, ticks: u64) -> Option<DateTime<Utc>> {
        let (btime, hz) = (*self.boot.get_or_insert_with(|| {
            let stat = fs::read_to_string("/proc/stat").ok()?;
            let btime = stat
                .lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            (hz > 0).then_some((btime, hz as i64))
        }))?;
        let ns = (ticks as i64 % hz) * (1_000_000_000 / hz);
        DateTime::from_timestamp(btime + ticks as i64 / hz, ns as u32)
    }
}

/// `getpwuid_r` through NSS (`uzers`), so LDAP and sssd users resolve as `id` shows.
fn nss_user_name(uid: u32) -> Option<String> {
    uzers::get_user_by_uid(uid).map(|u| u.name().to_string_lossy().into_owned())
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks after boot); the
/// `comm` in parentheses may itself hold spaces and parentheses.
pub fn stat_start_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
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
        cache.exited(4242, 0);
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

    fn exec_of(
        pid: u32,
        ppid: u32,
        start_ns: u64,
        comm: &str,
        filename: &str,
        args: &[u8],
    ) -> Exec {
        Exec {
            pid,
            ppid,
            uid: 1000,
            gid: 1000,
            comm: comm.into(),
            start_ns,
            start_time: DateTime::from_timestamp(1_800_000_000 + start_ns as i64, 0),
            filename: filename.into(),
            args: args.to_vec(),
            ..Exec::default()
        }
    }

    fn event(pid: u32, tid: u32, comm: &str) -> ProcessInfo {
        ProcessInfo::kernel(pid, tid, comm.into(), 1000, 1000, 1)
    }

    /// A table fed only by kernel records (the fake /proc is empty): what a process
    /// that is already gone is known by.
    #[test]
    fn kernel_records_name_a_process_that_is_gone_with_its_lineage() {
        let root = temp_dir("exec");
        let passwd = root.join("passwd");
        fs::write(&passwd, "alice:x:1000:1000::/home/alice:/bin/sh\n").unwrap();
        let mut t = ProcessCache::new(&root, &passwd);
        t.exec(exec_of(100, 1, 1, "bash", "/usr/bin/bash", b"bash\0"));
        t.fork(Fork {
            parent_pid: 100,
            comm: "bash".into(),
            child_pid: 101,
            child_start_ns: 2,
            child_start_time: None,
        });
        t.exec(exec_of(
            101,
            100,
            2,
            "sh",
            "/bin/sh",
            b"sh\0-c\0curl -s x\0",
        ));
        t.fork(Fork {
            parent_pid: 101,
            comm: "sh".into(),
            child_pid: 102,
            child_start_ns: 3,
            child_start_time: None,
        });
        // Before it execs, the child runs its parent's program.
        let mut p = event(102, 102, "sh");
        t.enrich(&mut p);
        assert_eq!(p.detail.exe.as_deref(), Some("/bin/sh"));
        assert_eq!(p.detail.ppid, Some(101));
        t.exec(exec_of(
            102,
            101,
            3,
            "curl",
            "/usr/bin/curl",
            b"curl\0-s\0http://x/\0",
        ));
        let mut p = event(102, 102, "curl");
        t.enrich(&mut p);
        let d = &p.detail;
        assert_eq!(d.exe.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(d.cmdline.as_deref(), Some("curl -s http://x/"));
        assert_eq!(d.user.as_deref(), Some("alice"));
        assert_eq!((d.ppid, d.parent.as_deref()), (Some(101), Some("/bin/sh")));
        assert_eq!(d.ancestors, vec!["/bin/sh", "/usr/bin/bash"]);
        assert_eq!(d.start_time, DateTime::from_timestamp(1_800_000_003, 0));
        // A thread of it: the process's name in `comm`, the thread's in `thread`.
        let mut th = event(102, 103, "curl-worker");
        t.enrich(&mut th);
        assert_eq!(
            (th.comm.as_str(), th.thread.as_deref()),
            ("curl", Some("curl-worker"))
        );
        assert_eq!(th.detail.exe.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(p.thread, None);
        // Exited: still named for the events in flight, gone after the grace period.
        t.exited(102, 10);
        let mut late = event(102, 102, "curl");
        t.enrich(&mut late);
        assert_eq!(late.detail.exe.as_deref(), Some("/usr/bin/curl"));
        t.exited(101, 10 + EXIT_GRACE_NS);
        assert!(!t.entries.contains_key(&102));
        let s = t.stats();
        assert_eq!((s.execs, s.forks, s.exits), (3, 2, 2));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_reused_pid_never_inherits_the_old_context() {
        let root = temp_dir("pidreuse");
        let mut t = ProcessCache::new(&root, &root.join("passwd"));
        t.exec(exec_of(1, 0, 1, "init", "/sbin/init", b"init\0"));
        t.exec(exec_of(500, 1, 5, "curl", "/usr/bin/curl", b"curl\0"));
        t.exited(500, 100);
        // Within the grace period the pid is reused: the fork record replaces the
        // entry, and the old one's expiry does not remove the new one.
        t.fork(Fork {
            parent_pid: 1,
            comm: "init".into(),
            child_pid: 500,
            child_start_ns: 9,
            child_start_time: None,
        });
        let mut p = event(500, 500, "init");
        t.enrich(&mut p);
        assert_eq!(p.detail.exe.as_deref(), Some("/sbin/init"));
        assert_eq!(p.detail.cmdline.as_deref(), Some("init"));
        t.exited(1, 100 + EXIT_GRACE_NS);
        let mut p = event(500, 500, "init");
        t.enrich(&mut p);
        assert_eq!(p.detail.exe.as_deref(), Some("/sbin/init"));
        // An exited entry and a leader of another name: the pid was reused unseen
        // (records lost), so the old context is not used (the fake /proc has none).
        t.exec(exec_of(600, 1, 20, "nc", "/usr/bin/nc", b"nc\0"));
        t.exited(600, 200 + EXIT_GRACE_NS);
        let mut p = event(600, 600, "sshd");
        t.enrich(&mut p);
        assert_eq!(p.detail.exe, None);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_renamed_process_keeps_its_real_exe() {
        let root = temp_dir("rename");
        let mut t = ProcessCache::new(&root, &root.join("passwd"));
        t.exec(exec_of(
            700,
            1,
            1,
            "renamer",
            "/tmp/x/renamer",
            b"renamer\0",
        ));
        // prctl(PR_SET_NAME, "tor") on the main thread.
        let mut p = event(700, 700, "tor");
        t.enrich(&mut p);
        assert_eq!(p.comm, "tor");
        assert_eq!(p.detail.exe.as_deref(), Some("/tmp/x/renamer"));
        // Its other threads now report the new process name.
        let mut th = event(700, 701, "worker");
        t.enrich(&mut th);
        assert_eq!(
            (th.comm.as_str(), th.thread.as_deref()),
            ("tor", Some("worker"))
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_fork_of_a_parent_the_table_missed_reads_the_parent_from_proc() {
        let root = temp_dir("forkmiss");
        let passwd = root.join("passwd");
        fs::write(&passwd, "alice:x:1000:1000::/home/alice:/bin/sh\n").unwrap();
        fake_proc(&root, 4242, "python3", "/usr/bin/python3");
        let mut t = ProcessCache::new(&root, &passwd);
        t.fork(Fork {
            parent_pid: 4242,
            comm: "python3".into(),
            child_pid: 4243,
            child_start_ns: 7,
            child_start_time: None,
        });
        let d = t.detail(4243, 1000, "python3");
        assert_eq!(d.exe.as_deref(), Some("/usr/bin/python3"));
        // The parent's user, from its status (not guessed).
        assert_eq!(d.user.as_deref(), Some("alice"));
        assert_eq!(
            (d.ppid, d.parent.as_deref()),
            (Some(4242), Some("/usr/bin/python3"))
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_full_table_drops_exited_processes_first_and_counts_live_evictions() {
        let root = temp_dir("full");
        let mut t = ProcessCache::new(&root, &root.join("passwd")).with_max_entries(2);
        t.exec(exec_of(1, 0, 1, "a", "/a", b"a\0"));
        t.exec(exec_of(2, 0, 2, "b", "/b", b"b\0"));
        t.exited(1, 5);
        t.exec(exec_of(3, 0, 3, "c", "/c", b"c\0"));
        assert!(t.entries.contains_key(&2) && t.entries.contains_key(&3));
        assert_eq!(t.stats().evicted, 0);
        t.exec(exec_of(4, 0, 4, "d", "/d", b"d\0"));
        assert_eq!((t.stats().cached, t.stats().evicted), (2, 1));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn stat_start_time_survives_hostile_comms() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 1000 10";
        assert_eq!(stat_start_ticks(stat), Some(12345));
        assert_eq!(stat_start_ticks("garbage"), None);
    }

    #[test]
    fn seeding_reads_every_process_and_links_parents() {
        let root = temp_dir("seed");
        let passwd = root.join("passwd");
        fs::write(&passwd, "alice:x:1000:1000::/home/alice:/bin/sh\n").unwrap();
        fake_proc(&root, 10, "bash", "/usr/bin/bash");
        fake_proc(&root, 11, "vim", "/usr/bin/vim");
        // vim's parent is bash.
        let p = root.join("11/status");
        let text = fs::read_to_string(&p)
            .unwrap()
            .replace("PPid:\t1", "PPid:\t10");
        fs::write(&p, text).unwrap();
        let mut t = ProcessCache::new(&root, &passwd);
        t.seed();
        let d = t.detail(11, 1000, "vim");
        assert_eq!(d.parent.as_deref(), Some("/usr/bin/bash"));
        assert_eq!(d.ancestors, vec!["/usr/bin/bash"]);
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
