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
//! The pure parsers of `/proc` text and exit records are in `process/procfs.rs`.
//!
//! Over 600 lines (just): one table and its three sources of truth (kernel records, the
//! `/proc` seed, the `/proc` fallback), which share its eviction and exit-grace rules.
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, VecDeque},
    fs, io,
    path::{Path, PathBuf},
    rc::Rc,
    sync::Arc,
};

use chrono::{DateTime, Utc};

use crate::{
    event::{Name, ProcessDetail, ProcessInfo, ProcessStats},
    rules::ProcessResolver,
    sockets::reason,
};

/// Longest `cmdline` kept, in bytes.
pub(crate) const CMDLINE_MAX: usize = 4096;
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
    pub comm: Name,
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
    pub comm: Name,
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
    /// The thread-group leader's `comm`, as last seen (shared with its events).
    comm: Name,
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
                self.insert(pid, comm.into(), detail, Source::Proc, 0);
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
            process.detail = ProcessDetail::unknown();
            return;
        }
        let leader_event = process.tid == process.pid || process.tid == 0;
        let thread_comm = std::mem::take(&mut process.comm);
        let (leader, detail) = self.lookup(process.pid, process.uid, &thread_comm, leader_event);
        process.detail = detail;
        if leader != thread_comm && !leader_event {
            process.comm = leader;
            process.thread = Some(thread_comm.to_string());
        } else {
            process.comm = thread_comm;
        }
    }

    /// Context of `pid` (whose kernel `comm` is `comm`), from the table or `/proc`.
    pub fn detail(&mut self, pid: u32, uid: u32, comm: &str) -> Arc<ProcessDetail> {
        if pid == 0 {
            return ProcessDetail::unknown();
        }
        self.lookup(pid, uid, &Name::from(comm), true).1
    }

    /// (the process's name, its context) for an event of `pid` by a thread named
    /// `comm` (the leader itself when `leader_event`). The name is the table's, shared.
    fn lookup(
        &mut self,
        pid: u32,
        uid: u32,
        comm: &Name,
        leader_event: bool,
    ) -> (Name, Arc<ProcessDetail>) {
        let hit = match self.entries.get_mut(&pid) {
            Some(e) => {
                // A kernel-fed live entry is this pid's process whatever the thread calls
                // itself; otherwise only a leader's event of another name is a sign the
                // pid was reused unseen (another thread's name is just a thread name).
                let trusted = (e.source == Source::Kernel && e.exited_ns.is_none())
                    || !leader_event
                    || e.comm == *comm;
                if trusted && leader_event && e.comm != *comm && e.exited_ns.is_none() {
                    // The leader renamed itself (`prctl(PR_SET_NAME)`): its name changes,
                    // its program does not.
                    e.comm = comm.clone();
                }
                trusted
            }
            None => false,
        };
        if hit {
            let e = &self.entries[&pid];
            return (e.comm.clone(), e.detail.clone());
        }
        let (mut detail, read_comm) = self.read(pid, Some(uid));
        let (parent, ancestors) = self.lineage(detail.ppid.unwrap_or(0), pid);
        detail.parent = parent;
        detail.ancestors = ancestors;
        let name = match read_comm {
            Some(n) if !leader_event => Name::from(n),
            _ => comm.clone(),
        };
        let detail = self.insert(pid, name.clone(), detail, Source::Proc, 0);
        (name, detail)
    }

    fn insert(
        &mut self,
        pid: u32,
        comm: Name,
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
            ancestors.push(e.detail.exe.clone().unwrap_or_else(|| e.comm.to_string()));
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
                let comm = comm.map_or_else(|| f.comm.clone(), Name::from);
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
            self.insert(pid, comm.into(), detail, Source::Proc, 0);
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
        let mut p = ProcessInfo::kernel(pid, pid, comm.into(), uid, st.gid.unwrap_or(0), cgroup_id);
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

mod procfs;
pub use procfs::{
    Status, cgroup_v2_id, container_of, exit_pid, parse_cmdline, parse_passwd, parse_status,
};

#[cfg(test)]
mod tests;
