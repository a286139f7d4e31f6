//! Batched datagram I/O for the SYN scan: `sendmmsg` and `recvmmsg` on a raw socket, so
//! that a scan of 65,535 ports costs about a thousand system calls each way instead of
//! 65,535. Non-blocking only (`MSG_DONTWAIT`); the caller polls.
//!
//! The buffers are allocated once per batch object and the kernel's pointers to them
//! are rebuilt before each call, so nothing points into memory that moved.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::RawFd,
};

use socket2::SockAddr;

use super::net::sockaddr_ip;

/// Bytes kept of each received datagram: a maximal IPv4 header (60), a TCP header with
/// options (60), and room for what an ICMP error quotes.
pub const RECV_BUF: usize = 256;
const CONTROL: usize = 64;

/// One received datagram.
pub struct Datagram<'a> {
    pub from: IpAddr,
    pub data: &'a [u8],
    /// IPv6: the hop limit and traffic class from control messages (IPv4 carries both
    /// in the header it hands over).
    pub hop_limit: Option<u8>,
    pub tclass: Option<u8>,
}

/// Receives up to `n` datagrams per call.
pub struct RecvBatch {
    bufs: Vec<[u8; RECV_BUF]>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<[u64; CONTROL / 8]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    filled: usize,
}

impl RecvBatch {
    pub fn new(n: usize) -> RecvBatch {
        let n = n.max(1);
        RecvBatch {
            bufs: vec![[0; RECV_BUF]; n],
            // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr.
            names: vec![unsafe { std::mem::zeroed() }; n],
            controls: vec![[0; CONTROL / 8]; n],
            iovs: vec![unsafe { std::mem::zeroed() }; n],
            hdrs: vec![unsafe { std::mem::zeroed() }; n],
            filled: 0,
        }
    }

    /// Reads what is waiting (at most the batch size); 0 when nothing is.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: RECV_BUF,
            };
            // SAFETY: all-zero is a valid msghdr.
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_controllen = CONTROL;
            self.hdrs[i] = libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            };
        }
        // SAFETY: every header points at buffers of this object, alive and unmoved for
        // the duration of the call; `n` headers exist.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            self.filled = 0;
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        self.filled = got as usize;
        Ok(self.filled)
    }

    /// The `i`th datagram of the last `recv`, if it had an IP source.
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        if i >= self.filled {
            return None;
        }
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(RECV_BUF);
        // SAFETY: the kernel wrote a sockaddr of the socket's family.
        let from = unsafe { sockaddr_ip(&self.names[i]) }?;
        let (mut hop_limit, mut tclass) = (None, None);
        // SAFETY: walking the control buffer the kernel filled (its length in the
        // header), with the libc macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IPV6 {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    match (*c).cmsg_type {
                        libc::IPV6_HOPLIMIT => hop_limit = u8::try_from(v).ok(),
                        libc::IPV6_TCLASS => tclass = u8::try_from(v).ok(),
                        _ => {}
                    }
                }
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        Some(Datagram {
            from,
            data: &self.bufs[i][..len],
            hop_limit,
            tclass,
        })
    }
}

/// Packets waiting to go out with one `sendmmsg`.
pub struct SendBatch {
    pkts: Vec<Vec<u8>>,
    dsts: Vec<SockAddr>,
    len: usize,
}

impl SendBatch {
    pub fn new(n: usize) -> SendBatch {
        SendBatch {
            pkts: vec![Vec::with_capacity(64); n.max(1)],
            dsts: Vec::with_capacity(n.max(1)),
            len: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.len == self.pkts.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A buffer for the next packet (cleared), to be sent to `dst`.
    pub fn push(&mut self, dst: IpAddr) -> &mut Vec<u8> {
        assert!(!self.is_full(), "SendBatch overfilled");
        let sa = SockAddr::from(SocketAddr::new(dst, 0));
        if self.dsts.len() > self.len {
            self.dsts[self.len] = sa;
        } else {
            self.dsts.push(sa);
        }
        let b = &mut self.pkts[self.len];
        b.clear();
        self.len += 1;
        b
    }

    /// Sends the packets from the first unsent one; returns how many the kernel took
    /// (fewer when its queue filled: the rest stay, to be sent by the next call).
    pub fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        if self.len == 0 {
            return Ok(0);
        }
        let mut iovs: Vec<libc::iovec> = self.pkts[..self.len]
            .iter_mut()
            .map(|p| libc::iovec {
                iov_base: p.as_mut_ptr().cast(),
                iov_len: p.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = (0..self.len)
            .map(|i| {
                // SAFETY: all-zero is a valid msghdr.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_name = self.dsts[i].as_ptr() as *mut libc::c_void;
                h.msg_namelen = self.dsts[i].len();
                h.msg_iov = &mut iovs[i];
                h.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: h,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: the headers point at packets and addresses of this object and at the
        // local iovecs, all alive for the call.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                self.len as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // Keep the unsent ones, in order, at the front.
        self.pkts[..self.len].rotate_left(n);
        self.dsts[..self.len].rotate_left(n);
        self.len -= n;
        Ok(n)
    }

    /// Drops the first waiting packet (one the kernel refused for good).
    pub fn drop_first(&mut self) {
        if self.len > 0 {
            self.pkts[..self.len].rotate_left(1);
            self.dsts[..self.len].rotate_left(1);
            self.len -= 1;
        }
    }
}
