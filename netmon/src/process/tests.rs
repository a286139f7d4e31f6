//! Tests of `crate::process`.

use netmon_common::{EventHeader, kind};

use super::*;
use crate::event::Container;

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
    fs::write(
        p.join("status"),
        format!(
            "Name:\t{name}\nPPid:\t1\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n"
        ),
    )
    .unwrap();
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

fn exec_of(pid: u32, ppid: u32, start_ns: u64, comm: &str, filename: &str, args: &[u8]) -> Exec {
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
