//! The OS fingerprint of a host's SYN-ACK: initial TTL, window, MSS, window scale,
//! option order, DF and the other IP/TCP oddities p0f calls quirks (ECN among them),
//! matched against SYN-ACK signatures in p0f 3's format. Pure: the caller loads the
//! files (`load`) and hands over the reply.
//!
//! Signatures come from a `p0f.fp` file read at run time (`--p0f-fp`, default Debian's
//! `/etc/p0f/p0f.fp`; its data is LGPL and is never embedded here) and from netmon's
//! own few in `fingerprint/builtin.fp`. The option layout, the IP version and the IP
//! options length must match exactly (they are what tells stacks apart); the other
//! fields are weighed, and the confidence is the matched share of the weight.
//! p0f's SYN-ACK signatures are old (its Linux ones expect windows of `mss*4` or
//! `mss*10`), so a current Linux typically matches p0f's "Linux 3.x" partly and the
//! built-in "Linux 4.x-6.x" exactly.
pub mod p0f;

use std::path::Path;

use p0f::{SigFile, Signature, Win};

pub use crate::event::scan::OsGuess;
use crate::scan::{
    hints,
    reply::{Reply, TCP_ACK, TCP_CWR, TCP_ECE, TCP_PSH, TCP_URG},
    tcpopt::Kind,
};

/// The built-in signatures (netmon's own; see the file's head).
pub const BUILTIN: &str = include_str!("fingerprint/builtin.fp");

/// The lowest confidence reported.
pub const MIN_CONFIDENCE: f64 = 0.5;

/// Signature sets with where each came from.
#[derive(Clone, Debug, Default)]
pub struct SignatureSets {
    pub sets: Vec<(String, SigFile)>,
}

/// Loads the p0f file at `path` (if given; `required` makes a missing file an error)
/// and the built-in set. Returns the sets and warnings.
pub fn load(path: Option<&Path>, required: bool) -> Result<(SignatureSets, Vec<String>), String> {
    let mut sets = SignatureSets::default();
    let mut warnings = Vec::new();
    if let Some(path) = path {
        match read_bounded(path) {
            Ok(text) => {
                let f = p0f::parse(&text);
                if f.bad_lines > 0 {
                    warnings.push(format!(
                        "{}: {} signature lines could not be read and were skipped",
                        path.display(),
                        f.bad_lines
                    ));
                }
                sets.sets.push((path.display().to_string(), f));
            }
            Err(e) if required => {
                return Err(format!(
                    "--p0f-fp {}: {e}; give a readable p0f.fp file (Debian: apt-get install p0f)",
                    path.display()
                ));
            }
            Err(_) => {}
        }
    }
    sets.sets.push(("built-in".into(), p0f::parse(BUILTIN)));
    Ok((sets, warnings))
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(p0f::MAX_BYTES as u64)
        .read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The quirks of a reply, in p0f's names.
pub fn quirks(r: &Reply) -> Vec<&'static str> {
    let mut q = Vec::new();
    if !r.v6 {
        if r.df {
            q.push("df");
            if r.ip_id != 0 {
                q.push("id+");
            }
        } else if r.ip_id == 0 {
            q.push("id-");
        }
        if r.ip_reserved {
            q.push("0+");
        }
    }
    if r.ip_ecn != 0 || r.flags & (TCP_ECE | TCP_CWR) != 0 {
        q.push("ecn");
    }
    if r.seq == 0 {
        q.push("seq-");
    }
    if r.flags & TCP_ACK != 0 && r.ack == 0 {
        q.push("ack-");
    }
    if r.flags & TCP_URG != 0 {
        q.push("urgf+");
    } else if r.urg_ptr != 0 {
        q.push("uptr+");
    }
    if r.flags & TCP_PSH != 0 {
        q.push("pushf+");
    }
    if r.options.timestamp.is_some_and(|(own, _)| own == 0) {
        q.push("ts1-");
    }
    if r.options.trailing_data {
        q.push("opt+");
    }
    if r.options.wscale.is_some_and(|w| w > 14) {
        q.push("exws");
    }
    if r.options.malformed {
        q.push("bad");
    }
    q
}

