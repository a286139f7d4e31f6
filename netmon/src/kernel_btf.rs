//! Struct offsets read from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! aya's Rust eBPF programs cannot carry CO-RE relocations, so netmon resolves the few
//! offsets its programs need here, at start, and hands them over in the `CONFIG` map.
//! No offset from one kernel's headers is compiled in, so the same object reads
//! `struct sock` correctly on 5.10 and on 6.18. A field this kernel lacks stays 0 and
//! the programs leave the matching event field out.
use btf_rs::{Btf, Type};
use netmon_common::{KernelConfig, NO_OFFSET};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The offsets plus a note for each one that could not be found.
#[derive(Debug)]
pub struct ResolvedOffsets {
    pub config: KernelConfig,
    pub missing: Vec<String>,
}

/// Reads the kernel's BTF and resolves every offset netmon uses, once per process:
/// `netmon doctor` and the loader it runs share the answer. The error is the reason
/// the file could not be read.
pub fn resolve() -> Result<&'static ResolvedOffsets, &'static str> {
    static RESOLVED: std::sync::OnceLock<Result<ResolvedOffsets, String>> =
        std::sync::OnceLock::new();
    RESOLVED
        .get_or_init(|| {
            // Mmap parses only the few types netmon asks for (parsing all of vmlinux
            // was most of netmon's start-up time), but sysfs only supports mmap of this
            // file since 6.16: older kernels answer ENODEV, and then the whole file is
            // read and parsed.
            let btf = Btf::from_file_with_backend(VMLINUX_BTF, btf_rs::Backend::Mmap)
                .or_else(|_| Btf::from_file_with_backend(VMLINUX_BTF, btf_rs::Backend::Cache))
                .map_err(|e| e.to_string())?;
            Ok(resolve_from(&btf))
        })
        .as_ref()
        .map_err(String::as_str)
}

pub fn resolve_from(btf: &Btf) -> ResolvedOffsets {
    let mut out = ResolvedOffsets {
        config: KernelConfig::UNKNOWN,
        missing: Vec::new(),
    };
    // Each field with the paths it has had across kernels, newest layout first.
    let mut get = |name: &str, paths: &[&[&str]]| -> u32 {
        match paths.iter().find_map(|p| member_offset(btf, name, p)) {
            Some(off) => off,
            None => {
                out.missing
                    .push(format!("struct {name}.{}", paths[0].join(".")));
                NO_OFFSET
            }
        }
    };
    let config = KernelConfig {
        tcp_sock_bytes_acked: get("tcp_sock", &[&["bytes_acked"][..]]),
        tcp_sock_bytes_received: get("tcp_sock", &[&["bytes_received"][..]]),
        sock_net: get("sock", &[&["__sk_common", "skc_net"][..]]),
        net_ns_inum: get("net", &[&["ns", "inum"][..]]),
        self_pid: 0,
        // Moved into sock_common as skc_flags in 6.18.
        sock_flags: get("sock", &[&["__sk_common", "skc_flags"][..], &["sk_flags"]]),
        skc_family: get("sock_common", &[&["skc_family"]]),
        skc_state: get("sock_common", &[&["skc_state"]]),
        skc_daddr: get("sock_common", &[&["skc_daddr"]]),
        skc_rcv_saddr: get("sock_common", &[&["skc_rcv_saddr"]]),
        skc_dport: get("sock_common", &[&["skc_dport"]]),
        skc_num: get("sock_common", &[&["skc_num"]]),
        skc_v6_daddr: get("sock_common", &[&["skc_v6_daddr"]]),
        skc_v6_rcv_saddr: get("sock_common", &[&["skc_v6_rcv_saddr"]]),
        skb_head: get("sk_buff", &[&["head"]]),
        skb_network_header: get("sk_buff", &[&["network_header"]]),
        accept_ret_index: func_arg_count(btf, "inet_csk_accept").unwrap_or(0),
        task_real_parent: get("task_struct", &[&["real_parent"]]),
        task_tgid: get("task_struct", &[&["tgid"]]),
        task_pid: get("task_struct", &[&["pid"]]),
        task_start_time: get("task_struct", &[&["start_time"]]),
        task_mm: get("task_struct", &[&["mm"]]),
        mm_arg_start: get("mm_struct", &[&["arg_start"]]),
        mm_arg_end: get("mm_struct", &[&["arg_end"]]),
        cap_backend: [0; netmon_common::cap::COUNT],
    };
    out.config = config;
    out
}

