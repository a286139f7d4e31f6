//! Tests of `crate::scan::syn`.

use super::*;

#[test]
fn syn_packet_checksums_to_zero_with_the_pseudo_header() {
    let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let dst: SocketAddr = "10.0.0.2:22".parse().unwrap();
    let p = syn_packet(src, dst, 0x1234_5678);
    assert_eq!(p.len(), 40);
    assert_eq!(p[13], TCP_SYN);
    let sum = pseudo_header_sum(src.ip(), dst.ip(), 6, p.len());
    assert_eq!(checksum_finish(checksum_add(sum, &p)), 0);
    let src6: SocketAddr = "[fd00::1]:40000".parse().unwrap();
    let dst6: SocketAddr = "[fd00::2]:443".parse().unwrap();
    let p = syn_packet(src6, dst6, 7);
    let sum = pseudo_header_sum(src6.ip(), dst6.ip(), 6, p.len());
    assert_eq!(checksum_finish(checksum_add(sum, &p)), 0);
}

#[test]
fn replies_are_judged_by_port_and_cookie() {
    let dst: SocketAddr = "10.0.0.2:22".parse().unwrap();
    let seq = cookie(42, dst);
    assert_ne!(seq, cookie(42, "10.0.0.2:23".parse().unwrap()));
    assert_ne!(seq, cookie(43, dst));
    let mk = |flags, ack| Reply {
        sport: 22,
        dport: 40000,
        ack,
        flags,
        window: 65160,
        ..Reply::default()
    };
    let next = seq.wrapping_add(1);
    assert_eq!(
        judge(&mk(TCP_SYN | TCP_ACK, next), 40000, seq),
        Some(PortState::Open)
    );
    assert_eq!(
        judge(&mk(TCP_RST | TCP_ACK, next), 40000, seq),
        Some(PortState::Closed)
    );
    assert_eq!(
        judge(&mk(TCP_SYN | TCP_ACK, seq), 40000, seq),
        None,
        "wrong ack"
    );
    assert_eq!(
        judge(&mk(TCP_SYN | TCP_ACK, next), 40001, seq),
        None,
        "not our port"
    );
    assert_eq!(judge(&mk(TCP_ACK, next), 40000, seq), None);
    let parsed = reply::parse_tcp(&syn_packet("10.0.0.1:5".parse().unwrap(), dst, 9)).unwrap();
    assert_eq!((parsed.sport, parsed.dport, parsed.flags), (5, 22, TCP_SYN));
    assert_eq!(parsed.options.timestamp, Some((1, 0)));
    assert_eq!(parsed.options.wscale, Some(7));
}
