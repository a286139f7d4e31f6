//! Walks the hook table (`hooks.rs`) against the running kernel: loads and attaches
//! each group of programs, falls back backend by backend per capability, and turns
//! aya's errors into one short reason (the errno's name, the verifier's first line).
//!
//! The choice is made by really loading and attaching, because a kernel's version says
//! little about what it allows (6.18 here refuses fentry).
use std::{collections::BTreeSet, fs};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, FEntry,
        FExit, KProbe, ProgramError, RawTracePoint, TracePoint,
    },
};
use netmon_common::{KernelConfig, NO_OFFSET};

use super::{
    Error,
    hooks::{Attach, BackendChoice, Capability, HOOK_GROUPS, Hook, HookGroup, program_for},
    tracefs,
};
use crate::{
    event::{CapabilityReport, ProbeReport, SkippedBackend},
    system,
};

/// What the loader hands every attach: the kernel's BTF (fentry/fexit need it), the
/// offsets the programs will read, and the programs already attached (hooks that
/// several groups share attach once); it collects the warnings of optional hooks.
pub(super) struct Context<'a> {
    pub btf: Option<&'a aya::Btf>,
    pub offsets: KernelConfig,
    pub attached: BTreeSet<&'static str>,
    pub warnings: Vec<String>,
}

/// Which backend reports each core capability.
pub(super) type Owners = Vec<(Capability, BackendChoice)>;

