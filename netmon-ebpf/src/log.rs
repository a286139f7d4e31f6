//! The programs' diagnostics: `warn!` and `debug!` are aya-log-ebpf's (each tests the
//! `AYA_LOG_LEVEL` global the loader sets before it formats anything), or, without
//! the `log` feature, nothing at all: the arguments are named, never used, and no
//! code, map or global is left. Only the benchmark of "free when off" builds that
//! (`cargo xtask bench ebpf-log`).
#[cfg(feature = "log")]
pub(crate) use aya_log_ebpf::{debug, warn};

/// A log call compiled out: same arguments as aya-log-ebpf's, no code.
#[cfg(not(feature = "log"))]
macro_rules! compiled_out {
    ($ctx:expr, $fmt:literal $(, $arg:expr)* $(,)?) => {{
        let _ = $ctx;
        $(let _ = $arg;)*
    }};
}

#[cfg(not(feature = "log"))]
pub(crate) use {compiled_out as debug, compiled_out as warn};
