//! TCP options of a segment someone else sent (a SYN-ACK), parsed without trusting a
//! length, and the options the SYN scan sends: pure, no I/O.
//!
//! The parser keeps what an OS fingerprint and an uptime guess need: the option kinds in
//! the order they came (p0f's "option layout"), MSS, window scale, the timestamp values
//! and the oddities p0f calls quirks (`bad`, `opt+`, `exws`, `ts1-`, EOL padding). It
//! reads at most the 40 bytes a TCP header can hold and at most `MAX_OPTIONS` options.

/// Option kinds as p0f names them in an option layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Eol,
    Nop,
    Mss,
    Ws,
    Sok,
    Sack,
    Ts,
    /// Any other kind (p0f's `?N`).
    Other(u8),
}

impl Kind {
    /// The name in p0f's notation.
    pub fn name(self) -> String {
        match self {
            Kind::Eol => "eol".into(),
            Kind::Nop => "nop".into(),
            Kind::Mss => "mss".into(),
            Kind::Ws => "ws".into(),
            Kind::Sok => "sok".into(),
            Kind::Sack => "sack".into(),
            Kind::Ts => "ts".into(),
            Kind::Other(k) => format!("?{k}"),
        }
    }
}

/// The most options kept (40 bytes of one-byte NOPs, at most).
pub const MAX_OPTIONS: usize = 40;

/// What a segment's options say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Kinds in order; after an EOL, nothing more is read.
    pub layout: Vec<Kind>,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    /// (own value, echoed value).
    pub timestamp: Option<(u32, u32)>,
    /// Bytes after the EOL (p0f's `eol+N`).
    pub eol_pad: u8,
    /// A length that runs past the end or is too short for its kind.
    pub malformed: bool,
    /// Non-zero bytes after the EOL (p0f's `opt+`).
    pub trailing_data: bool,
}

/// Parses the option bytes of a TCP header (what follows the 20 fixed bytes, up to the
/// data offset). Never panics; anything beyond 40 bytes is ignored.
pub fn parse(opts: &[u8]) -> Options {
    let opts = &opts[..opts.len().min(40)];
    let mut o = Options::default();
    let mut i = 0;
    while i < opts.len() && o.layout.len() < MAX_OPTIONS {
        let kind = opts[i];
        match kind {
            0 => {
                o.layout.push(Kind::Eol);
                let rest = &opts[i + 1..];
                o.eol_pad = rest.len() as u8;
                o.trailing_data = rest.iter().any(|&b| b != 0);
                return o;
            }
            1 => {
                o.layout.push(Kind::Nop);
                i += 1;
                continue;
            }
            _ => {}
        }
        let Some(&len) = opts.get(i + 1) else {
            o.malformed = true;
            o.layout.push(kind_of(kind));
            return o;
        };
        let len = usize::from(len);
        if len < 2 || i + len > opts.len() {
            o.malformed = true;
            o.layout.push(kind_of(kind));
            return o;
        }
        let body = &opts[i + 2..i + len];
        let k = kind_of(kind);
        match (k, body.len()) {
            (Kind::Mss, 2) => o.mss = Some(u16::from_be_bytes([body[0], body[1]])),
            (Kind::Ws, 1) => o.wscale = Some(body[0]),
            (Kind::Sok, 0) | (Kind::Other(_), _) => {}
            (Kind::Sack, n) if n % 8 == 0 => {}
            (Kind::Ts, 8) => {
                o.timestamp = Some((
                    u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                ))
            }
            _ => o.malformed = true,
        }
        o.layout.push(k);
        i += len;
    }
    o
}

fn kind_of(k: u8) -> Kind {
    match k {
        0 => Kind::Eol,
        1 => Kind::Nop,
        2 => Kind::Mss,
        3 => Kind::Ws,
        4 => Kind::Sok,
        5 => Kind::Sack,
        8 => Kind::Ts,
        other => Kind::Other(other),
    }
}

/// The options of the SYN scan's probes, in the order a Linux client sends them (MSS
/// 1460, SACK permitted, timestamps, NOP, window scale 7): 20 bytes. A server answers
/// a SYN with only the options the SYN offered, so these make the SYN-ACK show its
/// full layout (for the fingerprint) and its timestamp clock (for the uptime guess).
pub fn syn_options(tsval: u32) -> [u8; 20] {
    let t = tsval.to_be_bytes();
    [
        2, 4, 0x05, 0xb4, // MSS 1460
        4, 2, // SACK permitted
        8, 10, t[0], t[1], t[2], t[3], 0, 0, 0, 0, // timestamps (echo 0)
        1, // NOP
        3, 3, 7, // window scale 7
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linux_syn_ack_layout() {
        // mss 1460, sok, ts 0x01020304/0x0a0b0c0d, nop, ws 7
        let b = [
            2, 4, 5, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 10, 11, 12, 13, 1, 3, 3, 7,
        ];
        let o = parse(&b);
        assert_eq!(
            o.layout,
            [Kind::Mss, Kind::Sok, Kind::Ts, Kind::Nop, Kind::Ws]
        );
        assert_eq!(o.mss, Some(1460));
        assert_eq!(o.wscale, Some(7));
        assert_eq!(o.timestamp, Some((0x0102_0304, 0x0a0b_0c0d)));
        assert!(!o.malformed);
        assert_eq!(parse(&syn_options(0x01020304)[..]).layout, o.layout);
    }

    #[test]
    fn eol_padding_and_trailing_data() {
        let o = parse(&[2, 4, 5, 0xb4, 0, 0, 0, 0]);
        assert_eq!(o.layout, [Kind::Mss, Kind::Eol]);
        assert_eq!((o.eol_pad, o.trailing_data), (3, false));
        let o = parse(&[0, 0, 7]);
        assert_eq!((o.eol_pad, o.trailing_data), (2, true));
    }

    #[test]
    fn hostile_lengths_never_panic_and_read_as_malformed() {
        for b in [
            &[2u8][..],
            &[2, 0],
            &[2, 1],
            &[2, 40, 1, 2],
            &[8, 10, 1, 2, 3],
            &[3, 4, 1, 1],
            &[2, 3, 5],
        ] {
            assert!(parse(b).malformed, "{b:?}");
        }
        assert_eq!(parse(&[1; 60]).layout.len(), 40);
        assert_eq!(parse(&[99, 2]).layout, [Kind::Other(99)]);
    }
}