/// Byte offset of `path` (member names, outermost first) inside `struct name`.
/// Members of anonymous structs and unions are found as if they were direct members,
/// as C lets code name them.
pub fn member_offset(btf: &Btf, name: &str, path: &[&str]) -> Option<u32> {
    let types = btf.resolve_types_by_name(name).ok()?;
    let root = types.into_iter().find_map(|t| match t {
        Type::Struct(s) if !s.members.is_empty() => Some(s),
        _ => None,
    })?;
    let mut current = root;
    let mut bits = 0u32;
    for (i, field) in path.iter().enumerate() {
        let (offset, member_type) = find_member(btf, &current, field)?;
        bits += offset;
        if i + 1 < path.len() {
            current = match strip_modifiers(btf, member_type)? {
                Type::Struct(s) | Type::Union(s) => s,
                _ => return None,
            };
        }
    }
    bits.is_multiple_of(8).then_some(bits / 8)
}

/// Number of parameters of kernel function `name` (from its BTF prototype).
pub fn func_arg_count(btf: &Btf, name: &str) -> Option<u32> {
    let types = btf.resolve_types_by_name(name).ok()?;
    types.into_iter().find_map(|t| match t {
        Type::Func(f) => match btf.resolve_chained_type(&f).ok()? {
            Type::FuncProto(p) => Some(p.parameters.len() as u32),
            _ => None,
        },
        _ => None,
    })
}

/// Bit offset and type of member `field`, searching anonymous members too.
fn find_member(btf: &Btf, s: &btf_rs::Struct, field: &str) -> Option<(u32, Type)> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let ty = btf.resolve_chained_type(m).ok()?;
        if name == field {
            return Some((m.bit_offset(), ty));
        }
        if name.is_empty()
            && let Some(Type::Struct(inner) | Type::Union(inner)) = strip_modifiers(btf, ty)
            && let Some((off, t)) = find_member(btf, &inner, field)
        {
            return Some((m.bit_offset() + off, t));
        }
    }
    None
}

/// Follows typedefs and qualifiers to the underlying type.
fn strip_modifiers(btf: &Btf, mut ty: Type) -> Option<Type> {
    for _ in 0..16 {
        match ty {
            Type::Typedef(_) | Type::Volatile(_) | Type::Const(_) | Type::Restrict(_) => {
                let t = ty.as_btf_type()?;
                ty = btf.resolve_chained_type(t).ok()?;
            }
            other => return Some(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against the host kernel's BTF when it has one (every kernel netmon supports).
    #[test]
    fn resolves_offsets_on_this_kernel() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: {VMLINUX_BTF} absent");
            return;
        }
        let r = resolve().unwrap();
        assert!(r.missing.is_empty(), "missing: {:?}", r.missing);
        let c = r.config;
        // Plausibility, not exact values: those differ per kernel, which is the point.
        assert!(c.tcp_sock_bytes_acked > 1000 && c.tcp_sock_bytes_acked < 4096);
        assert!(c.tcp_sock_bytes_received > 1000 && c.tcp_sock_bytes_received < 4096);
        assert!(c.sock_net > 0 && c.sock_net < 256);
        assert!(c.net_ns_inum > 0 && c.net_ns_inum < 1024);
        assert!(c.sock_flags > 0 && c.sock_flags < 1024);
        // skc_daddr is the first field of struct sock_common: offset 0 is legitimate,
        // so the programs treat only the fields that can never be at 0 as "unknown".
        assert_eq!(c.skc_daddr, 0);
        assert_eq!(c.skc_rcv_saddr, 4);
        assert!(c.skc_dport > 0 && c.skc_num == c.skc_dport + 2);
        assert!(c.skc_family > 0 && c.skc_v6_daddr > 0 && c.skc_v6_rcv_saddr > 0);
        assert!(c.skb_head > 0 && c.skb_network_header > 0);
        assert!(c.task_pid > 0 && c.task_tgid == c.task_pid + 4);
        assert!(c.task_real_parent > c.task_tgid && c.task_start_time > 0 && c.task_mm > 0);
        assert!(c.mm_arg_start > 0 && c.mm_arg_end == c.mm_arg_start + 8);
        assert!(
            matches!(c.accept_ret_index, 2 | 4),
            "{}",
            c.accept_ret_index
        );
    }

    #[test]
    fn unknown_members_are_none() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            return;
        }
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        assert_eq!(member_offset(&btf, "tcp_sock", &["no_such_field"]), None);
        assert_eq!(member_offset(&btf, "no_such_struct", &["x"]), None);
    }
}