/// The reply in p0f's signature notation (what `observed` reports).
pub fn observed(r: &Reply) -> String {
    let ittl = hints::initial_ttl(r.ttl);
    let layout: Vec<String> = r
        .options
        .layout
        .iter()
        .map(|k| match k {
            Kind::Eol => format!("eol+{}", r.options.eol_pad),
            k => k.name(),
        })
        .collect();
    format!(
        "{}:{}+{}:{}:{}:{},{}:{}:{}:{}",
        if r.v6 { 6 } else { 4 },
        ittl,
        ittl.saturating_sub(r.ttl),
        r.ip_opt_len,
        r.options.mss.map_or("*".to_owned(), |m| m.to_string()),
        r.window,
        r.options.wscale.unwrap_or(0),
        layout.join(","),
        quirks(r).join(","),
        if r.payload_len > 0 { "+" } else { "0" }
    )
}

/// How well `sig` fits `r`: `None` when a gate field differs, else (score, out of).
pub fn score(sig: &Signature, r: &Reply, q: &[&str]) -> Option<(f64, f64)> {
    let ver = if r.v6 { 6 } else { 4 };
    if sig.ver.is_some_and(|v| v != ver) || sig.olen != r.ip_opt_len {
        return None;
    }
    if sig.layout != r.options.layout
        || (sig.layout.last() == Some(&Kind::Eol) && sig.eol_pad != r.options.eol_pad)
    {
        return None;
    }
    let q_frac = {
        // Quirks: each one in either set but not both costs its share.
        let union: std::collections::BTreeSet<&str> = sig
            .quirks
            .iter()
            .map(String::as_str)
            .chain(q.iter().copied())
            .collect();
        let both = union
            .iter()
            .filter(|x| sig.quirks.iter().any(|s| s == *x) && q.contains(x))
            .count();
        if union.is_empty() {
            1.0
        } else {
            both as f64 / union.len() as f64
        }
    };
    let (mut got, mut of) = (0.0, 0.0);
    let mut field = |weight: f64, frac: f64| {
        of += weight;
        got += weight * frac;
    };
    let yes = |ok: bool| if ok { 1.0 } else { 0.0 };
    if let Some(ittl) = sig.ittl {
        field(2.0, yes(hints::initial_ttl(r.ttl) == ittl));
    }
    if let Some(mss) = sig.mss {
        field(1.0, yes(r.options.mss == Some(mss)));
    }
    let mss = u32::from(r.options.mss.unwrap_or(0));
    let win = u32::from(r.window);
    match sig.win {
        Win::Any => {}
        Win::Exact(w) => field(3.0, yes(win == u32::from(w))),
        Win::Mss(n) => field(3.0, yes(mss > 0 && win == mss * u32::from(n))),
        Win::Mtu(n) => field(3.0, yes(mss > 0 && win == (mss + 40) * u32::from(n))),
        Win::Mod(n) => field(3.0, yes(win % u32::from(n) == 0)),
    }
    if let Some(s) = sig.scale {
        field(1.0, yes(r.options.wscale.unwrap_or(0) == s));
    }
    field(2.0, q_frac);
    if let Some(p) = sig.payload {
        field(0.5, yes(p == (r.payload_len > 0)));
    }
    Some((got, of))
}

