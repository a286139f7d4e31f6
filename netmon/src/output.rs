//! Renders events for people (`text`) and for log shippers (`json`: JSON Lines, one
//! object per line, the contract in `event.rs` and `docs/events.md`), and writes them to
//! any writer (`netmon run` hands it stdout or its `--output` file). Knows nothing of
//! where events come from.
use std::{
    fmt::Write as _,
    io::{self, Write},
};

use chrono::SecondsFormat;

use crate::event::{Connection, Event, EventBody};

pub mod json;

/// The reader of netmon's output went away (a broken pipe: the shipper died, `| head`
/// finished). Not a failure: `main` ends quietly with status 0 when the error that
/// stopped a command is this one, ripgrep-style, so no writer needs to thread a
/// "still open" flag back up.
#[derive(Debug, thiserror::Error)]
#[error("the reader of the output went away")]
pub struct OutputClosed;

/// A write's result for commands: a broken pipe becomes [`OutputClosed`]; any other
/// error says what could not be written (`what`, e.g. "events").
pub fn written<T>(r: io::Result<T>, what: &str) -> anyhow::Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(OutputClosed.into()),
        Err(e) => Err(anyhow::anyhow!("cannot write {what}: {e}")),
    }
}

/// Whether `err` (or anything in its chain) is the output closing, which ends a
/// command quietly.
pub fn is_output_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<OutputClosed>()
            || e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// JSON Lines: one JSON object per line (for log shippers and `jq`).
    Json,
    /// One readable line per event.
    Text,
}

/// Where rendered events go; flushed after every batch so a pipe sees them promptly.
pub struct Sink {
    format: Format,
    out: Box<dyn Write + Send>,
    /// Lines not written yet. JSON is rendered straight into it: with a `BufWriter`
    /// each line was rendered into a buffer of its own and then copied.
    pending: Vec<u8>,
    /// The text line being rendered (reused: no allocation per event).
    line: String,
}

/// Bytes gathered before they are written; also what `pending` shrinks back to after
/// a huge event (a 1 MiB command line).
const WRITE_SIZE: usize = 256 * 1024;

impl Sink {
    pub fn stdout(format: Format) -> Sink {
        Sink::new(format, Box::new(io::stdout()))
    }

    pub fn new(format: Format, out: Box<dyn Write + Send>) -> Sink {
        Sink {
            format,
            out,
            pending: Vec::with_capacity(WRITE_SIZE + 4096),
            line: String::with_capacity(512),
        }
    }