/// Attaches, per core capability, the first group (in preference order) that works.
pub(super) fn attach_all(
    ebpf: &mut Ebpf,
    choice: BackendChoice,
    mut warnings: Vec<String>,
    cx: &mut Context<'_>,
) -> Result<(ProbeReport, Owners), Error> {
    let mut reports: Vec<CapabilityReport> = Capability::CORE
        .iter()
        .map(|c| CapabilityReport {
            capability: c.name().into(),
            backend: None,
            hooks: Vec::new(),
            skipped: Vec::new(),
        })
        .collect();
    let mut covered: BTreeSet<Capability> = BTreeSet::new();
    let mut owners: Owners = Vec::new();

    for &backend in choice.order() {
        let groups: Vec<&HookGroup> = HOOK_GROUPS
            .iter()
            .filter(|g| g.backend == backend && !g.is_optional())
            .collect();
        let missing: Vec<Capability> = Capability::CORE
            .into_iter()
            .filter(|c| !covered.contains(c))
            .collect();
        for cap in &missing {
            if !groups.iter().any(|g| g.capabilities.contains(cap)) {
                let reason = format!("netmon has no {} hook for {}", backend.name(), cap.name());
                skip(&mut reports, *cap, backend, reason);
            }
        }
        for group in groups {
            let wanted: Vec<Capability> = group
                .capabilities
                .iter()
                .copied()
                .filter(|c| !covered.contains(c))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            match attach_group(ebpf, group, cx) {
                Ok(hooks) => {
                    for cap in wanted {
                        covered.insert(cap);
                        owners.push((cap, backend));
                        let r = &mut reports[core_index(cap)];
                        r.backend = Some(backend.name().into());
                        r.hooks = hooks.clone();
                    }
                }
                Err(reason) => {
                    for cap in wanted {
                        skip(&mut reports, cap, backend, reason.clone());
                    }
                }
            }
        }
    }

    for (r, cap) in reports.iter().zip(Capability::CORE) {
        if r.backend.is_none() {
            let reasons: Vec<String> = r
                .skipped
                .iter()
                .map(|s| format!("{}: {}", s.backend, s.reason))
                .collect();
            if choice != BackendChoice::Auto {
                return Err(Error::BackendRefused {
                    backend: choice.name(),
                    capability: cap.name(),
                    reason: reasons.join("; "),
                });
            }
            warnings.push(format!(
                "{} is not observed: {}",
                r.capability,
                reasons.join("; ")
            ));
        }
    }
    if covered.is_empty() {
        let reasons = reports
            .iter()
            .flat_map(|r| {
                r.skipped
                    .iter()
                    .map(move |s| format!("{} via {}: {}", r.capability, s.backend, s.reason))
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::NothingAttached { reasons });
    }
    let report = ProbeReport {
        requested: choice.name().into(),
        kernel: system::kernel_release(),
        capabilities: reports,
        warnings,
    };
    Ok((report, owners))
}

/// Attaches the group of optional capability `cap` once `ready` (its maps filled) is
/// Ok. Success or failure, `report` gains the capability; a failure is also a warning.
/// Returns whether it attached.
pub(super) fn attach_optional(
    ebpf: &mut Ebpf,
    cap: Capability,
    ready: Result<(), String>,
    report: &mut ProbeReport,
    cx: &mut Context<'_>,
) -> bool {
    debug_assert!(cap.is_optional());
    let Some(group) = super::hooks::optional_group(cap) else {
        return false;
    };
    let result = ready.and_then(|()| attach_group(ebpf, group, cx));
    let mut entry = CapabilityReport {
        capability: cap.name().into(),
        backend: None,
        hooks: Vec::new(),
        skipped: Vec::new(),
    };
    let attached = result.is_ok();
    match result {
        Ok(hooks) => {
            entry.backend = Some(group.backend_name().into());
            entry.hooks = hooks;
        }
        Err(reason) => {
            report
                .warnings
                .push(format!("{} is not observed: {reason}", cap.name()));
            entry.skipped.push(SkippedBackend {
                backend: group.backend_name().into(),
                reason,
            });
        }
    }
    report.capabilities.push(entry);
    attached
}

/// Position of a core capability in `Capability::CORE` (and in the report).
fn core_index(cap: Capability) -> usize {
    Capability::CORE
        .iter()
        .position(|c| *c == cap)
        .expect("a core capability")
}

fn skip(reports: &mut [CapabilityReport], cap: Capability, backend: BackendChoice, reason: String) {
    reports[core_index(cap)].skipped.push(SkippedBackend {
        backend: backend.name().into(),
        reason,
    });
}

/// Loads and attaches every program of `group`; on failure detaches what it attached.
fn attach_group(
    ebpf: &mut Ebpf,
    group: &HookGroup,
    cx: &mut Context<'_>,
) -> Result<Vec<String>, String> {
    if matches!(group.backend, BackendChoice::Fentry | BackendChoice::Kprobe) {
        socket_offsets_known(&cx.offsets)?;
    }
    let mut done: Vec<&'static str> = Vec::new();
    let mut described = Vec::new();
    let mut failed_optional: Vec<&'static str> = Vec::new();
    for hook in group.hooks {
        if cx.attached.contains(hook.program) || failed_optional.contains(&hook.program) {
            if cx.attached.contains(hook.program) {
                described.push(hook.describe());
            }
            continue;
        }
        match attach_hook(ebpf, hook, cx) {
            Ok(()) => {
                done.push(hook.program);
                described.push(hook.describe());
            }
            Err(reason) if hook.optional => {
                let warning = format!(
                    "{} not attached ({reason}): {}",
                    hook.describe(),
                    hook.optional_because
                );
                if !cx.warnings.contains(&warning) {
                    cx.warnings.push(warning);
                }
                failed_optional.push(hook.program);
            }
            Err(reason) => {
                for hook in group.hooks.iter().filter(|h| done.contains(&h.program)) {
                    unload(ebpf, hook, &cx.offsets);
                }
                return Err(format!("{}: {reason}", hook.describe()));
            }
        }
    }
    cx.attached.extend(done);
    Ok(described)
}

/// Detaches and unloads one program of a group that could not attach whole.
fn unload(ebpf: &mut Ebpf, hook: &Hook, offsets: &KernelConfig) {
    let Ok(name) = program_for(hook, offsets.accept_ret_index) else {
        return;
    };
    let Some(program) = ebpf.program_mut(name) else {
        return;
    };
    let _ = match hook.attach {
        Attach::TracePoint { .. } => <&mut TracePoint>::try_from(program).map(|p| p.unload()),
        Attach::RawTracePoint(_) => <&mut RawTracePoint>::try_from(program).map(|p| p.unload()),
        Attach::CgroupSockAddr => <&mut CgroupSockAddr>::try_from(program).map(|p| p.unload()),
        Attach::CgroupSockRelease => <&mut CgroupSock>::try_from(program).map(|p| p.unload()),
        Attach::CgroupSkbEgress | Attach::CgroupSkbIngress => {
            <&mut CgroupSkb>::try_from(program).map(|p| p.unload())
        }
        Attach::FEntry(_) => <&mut FEntry>::try_from(program).map(|p| p.unload()),
        Attach::FExit(_) => <&mut FExit>::try_from(program).map(|p| p.unload()),
        Attach::KProbe(_) | Attach::KRetProbe(_) => {
            <&mut KProbe>::try_from(program).map(|p| p.unload())
        }
    };
}

fn attach_hook(ebpf: &mut Ebpf, hook: &Hook, cx: &Context<'_>) -> Result<(), String> {
    let name = program_for(hook, cx.offsets.accept_ret_index)?;
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?;
    match hook.attach {
        Attach::TracePoint { category, name } => {
            let tracefs = system::ensure_tracefs().map_err(|e| e.to_string())?;
            if category == "sock" && name == "inet_sock_set_state" {
                tracefs::check_inet_sock_set_state_format(&tracefs)?;
            }
            let tp: &mut TracePoint = program.try_into().map_err(explain)?;
            tp.load().map_err(explain)?;
            tp.attach(category, name).map_err(explain)?;
        }
        Attach::RawTracePoint(name) => {
            let tp: &mut RawTracePoint = program.try_into().map_err(explain)?;
            tp.load().map_err(explain)?;
            tp.attach(name).map_err(explain)?;
        }
        // `Single` means "no flags": on 5.7+ aya attaches through a bpf_link, which
        // already coexists with other programs, and the kernel rejects link flags
        // (EINVAL). Before 5.7 it is a plain exclusive attach.
        Attach::CgroupSockAddr => {
            let cgroup = cgroup_root()?;
            let p: &mut CgroupSockAddr = program.try_into().map_err(explain)?;
            p.load().map_err(explain)?;
            p.attach(&cgroup, CgroupAttachMode::Single)
                .map_err(explain)?;
        }
        Attach::CgroupSockRelease => {
            let cgroup = cgroup_root()?;
            let p: &mut CgroupSock = program.try_into().map_err(explain)?;
            p.load().map_err(explain)?;
            p.attach(&cgroup, CgroupAttachMode::Single)
                .map_err(explain)?;
        }
        Attach::CgroupSkbEgress | Attach::CgroupSkbIngress => {
            let cgroup = cgroup_root()?;
            let p: &mut CgroupSkb = program.try_into().map_err(explain)?;
            p.load().map_err(explain)?;
            let direction = if matches!(hook.attach, Attach::CgroupSkbIngress) {
                CgroupSkbAttachType::Ingress
            } else {
                CgroupSkbAttachType::Egress
            };
            p.attach(&cgroup, direction, CgroupAttachMode::Single)
                .map_err(explain)?;
        }
        Attach::FEntry(function) => {
            let btf = cx.btf.ok_or("no kernel BTF (/sys/kernel/btf/vmlinux)")?;
            let p: &mut FEntry = program.try_into().map_err(explain)?;
            p.load(function, btf).map_err(explain)?;
            p.attach().map_err(explain)?;
        }
        Attach::FExit(function) => {
            let btf = cx.btf.ok_or("no kernel BTF (/sys/kernel/btf/vmlinux)")?;
            let p: &mut FExit = program.try_into().map_err(explain)?;
            p.load(function, btf).map_err(explain)?;
            p.attach().map_err(explain)?;
        }
        Attach::KProbe(function) | Attach::KRetProbe(function) => {
            if !kprobes_available() {
                return Err(
                    "no kprobe PMU (/sys/bus/event_source/devices/kprobe is absent: CONFIG_KPROBES is off)"
                        .into(),
                );
            }
            let p: &mut KProbe = program.try_into().map_err(explain)?;
            p.load().map_err(explain)?;
            p.attach(function, 0).map_err(explain)?;
        }
    }
    Ok(())
}

/// fentry and kprobe programs read the socket tuple and the datagram through struct
/// offsets from BTF; without them they would attach and see nothing.
fn socket_offsets_known(c: &KernelConfig) -> Result<(), String> {
    let needed = [
        ("sock_common.skc_family", c.skc_family),
        ("sock_common.skc_state", c.skc_state),
        ("sock_common.skc_daddr", c.skc_daddr),
        ("sock_common.skc_rcv_saddr", c.skc_rcv_saddr),
        ("sock_common.skc_dport", c.skc_dport),
        ("sock_common.skc_num", c.skc_num),
        ("sock_common.skc_v6_daddr", c.skc_v6_daddr),
        ("sock_common.skc_v6_rcv_saddr", c.skc_v6_rcv_saddr),
        ("sk_buff.head", c.skb_head),
        ("sk_buff.network_header", c.skb_network_header),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, off)| *off == NO_OFFSET)
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "kernel BTF offsets unavailable ({})",
            missing.join(", ")
        ))
    }
}

