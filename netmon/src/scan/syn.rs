//! SYN scan (placeholder until the raw-socket scanner lands).
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use super::{PortState, Progress, rate::RateLimiter};

pub struct SynResult {
    pub states: HashMap<SocketAddr, PortState>,
    /// Per host: TTL and window of a SYN-ACK or RST.
    pub replies: HashMap<IpAddr, (u8, u16)>,
}

pub async fn scan(
    _jobs: &[SocketAddr],
    _timeout: Duration,
    _rate: Arc<RateLimiter>,
    _progress: Arc<Progress>,
) -> io::Result<SynResult> {
    Err(io::Error::other("not implemented"))
}