/// The best match over every set, if its confidence reaches `MIN_CONFIDENCE`. Ties go
/// to a specific signature over a generic one, then to the earlier set (the p0f file).
pub fn best(sets: &SignatureSets, r: &Reply) -> Option<OsGuess> {
    let q = quirks(r);
    let mut best: Option<(f64, bool, &str, &Signature)> = None;
    for (source, file) in &sets.sets {
        for sig in &file.sigs {
            let Some((got, of)) = score(sig, r, &q) else {
                continue;
            };
            let conf = if of == 0.0 { 0.0 } else { got / of };
            let better = match &best {
                None => true,
                Some((c, generic, _, _)) => {
                    conf > *c + 1e-9 || ((conf - *c).abs() <= 1e-9 && *generic && !sig.generic)
                }
            };
            if better {
                best = Some((conf, sig.generic, source, sig));
            }
        }
    }
    let (conf, _, source, sig) = best?;
    if conf < MIN_CONFIDENCE {
        return None;
    }
    Some(OsGuess {
        family: sig.name.clone(),
        label: if sig.flavour.is_empty() {
            sig.name.clone()
        } else {
            format!("{} {}", sig.name, sig.flavour)
        },
        class: sig.class.clone(),
        confidence: (conf * 100.0).round() / 100.0,
        exact: conf >= 1.0 - 1e-9,
        source: source.to_owned(),
        observed: observed(r),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::reply::parse_v4;

    fn linux_6_syn_ack(window: u16) -> Reply {
        let mut p = vec![
            0x45, 0, 0, 60, 0, 0, 0x40, 0, 63, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        p.extend([0, 22, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 2, 0xa0, 0x12]);
        p.extend(window.to_be_bytes());
        p.extend([0, 0, 0, 0]);
        p.extend([
            2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 7, 1, 3, 3, 7,
        ]);
        parse_v4(&p).unwrap()
    }

    #[test]
    fn a_current_linux_reply_matches_the_builtin_exactly() {
        let (sets, w) = load(None, false).unwrap();
        assert!(w.is_empty());
        let r = linux_6_syn_ack(65160);
        assert_eq!(observed(&r), "4:64+1:0:1460:65160,7:mss,sok,ts,nop,ws:df:0");
        let g = best(&sets, &r).unwrap();
        assert_eq!(
            (g.family.as_str(), g.exact, g.source.as_str()),
            ("Linux", true, "built-in")
        );
        assert_eq!(g.label, "Linux 4.x-6.x");
        // Another window and scale: the generic Linux signature.
        let g = best(&sets, &linux_6_syn_ack(29201)).unwrap();
        assert_eq!((g.label.as_str(), g.exact), ("Linux", true));
        // A quirk Linux does not have: still Linux, less sure.
        let mut r = linux_6_syn_ack(29201);
        r.ip_id = 99;
        let g = best(&sets, &r).unwrap();
        assert_eq!(g.family, "Linux");
        assert!(
            !g.exact && g.confidence < 1.0 && g.confidence >= MIN_CONFIDENCE,
            "{g:?}"
        );
    }

    #[test]
    fn quirks_and_gates() {
        let mut r = linux_6_syn_ack(65160);
        r.ip_id = 7;
        r.flags |= TCP_ECE;
        assert_eq!(quirks(&r), ["df", "id+", "ecn"]);
        let sig = p0f::parse_sig("*:64:0:*:*,*:mss,nop,ws:df:0").unwrap();
        assert!(score(&sig, &r, &quirks(&r)).is_none(), "layout differs");
        let sig = p0f::parse_sig("6:64:0:*:*,*:mss,sok,ts,nop,ws:df:0").unwrap();
        assert!(score(&sig, &r, &quirks(&r)).is_none(), "version differs");
        // Windows-like reply: TTL 128 side, scale 8.
        let (sets, _) = load(None, false).unwrap();
        let mut p = vec![
            0x45, 0, 0, 52, 0x12, 0x34, 0x40, 0, 127, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        p.extend([
            0, 22, 0x9c, 0x40, 0, 0, 0, 1, 0, 0, 0, 2, 0x80, 0x12, 0xff, 0xff,
        ]);
        p.extend([0, 0, 0, 0, 2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2]);
        let g = best(&sets, &parse_v4(&p).unwrap()).unwrap();
        assert_eq!((g.family.as_str(), g.exact), ("Windows", true));
    }

    #[test]
    fn with_debian_p0f_file_if_installed() {
        let path = Path::new("/etc/p0f/p0f.fp");
        if !path.exists() {
            return;
        }
        let (sets, w) = load(Some(path), true).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(sets.sets.len(), 2);
        let g = best(&sets, &linux_6_syn_ack(65160)).unwrap();
        assert_eq!(g.family, "Linux");
        assert!(load(Some(Path::new("/nonexistent/p0f.fp")), true).is_err());
        assert!(load(Some(Path::new("/nonexistent/p0f.fp")), false).is_ok());
    }
}
