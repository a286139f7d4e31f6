//! A reader of p0f 3's signature file format (`p0f.fp`), `[tcp:response]` section only:
//! SYN-ACK signatures. The file is outside data (Debian's `p0f` package installs one at
//! `/etc/p0f/p0f.fp`, LGPL): it is read at run time, never embedded, and bounded
//! (`MAX_BYTES`, `MAX_LINE`, `MAX_SIGNATURES`); a line that does not parse is skipped
//! and counted, never fatal.
//!
//! ```text
//! label = s:unix:Linux:3.x
//! sig   = *:64:0:*:mss*10,*:mss,sok,ts,nop,ws:df:0
//!         ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass
//! ```
use crate::scan::tcpopt::Kind;

pub const MAX_BYTES: usize = 1 << 20;
pub const MAX_LINE: usize = 1024;
pub const MAX_SIGNATURES: usize = 10_000;

/// The window size field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Win {
    Any,
    Exact(u16),
    /// `mss*N`: N times the MSS option's value.
    Mss(u16),
    /// `mtu*N`: N times the MTU (taken as MSS + 40).
    Mtu(u16),
    /// `%N`: a multiple of N.
    Mod(u16),
}

/// One `sig` line with the label above it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// `s:unix:Linux:3.x` → class `unix`, name `Linux`, flavour `3.x`.
    pub class: String,
    pub name: String,
    pub flavour: String,
    /// p0f's `g:` generic signatures (and `!` user-agent-less ones) are less specific.
    pub generic: bool,
    /// 4, 6 or `None` for any.
    pub ver: Option<u8>,
    /// Initial TTL, `None` for any.
    pub ittl: Option<u8>,
    pub olen: u8,
    pub mss: Option<u16>,
    pub win: Win,
    pub scale: Option<u8>,
    pub layout: Vec<Kind>,
    pub eol_pad: u8,
    pub quirks: Vec<String>,
    /// `Some(false)`: no payload; `Some(true)`: payload; `None`: any.
    pub payload: Option<bool>,
}

/// The signatures read, and how many lines were refused.
#[derive(Clone, Debug, Default)]
pub struct SigFile {
    pub sigs: Vec<Signature>,
    pub bad_lines: usize,
}

/// Quirk names p0f knows (others make a signature unusable).
pub const QUIRKS: &[&str] = &[
    "df", "id+", "id-", "ecn", "0+", "flow", "seq-", "ack+", "ack-", "uptr+", "urgf+", "pushf+",
    "ts1-", "ts2+", "opt+", "exws", "bad",
];

/// Parses a whole file's text (only its first `MAX_BYTES`).
pub fn parse(text: &str) -> SigFile {
    let mut text = &text[..text.len().min(MAX_BYTES)];
    while !text.is_char_boundary(text.len()) {
        text = &text[..text.len() - 1];
    }
    let mut out = SigFile::default();
    let mut in_section = false;
    let mut label: Option<(String, String, String, bool)> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        if line.len() > MAX_LINE {
            out.bad_lines += 1;
            continue;
        }
        if line.starts_with('[') {
            in_section = line == "[tcp:response]";
            label = None;
            continue;
        }
        if !in_section {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            out.bad_lines += 1;
            continue;
        };
        match key.trim() {
            "label" => {
                label = parse_label(value.trim());
                if label.is_none() {
                    out.bad_lines += 1;
                }
            }
            "sig" => {
                let Some((class, name, flavour, generic)) = label.clone() else {
                    out.bad_lines += 1;
                    continue;
                };
                if out.sigs.len() >= MAX_SIGNATURES {
                    out.bad_lines += 1;
                    continue;
                }
                match parse_sig(value.trim()) {
                    Some(mut s) => {
                        s.class = class;
                        s.name = name;
                        s.flavour = flavour;
                        s.generic = generic;
                        out.sigs.push(s);
                    }
                    None => out.bad_lines += 1,
                }
            }
            // `sys = …` (for generic labels) and anything else: not needed here.
            _ => {}
        }
    }
    out
}

fn parse_label(v: &str) -> Option<(String, String, String, bool)> {
    let mut parts = v.splitn(4, ':');
    let kind = parts.next()?;
    let generic = match kind {
        "s" => false,
        "g" => true,
        _ => return None,
    };
    let class = parts.next()?.trim_start_matches('!').to_owned();
    let name = parts.next()?.to_owned();
    let flavour = parts.next().unwrap_or("").to_owned();
    (!name.is_empty()).then_some((class, name, flavour, generic))
}

fn any_or<T>(s: &str, f: impl Fn(&str) -> Option<T>) -> Option<Option<T>> {
    if s == "*" { Some(None) } else { f(s).map(Some) }
}

