//! What the rules may ask about a live process beyond the event: its executable
//! (`/proc/PID/exe`) and its user's name (`/etc/passwd`). The one piece of the rules
//! path that does I/O; `netmon replay` uses [`crate::rules::NoResolver`] instead.
use std::collections::HashMap;

use crate::rules::ProcessResolver;

/// Caches answers (bounded) so a busy process costs one `readlink`.
#[derive(Default)]
pub struct ProcResolver {
    exes: HashMap<u32, Option<String>>,
    users: Option<HashMap<u32, String>>,
}

const MAX_CACHED: usize = 16384;

impl ProcessResolver for ProcResolver {
    fn exe(&mut self, pid: u32) -> Option<String> {
        if self.exes.len() >= MAX_CACHED {
            self.exes.clear();
        }
        self.exes
            .entry(pid)
            .or_insert_with(|| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned())
            })
            .clone()
    }

    fn user(&mut self, uid: u32) -> Option<String> {
        let users = self.users.get_or_insert_with(|| {
            std::fs::read_to_string("/etc/passwd")
                .map(|text| parse_passwd(&text))
                .unwrap_or_default()
        });
        users.get(&uid).cloned()
    }
}

fn parse_passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_passwd_lines() {
        let m = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\nbad line\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        );
        assert_eq!(m.get(&0).map(String::as_str), Some("root"));
        assert_eq!(m.get(&1000).map(String::as_str), Some("alice"));
    }

    #[test]
    fn knows_its_own_executable() {
        let mut r = ProcResolver::default();
        assert!(r.exe(std::process::id()).is_some());
    }
}