    /// Writes one event. Errors are the underlying writer's (e.g. a broken pipe).
    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        match self.format {
            Format::Json => {
                // serde_json's bytes, written by hand for the hot types (`output/json.rs`).
                json::write_event(&mut self.pending, event);
                self.pending.push(b'\n');
            }
            Format::Text => {
                self.line.clear();
                render_text(event, &mut self.line);
                self.line.push('\n');
                self.pending.extend_from_slice(self.line.as_bytes());
            }
        }
        if self.pending.len() >= WRITE_SIZE {
            self.write_pending()?;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> io::Result<()> {
        let written = self.out.write_all(&self.pending);
        self.pending.clear();
        if self.pending.capacity() > 4 * WRITE_SIZE {
            self.pending = Vec::with_capacity(WRITE_SIZE + 4096);
        }
        written
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.out.flush()
    }

    /// Writes out what is buffered for the old writer, then goes on with `out` (the
    /// output file reopened after a rotation). Lines never straddle the two.
    pub fn replace_output(&mut self, out: Box<dyn Write + Send>) -> io::Result<()> {
        self.flush()?;
        self.out = out;
        Ok(())
    }
}

/// One line for people: time, type, addresses, process.
///
/// Every string in it is escaped ([`crate::escape::for_terminal`]): a one-line event is
/// rendered, then escaped as a whole, so a control character or newline in any field
/// (a `comm` set with `prctl`, a DNS answer, a banner) shows as a visible escape and
/// can never forge a line; an alert's block escapes each of its lines the same way.
pub fn render_text(event: &Event, out: &mut String) {
    let ts = event.ts.to_rfc3339_opts(SecondsFormat::Millis, true);
    let kind = event.body.type_name();
    let _ = write!(out, "{ts} {kind:<7} ");
    if let EventBody::Alert(a) = &event.body {
        alert_text(a, out);
        return;
    }
    let mut line = String::with_capacity(256);
    render_body(event, &mut line);
    out.push_str(&crate::escape::for_terminal(&line));
}

/// The unescaped text of a one-line event's body.
fn render_body(event: &Event, out: &mut String) {
    match &event.body {
        EventBody::Connect(c) | EventBody::Accept(c) | EventBody::Udp(c) => {
            conn_text(c, out);
            if c.failed {
                out.push_str(" (failed)");
            }
        }
        EventBody::Listen(c) => {
            let _ = write!(out, "{} {}", proto(c), endpoint(&c.dst.ip, c.dst.port));
            process_text(c, out);
        }
        EventBody::Close(c) => {
            conn_text(&c.conn, out);
            match c.duration_ms {
                Some(ms) => {
                    let _ = write!(out, " after {ms:.1} ms");
                }
                None => out.push_str(" (began before netmon)"),
            }
            if let (Some(s), Some(r)) = (c.bytes_sent, c.bytes_received) {
                let _ = write!(out, ", {s} B sent, {r} B received");
            } else if let Some(s) = c.bytes_sent {
                let _ = write!(out, ", {s} B sent");
            }
            if let Some(reason) = &c.reason {
                let _ = write!(out, " ({reason})");
            }
        }
        EventBody::Flow(f) => {
            conn_text(&f.conn, out);
            let _ = write!(out, " {} for {:.0} s", f.state, f.duration_ms / 1000.0);
            if let Some(s) = f.bytes_sent {
                let _ = write!(out, ", {s} B sent");
            }
            if let Some(r) = f.bytes_received {
                let _ = write!(out, ", {r} B received");
            }
        }
        EventBody::Stats(s) => {
            let total: u64 = s.events.values().sum();
            let _ = write!(
                out,
                "{total} events, {} lost, {} malformed after {:.0} s",
                s.lost, s.malformed, s.uptime_s
            );
            if let Some(n) = s.skipped_runs.filter(|&n| n > 0) {
                let _ = write!(out, " ({n} program runs skipped by the kernel)");
            }
            for (k, v) in &s.events {
                let _ = write!(out, " {k}={v}");
            }
        }
        EventBody::Host(_)
        | EventBody::Port(_)
        | EventBody::HostUp(_)
        | EventBody::HostDown(_)
        | EventBody::PortOpened(_)
        | EventBody::PortClosed(_)
        | EventBody::ServiceChanged(_) => crate::scan::text::render(&event.body, out),
        EventBody::Probe(p) => {
            let _ = write!(out, "requested={} kernel={}", p.requested, p.kernel);
            for c in &p.capabilities {
                let backend = c.backend.as_deref().unwrap_or("none");
                let _ = write!(out, " {}={backend}", c.capability);
            }
        }
        EventBody::Dns(d) => dns_text(d, out),
        EventBody::Log(l) => {
            let _ = write!(out, "{} {}: {}", l.level.as_str(), l.target, l.message);
        }
        EventBody::Alert(a) => alert_text(a, out),
        EventBody::Exec(x) => {
            let p = &x.process;
            let _ = write!(out, "{}[{}] uid={}", p.comm, p.pid, p.uid);
            if let Some(exe) = &p.detail.exe {
                let _ = write!(out, " exe={exe}");
            }
            if let Some(cmd) = &p.detail.cmdline {
                let _ = write!(out, " cmdline={cmd:?}");
            }
            if !p.detail.ancestors.is_empty() {
                let _ = write!(out, " from {}", p.detail.ancestors.join(" <- "));
            }
        }
    }
}

fn dns_text(d: &crate::event::Dns, out: &mut String) {
    let proto = match d.proto {
        crate::event::Proto::Tcp => "tcp",
        crate::event::Proto::Udp => "udp",
    };
    let _ = write!(
        out,
        "{proto} {} -> {} {} {} {}",
        endpoint(&d.src.ip, d.src.port),
        endpoint(&d.dst.ip, d.dst.port),
        d.qtype,
        d.query,
        d.rcode.as_deref().unwrap_or("(no response)")
    );
    if !d.answers.is_empty() {
        let answers: Vec<String> = d
            .answers
            .iter()
            .map(|a| match a.rtype.as_str() {
                "A" | "AAAA" => a.data.clone(),
                t => format!("{t} {}", a.data),
            })
            .collect();
        let _ = write!(out, " {}", answers.join(", "));
    }
    if let Some(ms) = d.latency_ms {
        let _ = write!(out, " ({ms:.1} ms)");
    }
    if d.role == crate::event::DnsRole::Server {
        out.push_str(" [served]");
    }
    match &d.process {
        Some(p) => {
            let _ = write!(out, " {}[{}] uid={}", p.comm, p.pid, p.uid);
        }
        None => out.push_str(" [process unknown]"),
    }
}

/// An alert is a block: a headline, then indented facts, so it stands out in a stream
/// of one-line events. Each line is escaped on its own.
pub fn alert_text(a: &crate::event::Alert, out: &mut String) {
    let mut block = String::with_capacity(512);
    alert_lines(a, &mut block);
    for (i, line) in block.split(LINE).enumerate() {
        if i > 0 {
            out.push_str("\n    ");
        }
        out.push_str(&crate::escape::for_terminal(line));
    }
}

/// Separates the lines of [`alert_lines`]: a character no field can bring in unescaped
/// because the fields are escaped first (`for_terminal` escapes it too).
const LINE: char = '\u{1e}';

fn alert_lines(a: &crate::event::Alert, out: &mut String) {
    let esc = |s: &str| crate::escape::for_terminal(s).into_owned();
    let (summary, recommendation) = (esc(&a.summary), esc(&a.recommendation));
    let _ = write!(
        out,
        "[{}] {}: {}",
        a.severity.name().to_uppercase(),
        esc(&a.rule),
        summary
    );
    if let Some(score) = a.score {
        let _ = write!(out, " (score {score})");
    }
    if a.hits > 1 {
        let _ = write!(out, " ({} hits since the last alert)", a.hits);
    }
    let _ = write!(out, "{LINE}what to do: {recommendation}");
    if let Some(p) = &a.process {
        let _ = write!(
            out,
            "{LINE}process: {}[{}] uid={} gid={}",
            esc(&p.comm),
            p.pid,
            p.uid,
            p.gid
        );
    }
    for f in &a.flows {
        let src = f
            .src
            .as_ref()
            .map(|s| endpoint(&s.ip, s.port) + " -> ")
            .unwrap_or_default();
        let name = f
            .dst
            .name
            .as_ref()
            .map(|n| format!(" ({})", esc(n)))
            .unwrap_or_default();
        let _ = write!(
            out,
            "{LINE}flow: {} {src}{}{name}",
            esc(&f.kind),
            endpoint(&f.dst.ip, f.dst.port)
        );
    }
}

fn proto(c: &Connection) -> &'static str {
    match c.proto {
        crate::event::Proto::Tcp => "tcp",
        crate::event::Proto::Udp => "udp",
    }
}