/// One `sig = …` value.
pub fn parse_sig(v: &str) -> Option<Signature> {
    let f: Vec<&str> = v.split(':').collect();
    if f.len() != 8 {
        return None;
    }
    let ver = any_or(f[0], |s| {
        s.parse::<u8>().ok().filter(|v| *v == 4 || *v == 6)
    })?;
    // `64`, `64-` (a TTL seen below its initial value), `64+3` (distance): the initial
    // TTL is the number before any sign.
    let ittl = any_or(f[1], |s| {
        let n = s.split(['-', '+']).next()?;
        n.parse::<u8>().ok()
    })?;
    let olen = f[2].parse::<u8>().ok()?;
    let mss = any_or(f[3], |s| s.parse::<u16>().ok())?;
    let (wsize, scale) = f[4].split_once(',')?;
    let win = if wsize == "*" {
        Win::Any
    } else if let Some(n) = wsize.strip_prefix("mss*") {
        Win::Mss(n.parse().ok()?)
    } else if let Some(n) = wsize.strip_prefix("mtu*") {
        Win::Mtu(n.parse().ok()?)
    } else if let Some(n) = wsize.strip_prefix('%') {
        Win::Mod(n.parse().ok().filter(|n| *n > 0)?)
    } else {
        Win::Exact(wsize.parse().ok()?)
    };
    let scale = any_or(scale, |s| s.parse::<u8>().ok())?;
    let mut layout = Vec::new();
    let mut eol_pad = 0;
    if !f[5].is_empty() {
        for o in f[5].split(',') {
            let k = match o {
                "nop" => Kind::Nop,
                "mss" => Kind::Mss,
                "ws" => Kind::Ws,
                "sok" => Kind::Sok,
                "sack" => Kind::Sack,
                "ts" => Kind::Ts,
                _ => {
                    if let Some(n) = o.strip_prefix("eol+") {
                        eol_pad = n.parse().ok()?;
                        Kind::Eol
                    } else if let Some(n) = o.strip_prefix('?') {
                        Kind::Other(n.parse().ok()?)
                    } else {
                        return None;
                    }
                }
            };
            if layout.len() >= crate::scan::tcpopt::MAX_OPTIONS {
                return None;
            }
            layout.push(k);
            if k == Kind::Eol {
                break;
            }
        }
    }
    let mut quirks = Vec::new();
    if !f[6].is_empty() {
        for q in f[6].split(',') {
            if !QUIRKS.contains(&q) {
                return None;
            }
            quirks.push(q.to_owned());
        }
    }
    let payload = match f[7] {
        "0" => Some(false),
        "+" => Some(true),
        "*" => None,
        _ => return None,
    };
    Some(Signature {
        class: String::new(),
        name: String::new(),
        flavour: String::new(),
        generic: false,
        ver,
        ittl,
        olen,
        mss,
        win,
        scale,
        layout,
        eol_pad,
        quirks,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_file_parses_only_its_response_section() {
        let f = parse(
            "; comment\n[tcp:request]\nlabel = s:unix:Linux:3.x\nsig = *:64:0:*:mss*10,0:mss:df:0\n\
             [tcp:response]\nlabel = s:unix:Linux:3.x\n\
             sig   = *:64:0:*:mss*10,*:mss,sok,ts,nop,ws:df:0\n\
             sig = 4:128-:0:1460:%8192,8:mss,nop,ws,sok,eol+1:df,id+:*\n\
             label = g:win:Windows:\nsig = *:128:0:*:65535,0:mss:df,id+:0\n\
             sig = broken\nsig = *:64:0:*:mss*10,*:mss,bogus:df:0\n\
             [http:response]\nlabel = s:!:nginx:1.x\n",
        );
        assert_eq!(f.sigs.len(), 3, "{f:?}");
        assert_eq!(f.bad_lines, 2);
        let s = &f.sigs[0];
        assert_eq!(
            (s.class.as_str(), s.name.as_str(), s.flavour.as_str()),
            ("unix", "Linux", "3.x")
        );
        assert_eq!(s.win, Win::Mss(10));
        assert_eq!(
            s.layout,
            [Kind::Mss, Kind::Sok, Kind::Ts, Kind::Nop, Kind::Ws]
        );
        let s = &f.sigs[1];
        assert_eq!(
            (s.ver, s.ittl, s.mss, s.win, s.scale),
            (Some(4), Some(128), Some(1460), Win::Mod(8192), Some(8))
        );
        assert_eq!((s.eol_pad, s.payload), (1, None));
        assert!(f.sigs[2].generic);
    }

    #[test]
    fn hostile_input_is_bounded() {
        let long = format!(
            "[tcp:response]\nlabel = s:unix:X:1\nsig = {}\n",
            "a".repeat(5000)
        );
        assert_eq!(parse(&long).bad_lines, 1);
        let many: String = std::iter::once("[tcp:response]\nlabel = s:unix:X:1\n".to_owned())
            .chain((0..MAX_SIGNATURES + 5).map(|_| "sig = *:64:0:*:*,*:mss:df:0\n".to_owned()))
            .collect();
        let f = parse(&many);
        assert_eq!(f.sigs.len(), MAX_SIGNATURES);
        assert!(parse_sig("*:64:0:*:%0,*:mss:df:0").is_none());
        assert!(parse_sig("*:999:0:*:*,*:mss:df:0").is_none());
        assert!(parse_sig(&format!("*:64:0:*:*,*:{}:df:0", vec!["nop"; 50].join(","))).is_none());
        // A cut in the middle of a multi-byte character.
        let _ = parse("é".repeat(MAX_BYTES).as_str());
    }

    #[test]
    fn debian_p0f_file_if_installed() {
        let Ok(text) = std::fs::read_to_string("/etc/p0f/p0f.fp") else {
            return;
        };
        let f = parse(&text);
        assert!(f.sigs.len() > 50, "{}", f.sigs.len());
        assert_eq!(f.bad_lines, 0);
        assert!(f.sigs.iter().any(|s| s.name == "Linux"));
    }
}