/// Whether the kernel has kprobes (the PMU aya attaches through).
pub fn kprobes_available() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

fn cgroup_root() -> Result<fs::File, String> {
    let path = system::cgroup2_mount().map_err(|e| e.to_string())?;
    fs::File::open(&path).map_err(|e| format!("cannot open cgroup v2 root {}: {e}", path.display()))
}

/// A short reason from an aya error: the kernel's errno name where there is one, plus
/// the first line of the verifier log.
fn explain(e: ProgramError) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let line = first_line(&text);
    match errno_in(&text) {
        // "the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1). Verifier
        // output: …" says little more than the errno; keep the call and the errno.
        Some(errno) => match line.split(" returned ").next() {
            Some(call) if call != line => format!("{errno} ({call} failed)"),
            _ => format!("{errno} ({line})"),
        },
        None => line,
    }
}

fn first_line(s: &str) -> String {
    // The whole verifier log, for whoever debugs a program the kernel refuses.
    if std::env::var_os("NETMON_VERIFIER_LOG").is_some() {
        eprintln!("{s}");
    }
    s.lines().next().unwrap_or(s).chars().take(300).collect()
}

/// `EPERM` etc. for the OS error codes aya embeds as "(os error N)".
fn errno_in(text: &str) -> Option<&'static str> {
    let start = text.find("os error ")? + "os error ".len();
    let code: i32 = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        ENOTSUPP_LINUX => "ENOTSUPP",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESRCH => "ESRCH",
        libc::E2BIG => "E2BIG",
        libc::EBUSY => "EBUSY",
        _ => return None,
    })
}

/// The kernel-internal ENOTSUPP (524) that BPF returns for unsupported attach types.
const ENOTSUPP_LINUX: i32 = 524;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_errno_in_aya_errors() {
        assert_eq!(
            errno_in("bpf_prog_load failed: Operation not permitted (os error 1)"),
            Some("EPERM")
        );
        assert_eq!(errno_in("no errno here"), None);
    }
}
