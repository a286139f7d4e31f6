//! The pure readers of what the kernel and `/proc` say about a process: exit records
//! from the ring buffer, `/proc/<pid>/status`, `cmdline`, `/etc/passwd` and the cgroup
//! path that names a container (Docker, containerd, CRI-O, Podman, Kubernetes pods).
//! No I/O but `cgroup_v2_id`'s one `stat`; the process table (`process.rs`) calls them.
use std::{collections::HashMap, fs, path::Path};

use netmon_common::{EventHeader, kind};

use super::CMDLINE_MAX;
use crate::event::Container;

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
    pub(super) fn is_kernel_thread(&self) -> bool {
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