fn endpoint(ip: &std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(*ip, port).to_string()
}

fn conn_text(c: &Connection, out: &mut String) {
    let src = c
        .src
        .as_ref()
        .map(|s| endpoint(&s.ip, s.port))
        .unwrap_or_default();
    let _ = write!(
        out,
        "{} {src} -> {}",
        proto(c),
        endpoint(&c.dst.ip, c.dst.port)
    );
    if let Some(name) = &c.dst.name {
        let _ = write!(out, " ({name})");
    }
    process_text(c, out);
    if c.existing {
        out.push_str(" (existing)");
    }
}

fn process_text(c: &Connection, out: &mut String) {
    match &c.process {
        Some(p) => {
            let _ = write!(out, " {}[{}] uid={}", p.comm, p.pid, p.uid);
        }
        None => out.push_str(" [process unknown]"),
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::event::{Direction, Endpoint, Family, ProcessInfo, Proto};

    fn accept() -> Event {
        Event {
            ts: DateTime::from_timestamp(0, 0).unwrap(),
            host: "h".into(),
            body: EventBody::Accept(Connection {
                proto: Proto::Tcp,
                family: Family::Ipv6,
                direction: Some(Direction::Inbound),
                src: Some(Endpoint::new("::1".parse().unwrap(), 5000)),
                dst: Endpoint::new("::1".parse().unwrap(), 80),
                process: Some(ProcessInfo::kernel(1, 1, "nginx".into(), 0, 0, 0)),
                backend: "tracepoint".into(),
                netns: None,
                failed: false,
                bytes: None,
                existing: false,
            }),
        }
    }

    #[test]
    fn hostile_strings_cannot_act_on_the_terminal_or_forge_lines() {
        let hostile = "\x1b[2J\x1b[Hevil\nFORGED \u{202e}txt";
        let mut ev = accept();
        if let EventBody::Accept(c) = &mut ev.body {
            c.process = Some(ProcessInfo::kernel(1, 1, hostile.into(), 0, 0, 0));
        }
        let mut out = String::new();
        render_text(&ev, &mut out);
        assert!(!out.contains('\x1b') && !out.contains('\n') && !out.contains('\u{202e}'));
        assert!(
            out.contains("\\x1b[2J\\x1b[Hevil\\nFORGED \\u{202e}txt"),
            "{out}"
        );

        let alert = Event {
            ts: ev.ts,
            host: "h".into(),
            body: EventBody::Alert(crate::event::Alert {
                rule: "SUSPICIOUS_PORT".into(),
                severity: crate::event::Severity::High,
                summary: format!("{hostile} connected"),
                recommendation: hostile.into(),
                process: Some(ProcessInfo::kernel(1, 1, hostile.into(), 0, 0, 0)),
                flows: Vec::new(),
                key: "k".into(),
                hits: 1,
                score: None,
                details: Default::default(),
            }),
        };
        let mut out = String::new();
        render_text(&alert, &mut out);
        assert!(!out.contains('\x1b') && !out.contains('\u{202e}'), "{out}");
        // The block's own three lines, none forged.
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[1].starts_with("    what to do: "), "{out}");
        assert!(lines[2].starts_with("    process: "), "{out}");
    }

    #[test]
    fn log_events_are_one_escaped_line() {
        let log = |message: &str| Event {
            ts: chrono::DateTime::UNIX_EPOCH,
            host: "h".into(),
            body: EventBody::Log(crate::event::log::KernelLog {
                level: crate::event::log::LogLevel::Debug,
                message: message.into(),
                target: "netmon::tcp".into(),
                location: None,
            }),
        };
        let mut out = String::new();
        render_text(&log("socket of unknown family 7 (offset 16)"), &mut out);
        assert_eq!(
            out,
            "1970-01-01T00:00:00.000Z log     debug netmon::tcp: socket of unknown family 7 (offset 16)"
        );
        let mut out = String::new();
        render_text(&log("a\nFORGED \x1b[2J\u{202e}"), &mut out);
        assert!(!out.contains('\x1b') && !out.contains('\n') && !out.contains('\u{202e}'));
        assert!(out.ends_with("a\\nFORGED \\x1b[2J\\u{202e}"), "{out}");
    }

    #[test]
    fn text_is_one_readable_line() {
        let mut s = String::new();
        render_text(&accept(), &mut s);
        assert_eq!(
            s,
            "1970-01-01T00:00:00.000Z accept  tcp [::1]:5000 -> [::1]:80 nginx[1] uid=0"
        );
    }

    #[test]
    fn json_sink_writes_one_parseable_object_per_line() {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().write(b)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut sink = Sink::new(Format::Json, Box::new(Shared(buf.clone())));
        sink.write(&accept()).unwrap();
        sink.write(&accept()).unwrap();
        sink.flush().unwrap();
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            let back: Event = serde_json::from_str(line).unwrap();
            assert_eq!(back, accept());
        }
    }
}
