//! Tests of `crate::sockets`.

use netlink_packet_core::DoneMessage;
use netlink_packet_sock_diag::inet::InetResponseHeader;

use super::*;

/// The response the kernel sends for one socket, built with the crate's emitter.
fn response(
    family: u8,
    state: u8,
    src: &str,
    dst: &str,
    inode: u32,
    info: Option<Vec<u8>>,
) -> Vec<u8> {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = dst.parse().unwrap();
    let header = InetResponseHeader {
        family,
        state,
        timer: None,
        socket_id: SocketId {
            source_port: src.port(),
            destination_port: dst.port(),
            source_address: src.ip(),
            destination_address: dst.ip(),
            interface_id: 0,
            cookie: [0; 8],
        },
        recv_queue: 0,
        send_queue: 0,
        uid: 1000,
        inode,
    };
    let mut response = InetResponse {
        header,
        nlas: Default::default(),
    };
    if let Some(info) = info {
        response.nlas.push(Nla::TcpInfo(info));
    }
    let mut msg = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(Box::new(response))),
    );
    msg.header.message_type = netlink_packet_sock_diag::SOCK_DIAG_BY_FAMILY;
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

fn done() -> Vec<u8> {
    let mut msg: NetlinkMessage<SockDiagMessage> = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::Done(DoneMessage::default()),
    );
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

fn tcp_info(acked: u64, received: u64) -> Vec<u8> {
    let mut raw = vec![0u8; 232];
    raw[TCPI_BYTES_ACKED..TCPI_BYTES_ACKED + 8].copy_from_slice(&acked.to_ne_bytes());
    raw[TCPI_BYTES_RECEIVED..TCPI_BYTES_RECEIVED + 8].copy_from_slice(&received.to_ne_bytes());
    raw[TCPI_DATA_SEGS_IN..TCPI_DATA_SEGS_IN + 4].copy_from_slice(&7u32.to_ne_bytes());
    raw[TCPI_DATA_SEGS_OUT..TCPI_DATA_SEGS_OUT + 4].copy_from_slice(&9u32.to_ne_bytes());
    raw
}

#[test]
fn parses_a_batch_of_responses_up_to_done() {
    let mut batch = response(AF_INET, 10, "0.0.0.0:22", "0.0.0.0:0", 111, None);
    batch.extend(response(
        AF_INET6,
        1,
        "[::ffff:127.0.0.1]:22",
        "[::ffff:127.0.0.1]:40000",
        222,
        Some(tcp_info(1001, 2002)),
    ));
    let mut out = Vec::new();
    assert!(matches!(
        parse_batch(&batch, Proto::Tcp, &mut out),
        Ok(false)
    ));
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].state_name(), "listen");
    assert!(out[0].is_listener());
    assert_eq!(out[0].inode, 111);
    let est = &out[1];
    assert_eq!(
        est.local,
        "127.0.0.1:22".parse().unwrap(),
        "v4-mapped becomes IPv4"
    );
    assert_eq!(est.family, Family::Ipv4);
    assert_eq!(est.state_name(), "established");
    let tcp = est.tcp.unwrap();
    assert_eq!((tcp.bytes_acked, tcp.bytes_received), (1001, 2002));
    assert_eq!((tcp.data_segs_in, tcp.data_segs_out), (7, 9));
    assert_eq!(est.uid, 1000);
    let mut out = Vec::new();
    assert!(matches!(
        parse_batch(&done(), Proto::Tcp, &mut out),
        Ok(true)
    ));
    assert!(out.is_empty());
}

#[test]
fn udp_states_read_as_unconn_and_established() {
    let mut batch = response(AF_INET, TCP_CLOSE, "0.0.0.0:53", "0.0.0.0:0", 1, None);
    batch.extend(response(
        AF_INET6,
        TCP_ESTABLISHED,
        "[::1]:5000",
        "[::1]:53",
        2,
        None,
    ));
    let mut out = Vec::new();
    parse_batch(&batch, Proto::Udp, &mut out).ok().unwrap();
    assert_eq!(out[0].state_name(), "unconn");
    assert!(out[0].is_listener());
    assert_eq!(out[1].state_name(), "established");
    assert!(!out[1].is_listener());
    assert_eq!(out[1].family, Family::Ipv6);
}

#[test]
fn rejects_truncated_messages() {
    let batch = response(AF_INET, 10, "0.0.0.0:22", "0.0.0.0:0", 111, None);
    let mut out = Vec::new();
    assert!(parse_batch(&batch[..batch.len() - 8], Proto::Tcp, &mut out).is_err());
}

#[test]
fn short_tcp_info_has_no_counters() {
    assert_eq!(parse_tcp_info(&[0u8; 100]), None);
    // A 4.2-era tcp_info: byte counters, no data_segs.
    let c = parse_tcp_info(&tcp_info(5, 6)[..136]).unwrap();
    assert_eq!((c.bytes_acked, c.bytes_received, c.data_segs_in), (5, 6, 0));
}

#[test]
fn finds_this_network_namespace_and_a_process_in_it() {
    let ns = namespaces(Path::new("/proc"));
    let own = own_netns().unwrap();
    let pid = ns.get(&own).copied().expect("own namespace listed");
    assert_eq!(netns_of(pid), Some(own));
}

#[test]
fn reads_socket_links() {
    assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
    assert_eq!(socket_inode(b"pipe:[12345]"), None);
    assert_eq!(socket_inode(b"/dev/null"), None);
    assert_eq!(socket_inode(b"socket:[x]"), None);
}

#[test]
fn finds_this_process_as_the_owner_of_its_socket() {
    use std::os::unix::fs::MetadataExt;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let path = format!("/proc/self/fd/{}", sock.as_raw_fd());
    let inode = fs::metadata(&path).unwrap().ino() as u32;
    let owners = socket_owners(Path::new("/proc"), None);
    assert_eq!(owners.by_inode.get(&inode), Some(&vec![std::process::id()]));
    assert!(owners.processes > 0);
}

#[test]
fn dumps_this_process_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sockets = match dump(DumpOptions::ALL) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skipped: sock_diag unavailable here: {e}");
            return;
        }
    };
    assert!(
        sockets
            .iter()
            .any(|s| s.proto == Proto::Tcp && s.state == TCP_LISTEN && s.local.port() == port),
        "listener on {port} not in {sockets:?}"
    );
}
