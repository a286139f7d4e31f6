//! The hook table: what netmon observes (`Capability`), the backends that can provide
//! it, and, as data, every program and where it attaches. Nothing here touches the
//! kernel; `attach.rs` walks this table.
//!
//! One notion of optional: a capability is optional when netmon works on without it
//! (`Capability::is_optional`). Its hooks attach after the core ones, whatever
//! `--backend` says, and a failure is a warning, never an error.
use netmon_common::cap;

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// For each capability the best hook that attaches: fentry, then kprobe, then tracepoint.
    Auto,
    /// fentry/fexit programs (BPF trampolines); fails if the kernel refuses them.
    Fentry,
    /// kprobes/kretprobes; fails if the kernel has no kprobes.
    Kprobe,
    /// The `sock:inet_sock_set_state` tracepoint and cgroup socket hooks.
    Tracepoint,
}

impl BackendChoice {
    /// The `backend` id the programs use; 0 for `auto` (never an owner).
    pub fn wire_id(self) -> u8 {
        match self {
            BackendChoice::Auto => 0,
            BackendChoice::Fentry => netmon_common::backend::FENTRY as u8,
            BackendChoice::Kprobe => netmon_common::backend::KPROBE as u8,
            BackendChoice::Tracepoint => netmon_common::backend::TRACEPOINT as u8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Fentry => "fentry",
            BackendChoice::Kprobe => "kprobe",
            BackendChoice::Tracepoint => "tracepoint",
        }
    }

    /// The backends `attach_all` tries for this choice, best first.
    pub(super) fn order(self) -> &'static [BackendChoice] {
        match self {
            BackendChoice::Auto => &[
                BackendChoice::Fentry,
                BackendChoice::Kprobe,
                BackendChoice::Tracepoint,
            ],
            BackendChoice::Fentry => &[BackendChoice::Fentry],
            BackendChoice::Kprobe => &[BackendChoice::Kprobe],
            BackendChoice::Tracepoint => &[BackendChoice::Tracepoint],
        }
    }
}

/// What netmon observes; each is provided by one backend at a time. The discriminant
/// is the capability's index into `KernelConfig::cap_backend` (`netmon_common::cap`):
/// one numbering for both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(usize)]
pub enum Capability {
    TcpConnect = cap::TCP_CONNECT,
    TcpAccept = cap::TCP_ACCEPT,
    TcpListen = cap::TCP_LISTEN,
    TcpClose = cap::TCP_CLOSE,
    UdpSend = cap::UDP_SEND,
    /// DNS queries and responses (optional: cgroup skb hooks, the same on every backend).
    Dns = cap::DNS,
    /// The process table: execs, forks and exits from the scheduler's tracepoints, so
    /// every event names its process even after it is gone and a reused pid never
    /// inherits another's context (optional: tracepoints every supported kernel has).
    ProcessExit = cap::PROCESS_EXIT,
}

impl Capability {
    /// The capabilities `--backend` chooses hooks for; netmon needs at least one.
    pub const CORE: [Capability; 5] = [
        Capability::TcpConnect,
        Capability::TcpAccept,
        Capability::TcpListen,
        Capability::TcpClose,
        Capability::UdpSend,
    ];

    /// Capabilities netmon can run without, in the order they attach (after the core).
    pub const OPTIONAL: [Capability; 2] = [Capability::ProcessExit, Capability::Dns];

    pub fn is_optional(self) -> bool {
        Self::OPTIONAL.contains(&self)
    }

    /// Index into `KernelConfig::cap_backend`.
    pub fn wire_index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Capability::TcpConnect => "tcp_connect",
            Capability::TcpAccept => "tcp_accept",
            Capability::TcpListen => "tcp_listen",
            Capability::TcpClose => "tcp_close",
            Capability::UdpSend => "udp_send",
            Capability::Dns => "dns",
            Capability::ProcessExit => "process_exit",
        }
    }
}

