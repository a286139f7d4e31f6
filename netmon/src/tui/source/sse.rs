//! A Server-Sent Events parser (the `text/event-stream` format of the WHATWG HTML
//! standard): bytes in any chunking → complete events (`id`, `event`, `data`). Pure;
//! bounded: an event whose data passes [`MAX_EVENT`] bytes is dropped and counted, so
//! a hostile server cannot grow memory.
/// Longest event kept (one netmon JSON line is far smaller).
pub const MAX_EVENT: usize = 1 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// `message` when the server named none.
    pub event: String,
    pub data: String,
}

#[derive(Default)]
pub struct Parser {
    line: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: String,
    has_data: bool,
    too_long: bool,
    /// Events dropped for passing [`MAX_EVENT`].
    pub oversized: u64,
    /// The last `id` seen (what `Last-Event-ID` resumes from).
    pub last_id: Option<String>,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Feeds bytes; complete events go to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) {
        while !bytes.is_empty() {
            let (part, rest, done) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            let room = MAX_EVENT.saturating_sub(self.line.len());
            if part.len() > room {
                self.too_long = true;
            }
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            if done {
                // The buffer keeps its capacity from line to line.
                let mut line = std::mem::take(&mut self.line);
                let text = line.strip_suffix(b"\r").unwrap_or(&line);
                // Valid UTF-8 (netmon's own JSON) is borrowed; anything else is mended.
                match std::str::from_utf8(text) {
                    Ok(text) => self.line_done(text, out),
                    Err(_) => self.line_done(&String::from_utf8_lossy(text), out),
                }
                line.clear();
                self.line = line;
            }
        }
    }

    fn line_done(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            let event = self.event.take().unwrap_or_else(|| "message".into());
            let data = std::mem::take(&mut self.data);
            if std::mem::take(&mut self.too_long) {
                self.oversized += 1;
            } else if std::mem::take(&mut self.has_data) {
                out.push(SseEvent {
                    id: self.id.clone(),
                    event,
                    data,
                });
            }
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return; // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() > MAX_EVENT {
                    self.too_long = true;
                    return;
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => {
                self.id = Some(value.to_owned());
                self.last_id = Some(value.to_owned());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_whatever_the_chunking() {
        let stream = b": hi\r\nid: 7\ndata: {\"a\":1}\n\nevent: lagged\ndata: {\"missed\": 3}\n\nid: 8\ndata: x\ndata: y\n\n";
        for chunk in [1, 2, 5, stream.len()] {
            let mut p = Parser::new();
            let mut out = vec![];
            for c in stream.chunks(chunk) {
                p.feed(c, &mut out);
            }
            assert_eq!(out.len(), 3, "chunk {chunk}");
            assert_eq!(out[0].id.as_deref(), Some("7"));
            assert_eq!(out[0].event, "message");
            assert_eq!(out[0].data, "{\"a\":1}");
            assert_eq!(out[1].event, "lagged");
            assert_eq!(out[2].data, "x\ny");
            assert_eq!(p.last_id.as_deref(), Some("8"));
        }
    }

    #[test]
    fn oversized_events_are_dropped_and_counted() {
        let mut p = Parser::new();
        let mut out = vec![];
        let big = "x".repeat(MAX_EVENT + 10);
        p.feed(format!("data: {big}\n\ndata: ok\n\n").as_bytes(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, "ok");
        assert_eq!(p.oversized, 1);
    }
}
