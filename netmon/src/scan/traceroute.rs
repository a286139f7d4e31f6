//! Traceroute (placeholder).
use std::{io, net::IpAddr, time::Duration};

use super::{rate::RateLimiter, report::TraceHop};

pub async fn trace(
    _dst: IpAddr,
    _max_hops: u8,
    _timeout: Duration,
    _rate: &RateLimiter,
) -> io::Result<Vec<TraceHop>> {
    Err(io::Error::other("not implemented"))
}
