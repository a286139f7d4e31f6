//! Lines on stderr that never panic: `eprintln!` panics (exit 101) when stderr cannot
//! be written (`2>/dev/full`, a closed descriptor). A warning or a summary that cannot
//! be shown is dropped; the exit code still says what happened. Owns nothing else.
use std::{fmt, io::Write as _};

/// Writes one line (`args` and a newline) to stderr, ignoring a write error.
pub fn line(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `eprintln!` that ignores write errors: `netmon::eline!("netmon: warning: {w}")`.
#[macro_export]
macro_rules! eline {
    ($($arg:tt)*) => {
        $crate::stderr::line(format_args!($($arg)*))
    };
}
