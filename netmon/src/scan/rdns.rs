//! Reverse DNS through the system resolver (`getnameinfo` with `NI_NAMEREQD`, so
//! `/etc/hosts` and nsswitch apply as for any program), on the blocking pool, bounded
//! by a timeout. `netmon scan -n` skips it.
use std::{ffi::CStr, net::IpAddr, time::Duration};

use socket2::SockAddr;

/// The name of `ip`, or `None` when it has none or the lookup did not finish in time.
pub async fn lookup(ip: IpAddr, timeout: Duration) -> Option<String> {
    let task = tokio::task::spawn_blocking(move || blocking_lookup(ip));
    tokio::time::timeout(timeout, task).await.ok()?.ok()?
}

fn blocking_lookup(ip: IpAddr) -> Option<String> {
    let addr = SockAddr::from(std::net::SocketAddr::new(ip, 0));
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: addr is a valid sockaddr of the given length; host is a writable buffer.
    let rc = unsafe {
        libc::getnameinfo(
            addr.as_ptr().cast(),
            addr.len(),
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: getnameinfo NUL-terminates on success.
    let name = unsafe { CStr::from_ptr(host.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    (!name.is_empty()).then_some(name)
}
