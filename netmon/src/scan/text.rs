//! Text rendering of scanner events, one line each (`output::render_text` calls in).
use std::fmt::Write as _;

use crate::event::{EventBody, Proto};

fn proto(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

/// Appends the body of a scanner event (after the time and type columns).
pub fn render(body: &EventBody, out: &mut String) {
    match body {
        EventBody::Host(h) => {
            let state = match h.state {
                super::HostState::Up => "up",
                super::HostState::Down => "down",
            };
            let _ = write!(out, "{} {state}", h.addr);
            if let Some(n) = &h.name {
                let _ = write!(out, " ({n})");
            }
            if let Some(r) = &h.reason {
                let _ = write!(out, " reason={r}");
            }
            if let Some(m) = &h.mac {
                let _ = write!(out, " mac={m}");
            }
            if let Some(d) = h.distance {
                let _ = write!(out, " distance={d}");
            }
            if let Some(o) = &h.os_hint {
                let _ = write!(out, " os={o}");
            }
            if h.ports_scanned > 0 {
                let _ = write!(
                    out,
                    " ports: {} open, {} closed, {} filtered of {}",
                    h.open, h.closed, h.filtered, h.ports_scanned
                );
            }
        }
        EventBody::Port(p) => {
            let svc = match (&p.service, p.service_guessed) {
                (Some(s), true) => format!("{s}?"),
                (Some(s), false) => s.clone(),
                (None, _) => "unknown".into(),
            };
            let _ = write!(
                out,
                "{} {}/{} {} {svc}",
                p.addr,
                p.port,
                proto(p.proto),
                p.state.as_str()
            );
            if let Some(v) = &p.version {
                let _ = write!(out, " {}", crate::escape::remote(v));
            }
        }
        EventBody::HostUp(h) | EventBody::HostDown(h) => {
            let _ = write!(
                out,
                "{} reason={} mac={} name={}",
                h.addr,
                h.reason,
                opt(&h.mac),
                opt(&h.name)
            );
        }
        EventBody::PortOpened(p) | EventBody::PortClosed(p) => {
            let _ = write!(
                out,
                "{} {}/{} {}",
                p.addr,
                p.port,
                proto(p.proto),
                opt(&p.service)
            );
            if let Some(v) = &p.version {
                let _ = write!(out, " {}", crate::escape::remote(v));
            }
        }
        EventBody::ServiceChanged(c) => {
            let _ = write!(
                out,
                "{} {}/{} {} {} -> {} {}",
                c.addr,
                c.port,
                proto(c.proto),
                opt(&c.old_service),
                opt(&c.old_version),
                opt(&c.service),
                opt(&c.version)
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::super::PortState;
    use crate::{
        event::{
            Event, EventBody, Proto,
            scan::{PortChange, ScanPort, ServiceChange},
        },
        output::render_text,
    };

    fn line(body: EventBody) -> String {
        let mut s = String::new();
        render_text(
            &Event {
                ts: DateTime::from_timestamp(0, 0).unwrap(),
                host: "h".into(),
                body,
            },
            &mut s,
        );
        s
    }

    #[test]
    fn scanner_events_render_as_one_line() {
        let port = EventBody::Port(ScanPort {
            addr: "10.0.0.2".parse().unwrap(),
            port: 22,
            proto: Proto::Tcp,
            state: PortState::Open,
            service: Some("ssh".into()),
            version: Some("OpenSSH_9.2p1".into()),
            banner: None,
            service_guessed: false,
        });
        assert_eq!(
            line(port),
            "1970-01-01T00:00:00.000Z port    10.0.0.2 22/tcp open ssh OpenSSH_9.2p1"
        );
        let closed = EventBody::PortClosed(PortChange {
            addr: "10.0.0.2".parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
            service: Some("http".into()),
            version: None,
        });
        assert!(line(closed).ends_with("port_closed 10.0.0.2 80/tcp http"));
        let changed = EventBody::ServiceChanged(ServiceChange {
            addr: "10.0.0.2".parse().unwrap(),
            port: 22,
            proto: Proto::Tcp,
            old_service: Some("ssh".into()),
            old_version: Some("a".into()),
            service: Some("ssh".into()),
            version: Some("b".into()),
        });
        assert!(line(changed).ends_with("10.0.0.2 22/tcp ssh a -> ssh b"));
    }
}
