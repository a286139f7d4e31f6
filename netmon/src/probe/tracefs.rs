//! Tracepoint record layouts: the programs read records at fixed offsets, so before a
//! tracepoint attaches its tracefs `format` file is checked against them, and a changed
//! layout is refused rather than misread. Pure text checks, unit-tested.
use std::{fs, path::Path};

/// Checks `sock:inet_sock_set_state`'s record layout under the tracefs mount `tracefs`.
pub(super) fn check_inet_sock_set_state_format(tracefs: &Path) -> Result<(), String> {
    let path = tracefs.join("events/sock/inet_sock_set_state/format");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    verify_format(&text, INET_SOCK_SET_STATE_FIELDS)
        .map_err(|field| format!("unexpected layout of sock:inet_sock_set_state ({field})"))
}

/// Field name and offset the program uses (`netmon-ebpf/src/tracepoint_tcp.rs`).
const INET_SOCK_SET_STATE_FIELDS: &[(&str, usize)] = &[
    ("skaddr", 8),
    ("oldstate", 16),
    ("newstate", 20),
    ("sport", 24),
    ("dport", 26),
    ("family", 28),
    ("protocol", 30),
    ("saddr", 32),
    ("daddr", 36),
    ("saddr_v6", 40),
    ("daddr_v6", 56),
];

/// Checks `expected` (name, offset) pairs against a tracefs `format` text; the error
/// names the first field that differs.
pub fn verify_format(format: &str, expected: &[(&str, usize)]) -> Result<(), String> {
    for (name, offset) in expected {
        let found = format.lines().find_map(|line| {
            let decl = line.trim().strip_prefix("field:")?;
            let (decl, rest) = decl.split_once(';')?;
            let field_name = decl
                .split_whitespace()
                .last()?
                .split('[')
                .next()?
                .trim_start_matches('*');
            if field_name != *name {
                return None;
            }
            let off = rest
                .split("offset:")
                .nth(1)?
                .split(';')
                .next()?
                .trim()
                .parse::<usize>()
                .ok()?;
            Some(off)
        });
        match found {
            Some(o) if o == *offset => {}
            Some(o) => return Err(format!("{name} at offset {o}, expected {offset}")),
            None => return Err(format!("{name} missing")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT_6_X: &str = "name: inet_sock_set_state
ID: 1442
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn accepts_the_known_layout() {
        assert_eq!(
            verify_format(FORMAT_6_X, INET_SOCK_SET_STATE_FIELDS),
            Ok(())
        );
    }

    #[test]
    fn refuses_a_moved_field() {
        let moved = FORMAT_6_X.replace("sport;\toffset:24", "sport;\toffset:44");
        let err = verify_format(&moved, INET_SOCK_SET_STATE_FIELDS).unwrap_err();
        assert_eq!(err, "sport at offset 44, expected 24");
        let missing = FORMAT_6_X.replace("protocol", "proto_x");
        assert_eq!(
            verify_format(&missing, INET_SOCK_SET_STATE_FIELDS).unwrap_err(),
            "protocol missing"
        );
    }
}