/// How one program attaches.
#[derive(Clone, Copy, Debug)]
pub(super) enum Attach {
    TracePoint {
        category: &'static str,
        name: &'static str,
    },
    /// A raw tracepoint (4.17+): the tracepoint's `TP_PROTO` arguments, not its record.
    RawTracePoint(&'static str),
    CgroupSockAddr,
    /// `cgroup/sock_release` (5.9+).
    CgroupSockRelease,
    CgroupSkbEgress,
    CgroupSkbIngress,
    FEntry(&'static str),
    FExit(&'static str),
    KProbe(&'static str),
    KRetProbe(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Hook {
    pub program: &'static str,
    pub attach: Attach,
    /// The group works without it: a failure is a warning saying what is lost.
    pub optional: bool,
    /// What is lost when an optional hook does not attach.
    pub optional_because: &'static str,
}

impl Hook {
    pub fn describe(&self) -> String {
        match self.attach {
            Attach::TracePoint { category, name } => format!("tracepoint:{category}:{name}"),
            Attach::RawTracePoint(name) => format!("raw_tracepoint:{name}"),
            Attach::CgroupSockAddr
            | Attach::CgroupSockRelease
            | Attach::CgroupSkbEgress
            | Attach::CgroupSkbIngress => format!("cgroup:{}", self.program),
            Attach::FEntry(f) => format!("fentry:{f}"),
            Attach::FExit(f) => format!("fexit:{f}"),
            Attach::KProbe(f) => format!("kprobe:{f}"),
            Attach::KRetProbe(f) => format!("kretprobe:{f}"),
        }
    }

    /// The hook family an optional capability reports as its backend.
    fn family(&self) -> &'static str {
        match self.attach {
            Attach::TracePoint { .. } | Attach::RawTracePoint(_) => "tracepoint",
            Attach::CgroupSockAddr
            | Attach::CgroupSockRelease
            | Attach::CgroupSkbEgress
            | Attach::CgroupSkbIngress => "cgroup",
            Attach::FEntry(_) | Attach::FExit(_) => "fentry",
            Attach::KProbe(_) | Attach::KRetProbe(_) => "kprobe",
        }
    }
}

/// Programs that attach together and together provide some capabilities.
pub(super) struct HookGroup {
    pub backend: BackendChoice,
    pub capabilities: &'static [Capability],
    pub hooks: &'static [Hook],
}

impl HookGroup {
    pub fn is_optional(&self) -> bool {
        self.capabilities.iter().all(|c| c.is_optional())
    }

    /// The name the report gives as backend: the backend for core capabilities, the
    /// hook family for optional ones (they attach whatever the backend).
    pub fn backend_name(&self) -> &'static str {
        if self.is_optional() {
            self.hooks.first().map_or(self.backend.name(), Hook::family)
        } else {
            self.backend.name()
        }
    }
}

/// The group that provides optional capability `cap`.
pub(super) fn optional_group(cap: Capability) -> Option<&'static HookGroup> {
    HOOK_GROUPS
        .iter()
        .find(|g| g.is_optional() && g.capabilities.contains(&cap))
}

const fn hook(program: &'static str, attach: Attach) -> Hook {
    Hook {
        program,
        attach,
        optional: false,
        optional_because: "",
    }
}

use Capability::{Dns, ProcessExit, TcpAccept, TcpClose, TcpConnect, TcpListen, UdpSend};

const TCP_STATE_FENTRY: Hook = hook("fentry_tcp_set_state", Attach::FEntry("tcp_set_state"));
const TCP_STATE_KPROBE: Hook = hook("kprobe_tcp_set_state", Attach::KProbe("tcp_set_state"));
const TCP_STATE_TP: Hook = hook(
    "inet_sock_set_state",
    Attach::TracePoint {
        category: "sock",
        name: "inet_sock_set_state",
    },
);

/// One egress program serves UDP (tracepoint backend) and DNS: each packet pays for
/// one program run, and it asks `cap_backend` which of the two it is wanted for.
const SKB_EGRESS: Hook = hook("skb_egress", Attach::CgroupSkbEgress);

/// The sock_addr programs that record a socket's owner, likewise shared by UDP
/// (tracepoint backend) and DNS: a `connect()` or `sendmsg()` pays for one run.
const SOCK_CONNECT4: Hook = hook("sock_connect4", Attach::CgroupSockAddr);
const SOCK_CONNECT6: Hook = hook("sock_connect6", Attach::CgroupSockAddr);
const SOCK_SENDMSG4: Hook = hook("sock_sendmsg4", Attach::CgroupSockAddr);
const SOCK_SENDMSG6: Hook = hook("sock_sendmsg6", Attach::CgroupSockAddr);

/// Forgets a socket's owner (`SOCKET_OWNERS`) when the socket is released. Kernels
/// before 5.9 lack the hook: owners then leave only by LRU eviction, so a churn of
/// sockets can push out live ones (counted in `stats.kernel_maps.socket_owners`).
const SOCK_RELEASE: Hook = Hook {
    optional: true,
    optional_because: "closed sockets' owners stay in SOCKET_OWNERS until evicted",
    ..hook("sock_release", Attach::CgroupSockRelease)
};

/// Every way netmon knows to observe each capability. The order of backends to try
/// is `fentry`, `kprobe`, `tracepoint` (see `BackendChoice::order`).
pub(super) static HOOK_GROUPS: &[HookGroup] = &[
    // fentry/fexit: BPF trampolines, the cheapest hooks (5.5+, where allowed).
    HookGroup {
        backend: BackendChoice::Fentry,
        capabilities: &[TcpConnect],
        hooks: &[
            hook("fentry_tcp_connect", Attach::FEntry("tcp_connect")),
            TCP_STATE_FENTRY,
        ],
    },
    HookGroup {
        backend: BackendChoice::Fentry,
        capabilities: &[TcpAccept],
        hooks: &[hook(
            "fexit_inet_csk_accept",
            Attach::FExit("inet_csk_accept"),
        )],
    },
    HookGroup {
        backend: BackendChoice::Fentry,
        capabilities: &[TcpListen],
        hooks: &[
            hook(
                "fentry_inet_csk_listen_start",
                Attach::FEntry("inet_csk_listen_start"),
            ),
            TCP_STATE_FENTRY,
        ],
    },
    HookGroup {
        backend: BackendChoice::Fentry,
        capabilities: &[TcpClose],
        hooks: &[TCP_STATE_FENTRY],
    },
    HookGroup {
        backend: BackendChoice::Fentry,
        capabilities: &[UdpSend],
        hooks: &[
            hook("fentry_ip_send_skb", Attach::FEntry("ip_send_skb")),
            hook("fentry_ip6_send_skb", Attach::FEntry("ip6_send_skb")),
        ],
    },
    // kprobes: every production kernel with CONFIG_KPROBES.
    HookGroup {
        backend: BackendChoice::Kprobe,
        capabilities: &[TcpConnect],
        hooks: &[
            hook("kprobe_tcp_connect", Attach::KProbe("tcp_connect")),
            TCP_STATE_KPROBE,
        ],
    },
    HookGroup {
        backend: BackendChoice::Kprobe,
        capabilities: &[TcpAccept],
        hooks: &[hook(
            "kretprobe_inet_csk_accept",
            Attach::KRetProbe("inet_csk_accept"),
        )],
    },
    HookGroup {
        backend: BackendChoice::Kprobe,
        capabilities: &[TcpListen],
        hooks: &[
            hook(
                "kprobe_inet_csk_listen_start",
                Attach::KProbe("inet_csk_listen_start"),
            ),
            TCP_STATE_KPROBE,
        ],
    },
    HookGroup {
        backend: BackendChoice::Kprobe,
        capabilities: &[TcpClose],
        hooks: &[TCP_STATE_KPROBE],
    },
    HookGroup {
        backend: BackendChoice::Kprobe,
        capabilities: &[UdpSend],
        hooks: &[
            hook("kprobe_ip_send_skb", Attach::KProbe("ip_send_skb")),
            hook("kprobe_ip6_send_skb", Attach::KProbe("ip6_send_skb")),
        ],
    },
    // The tracepoint and cgroup hooks: every kernel netmon supports.
    HookGroup {
        backend: BackendChoice::Tracepoint,
        capabilities: &[TcpConnect, TcpAccept, TcpListen, TcpClose],
        hooks: &[TCP_STATE_TP],
    },
    HookGroup {
        backend: BackendChoice::Tracepoint,
        capabilities: &[UdpSend],
        hooks: &[
            SOCK_CONNECT4,
            SOCK_CONNECT6,
            SOCK_SENDMSG4,
            SOCK_SENDMSG6,
            SKB_EGRESS,
            SOCK_RELEASE,
        ],
    },
    // Optional, attached after the core whatever the backend (see `attach_optional`).
    //
    // The process table: tracepoints every supported kernel has.
    HookGroup {
        backend: BackendChoice::Tracepoint,
        capabilities: &[ProcessExit],
        hooks: &[
            hook(
                "sched_process_exit",
                Attach::TracePoint {
                    category: "sched",
                    name: "sched_process_exit",
                },
            ),
            hook(
                "sched_process_exec",
                Attach::TracePoint {
                    category: "sched",
                    name: "sched_process_exec",
                },
            ),
            hook(
                "sched_process_fork",
                Attach::RawTracePoint("sched_process_fork"),
            ),
        ],
    },
    // DNS: cgroup hooks exist on every kernel netmon supports, so DNS uses them
    // whatever backend provides the rest. The sock_addr hooks record which process
    // owns sockets that talk to DNS ports (TCP too); the skb hooks copy the DNS
    // payloads in both directions.
    HookGroup {
        backend: BackendChoice::Tracepoint,
        capabilities: &[Dns],
        hooks: &[
            SOCK_CONNECT4,
            SOCK_CONNECT6,
            SOCK_SENDMSG4,
            SOCK_SENDMSG6,
            SKB_EGRESS,
            hook("skb_ingress", Attach::CgroupSkbIngress),
            SOCK_RELEASE,
        ],
    },
];

/// Programs that exist once per kernel prototype of their function: (hook name, the
/// function's argument count in BTF, program to load).
const PROTOTYPE_VARIANTS: &[(&str, u32, &str)] = &[
    ("fexit_inet_csk_accept", 4, "fexit_inet_csk_accept_4args"),
    ("fexit_inet_csk_accept", 2, "fexit_inet_csk_accept_2args"),
];

/// The program that implements `hook` on a kernel whose `inet_csk_accept` takes
/// `accept_args` arguments.
pub(super) fn program_for(hook: &Hook, accept_args: u32) -> Result<&'static str, String> {
    let mut variants = PROTOTYPE_VARIANTS
        .iter()
        .filter(|(h, _, _)| *h == hook.program)
        .peekable();
    if variants.peek().is_none() {
        return Ok(hook.program);
    }
    variants
        .find(|(_, n, _)| *n == accept_args)
        .map(|(_, _, p)| *p)
        .ok_or_else(|| {
            format!(
                "this kernel's {} takes {accept_args} arguments, a prototype netmon does not know",
                hook.describe()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_has_a_hook_group_and_its_own_wire_slot() {
        let all = Capability::CORE.iter().chain(&Capability::OPTIONAL);
        let mut slots = std::collections::BTreeSet::new();
        for c in all {
            assert!(
                HOOK_GROUPS.iter().any(|g| g.capabilities.contains(c)),
                "{c:?}"
            );
            assert!(c.wire_index() < cap::COUNT);
            assert!(slots.insert(c.wire_index()), "{c:?} shares a slot");
        }
        for c in Capability::CORE {
            assert!(!c.is_optional());
        }
        // Optional capabilities never share a group with core ones.
        for g in HOOK_GROUPS {
            let optional = g.capabilities.iter().filter(|c| c.is_optional()).count();
            assert!(optional == 0 || optional == g.capabilities.len());
        }
        assert_eq!(
            optional_group(Capability::Dns).unwrap().backend_name(),
            "cgroup"
        );
        assert_eq!(
            optional_group(Capability::ProcessExit)
                .unwrap()
                .backend_name(),
            "tracepoint"
        );
    }

    #[test]
    fn accept_picks_the_program_of_the_kernels_prototype() {
        let accept = hook("fexit_inet_csk_accept", Attach::FExit("inet_csk_accept"));
        assert_eq!(program_for(&accept, 4), Ok("fexit_inet_csk_accept_4args"));
        assert_eq!(program_for(&accept, 2), Ok("fexit_inet_csk_accept_2args"));
        assert!(program_for(&accept, 3).is_err());
        assert_eq!(program_for(&TCP_STATE_TP, 0), Ok("inet_sock_set_state"));
    }
}
