//! A minimal MaxMind DB (`.mmdb`, format 2.0) writer: an IPv6 search tree with 32-bit
//! records, a data section of JSON-like values, and the metadata. It builds the small
//! databases netmon's tests use (never a downloaded one) and site-specific databases
//! for private address plans. Networks must not overlap (a later, longer one inside an
//! earlier one is ignored); IPv4 networks live under `::/96` as the format says.
use ipnet::IpNet;
use serde_json::Value;

#[derive(Clone, Copy)]
enum Slot {
    Empty,
    Node(u32),
    Data(u32),
}

pub struct Writer {
    database_type: String,
    build_epoch: u64,
    nodes: Vec<[Slot; 2]>,
    data: Vec<u8>,
}

impl Writer {
    pub fn new(database_type: &str, build_epoch: u64) -> Writer {
        Writer {
            database_type: database_type.into(),
            build_epoch,
            nodes: vec![[Slot::Empty; 2]],
            data: Vec::new(),
        }
    }

    /// Maps every address of `net` to `record` (objects, arrays, strings, unsigned
    /// integers, floats, booleans).
    pub fn insert(&mut self, net: IpNet, record: Value) {
        let (bits, len): (u128, u8) = match net.trunc() {
            IpNet::V4(n) => (u32::from(n.addr()) as u128, n.prefix_len() + 96),
            IpNet::V6(n) => (u128::from(n.addr()), n.prefix_len()),
        };
        if len == 0 {
            return;
        }
        let off = self.data.len() as u32;
        encode(&record, &mut self.data);
        let mut node = 0usize;
        for i in 0..len {
            let bit = ((bits >> (127 - i)) & 1) as usize;
            if i == len - 1 {
                if let Slot::Empty = self.nodes[node][bit] {
                    self.nodes[node][bit] = Slot::Data(off);
                }
                return;
            }
            node = match self.nodes[node][bit] {
                Slot::Node(n) => n as usize,
                Slot::Data(_) => return,
                Slot::Empty => {
                    self.nodes.push([Slot::Empty; 2]);
                    let n = self.nodes.len() - 1;
                    self.nodes[node][bit] = Slot::Node(n as u32);
                    n
                }
            };
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let n = self.nodes.len() as u32;
        let mut out = Vec::with_capacity(self.nodes.len() * 8 + self.data.len() + 256);
        for node in &self.nodes {
            for slot in node {
                let v = match *slot {
                    Slot::Empty => n,
                    Slot::Node(i) => i,
                    Slot::Data(off) => n + 16 + off,
                };
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let mut meta = Vec::new();
        let fields: [(&str, Meta); 9] = [
            ("binary_format_major_version", Meta::U16(2)),
            ("binary_format_minor_version", Meta::U16(0)),
            ("build_epoch", Meta::U64(self.build_epoch)),
            ("database_type", Meta::Str(&self.database_type)),
            ("description", Meta::Desc),
            ("ip_version", Meta::U16(6)),
            ("languages", Meta::Langs),
            ("node_count", Meta::U32(n)),
            ("record_size", Meta::U16(32)),
        ];
        head(7, fields.len(), &mut meta);
        for (k, v) in fields {
            encode(&Value::String(k.into()), &mut meta);
            match v {
                Meta::U16(x) => uint(5, x.into(), &mut meta),
                Meta::U32(x) => uint(6, x.into(), &mut meta),
                Meta::U64(x) => uint(9, x, &mut meta),
                Meta::Str(s) => encode(&Value::String(s.into()), &mut meta),
                Meta::Desc => encode(
                    &serde_json::json!({"en": format!("{} (built by netmon)", self.database_type)}),
                    &mut meta,
                ),
                Meta::Langs => encode(&serde_json::json!(["en"]), &mut meta),
            }
        }
        out.extend_from_slice(&meta);
        out
    }
}

enum Meta<'a> {
    U16(u16),
    U32(u32),
    U64(u64),
    Str(&'a str),
    Desc,
    Langs,
}

/// A control byte (and extended type byte, and size bytes) for `kind` of `size`.
fn head(kind: u8, size: usize, out: &mut Vec<u8>) {
    let (first, ext) = if kind <= 7 {
        (kind << 5, None)
    } else {
        (0, Some(kind - 7))
    };
    let (bits, extra): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, vec![]),
        29..=284 => (29, vec![(size - 29) as u8]),
        285..=65_820 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        _ => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
    };
    out.push(first | bits);
    if let Some(e) = ext {
        out.push(e);
    }
    out.extend_from_slice(&extra);
}

fn uint(kind: u8, v: u64, out: &mut Vec<u8>) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    head(kind, 8 - skip, out);
    out.extend_from_slice(&bytes[skip..]);
}

fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => head(7, 0, out),
        Value::Bool(b) => head(14, *b as usize, out),
        Value::String(s) => {
            head(2, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Number(n) => match n.as_u64() {
            Some(u) if u <= u32::MAX as u64 => uint(6, u, out),
            Some(u) => uint(9, u, out),
            None => {
                head(3, 8, out);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_be_bytes());
            }
        },
        Value::Array(a) => {
            head(11, a.len(), out);
            for x in a {
                encode(x, out);
            }
        }
        Value::Object(m) => {
            head(7, m.len(), out);
            for (k, x) in m {
                encode(&Value::String(k.clone()), out);
                encode(x, out);
            }
        }
    }
}
