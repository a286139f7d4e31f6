//! Facts about the host and the few changes netmon makes to it before loading programs:
//! privileges, `RLIMIT_MEMLOCK`, tracefs, the cgroup v2 mount, hostname, kernel release.
//! The `/proc/mounts` parsing is pure and unit-tested; the rest are thin syscalls.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// The Linux capabilities netmon asks about (bit numbers of `CapEff`,
/// include/uapi/linux/capability.h): loading programs needs BPF+PERFMON (or SYS_ADMIN
/// before 5.8) and NET_ADMIN; the scanner's raw sockets need NET_RAW.
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_NET_RAW: u32 = 13;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Why the host cannot run netmon as it is.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error(
        "netmon needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) to load eBPF programs: run it with sudo"
    )]
    NotPrivileged,
    #[error(
        "tracefs is not mounted and mounting it at {path} failed ({source}): mount it with `mount -t tracefs tracefs {path}`"
    )]
    Tracefs { path: String, source: io::Error },
    #[error(
        "no cgroup v2 hierarchy is mounted (none in /proc/mounts): mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
}

/// Whether this process has capability `cap` (one of the `CAP_*` above) in effect.
pub fn has_capability(cap: u32) -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_caps(&s))
        .is_some_and(|caps| caps & (1u64 << cap) != 0)
}

/// Checks the effective capabilities of this process.
pub fn check_privileges() -> Result<(), SystemError> {
    let status = fs::read_to_string("/proc/self/status").map_err(|source| SystemError::Read {
        path: "/proc/self/status".into(),
        source,
    })?;
    let caps = effective_caps(&status).unwrap_or(0);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let bpf = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    if bpf && has(CAP_NET_ADMIN) {
        Ok(())
    } else {
        Err(SystemError::NotPrivileged)
    }
}

/// `CapEff` from `/proc/self/status` text.
pub fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Raises `RLIMIT_MEMLOCK` to unlimited: kernels before 5.11 charge BPF maps to it, and
/// the default (often 64 KiB or 8 MiB) is too small for the ring buffer there.
pub fn raise_memlock() -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK`; later ones use memcg.
pub fn memlock_charges_bpf() -> bool {
    kernel_version(&kernel_release()).is_none_or(|v| v < (5, 11))
}

/// `(major, minor)` of a release string such as `6.1.0-26-cloud-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Current `RLIMIT_MEMLOCK` soft limit in bytes (`None` means unlimited).
pub fn memlock_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Where tracefs is reachable, if it is.
pub fn tracefs_path() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Makes sure tracefs is mounted (tracepoint attach needs it), mounting it if needed.
pub fn ensure_tracefs() -> Result<PathBuf, SystemError> {
    if let Some(path) = tracefs_path() {
        return Ok(path);
    }
    let path = "/sys/kernel/tracing";
    mount("tracefs", path, "tracefs").map_err(|source| SystemError::Tracefs {
        path: path.into(),
        source,
    })?;
    Ok(PathBuf::from(path))
}

fn mount(source: &str, target: &str, fstype: &str) -> io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in mount arguments");
    let (source, target, fstype) = (c(source), c(target), c(fstype));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cgroup v2 mount point, from `/proc/mounts` (never assumed to be `/sys/fs/cgroup`).
pub fn cgroup2_mount() -> Result<PathBuf, SystemError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(|source| SystemError::Read {
        path: "/proc/mounts".into(),
        source,
    })?;
    find_cgroup2(&mounts).ok_or(SystemError::NoCgroup2)
}

/// The first `cgroup2` entry of a `/proc/mounts` text.
pub fn find_cgroup2(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// `/proc/mounts` escapes spaces, tabs, newlines and backslashes as octal.
fn unescape_mount_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// Whether a filesystem of type `fstype` is mounted at `dir` (per `/proc/mounts`).
pub fn is_mounted(fstype: &str) -> bool {
    fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(2) == Some(fstype))
        })
        .unwrap_or(false)
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: valid buffer and length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Kernel lockdown mode (`none`, `integrity`, `confidentiality`), if securityfs says.
pub fn lockdown_mode() -> Option<String> {
    let text = fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    text.split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_owned())
}

pub fn path_exists(p: &str) -> bool {
    Path::new(p).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_a_hybrid_layout() {
        let mounts = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
        assert_eq!(
            find_cgroup2(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(find_cgroup2("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn unescapes_octal_in_mount_paths() {
        let mounts = "none /mnt/my\\040cgroup cgroup2 rw 0 0\n";
        assert_eq!(find_cgroup2(mounts), Some(PathBuf::from("/mnt/my cgroup")));
    }

    #[test]
    fn parses_kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v445"), Some((6, 18)));
        assert_eq!(kernel_version("5.10.0-46-cloud-amd64"), Some((5, 10)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn reads_effective_capabilities() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name: x\n"), None);
    }
}
