//! Where `netmon top`'s events come from, behind one enum: the in-process pipeline
//! (a hub subscription, `sudo netmon top`) or one or more agents' SSE streams
//! (`--agent URL`, `agent.rs`). Either way the UI gets [`Msg`]s and builds every view
//! from events alone. Also the local interface counters (`/proc/net/dev`).
use std::sync::mpsc as std_mpsc;

use tokio::sync::mpsc::error::TryRecvError;

use super::app::{IfaceCounters, Msg};

pub mod agent;
pub mod sse;

/// A source of messages, polled without blocking by the UI loop.
pub enum Source {
    /// The pipeline's hub subscription (agent 0).
    InProcess(crate::pipeline::hub::Subscription),
    /// Messages of every agent's client task (see `agent.rs`).
    Agents(std_mpsc::Receiver<Msg>, agent::Clients),
    /// Fixed messages (tests).
    #[allow(dead_code)]
    Fixed(std::collections::VecDeque<Msg>),
}

/// The source has ended: the pipeline stopped (a signal) or every client is gone.
#[derive(Debug)]
pub struct Ended;

impl Source {
    /// The next message, if one waits.
    pub fn try_next(&mut self) -> Result<Option<Msg>, Ended> {
        match self {
            Source::InProcess(rx) => match rx.try_recv() {
                Ok(event) => Ok(Some(Msg::Event { agent: 0, event })),
                Err(TryRecvError::Empty) => Ok(None),
                Err(TryRecvError::Disconnected) => Err(Ended),
            },
            Source::Agents(rx, _) => match rx.try_recv() {
                Ok(m) => Ok(Some(m)),
                Err(std_mpsc::TryRecvError::Empty) => Ok(None),
                Err(std_mpsc::TryRecvError::Disconnected) => Err(Ended),
            },
            Source::Fixed(q) => Ok(q.pop_front()),
        }
    }

    /// Asks the agents' history for the time cursor's `window`; false when this
    /// source has none (in-process tracing keeps no history).
    pub fn ask_history(&self, window: super::past::Window) -> bool {
        match self {
            Source::Agents(_, clients) => {
                clients.ask(window);
                true
            }
            Source::InProcess(_) | Source::Fixed(_) => false,
        }
    }

    /// True when the Interfaces view can read this machine's counters (the source
    /// traces this machine).
    pub fn local(&self) -> bool {
        matches!(self, Source::InProcess(_))
    }
}

/// This machine's interfaces from `/proc/net/dev`; empty when it cannot be read.
pub fn read_interfaces() -> Vec<IfaceCounters> {
    std::fs::read_to_string("/proc/net/dev")
        .map(|s| parse_net_dev(&s))
        .unwrap_or_default()
}

/// Parses `/proc/net/dev`: two header lines, then `name: rx_bytes … (8 rx fields)
/// tx_bytes …`.
pub fn parse_net_dev(text: &str) -> Vec<IfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            Some(IfaceCounters {
                name: name.trim().to_owned(),
                rx_bytes: *f.first()?,
                tx_bytes: *f.get(8)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_parses_rx_and_tx_bytes() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  123456     100    0    0    0     0          0         0   654321     100    0    0    0     0       0          0\n  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n";
        let got = parse_net_dev(text);
        assert_eq!(
            got,
            vec![
                IfaceCounters {
                    name: "lo".into(),
                    rx_bytes: 123456,
                    tx_bytes: 654321
                },
                IfaceCounters {
                    name: "eth0".into(),
                    rx_bytes: 1,
                    tx_bytes: 9
                },
            ]
        );
    }
}
