//! Tests of `crate::scan::service`.

use super::*;

fn name_version(probe: Probe, port: u16, data: &[u8]) -> (String, Option<String>) {
    let s = identify(probe, port, data).expect("identified");
    (s.name.unwrap(), s.version)
}

#[test]
fn ssh_greeting() {
    let (n, v) = name_version(
        Probe::Greeting,
        2222,
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
    );
    assert_eq!(n, "ssh");
    assert_eq!(v.as_deref(), Some("OpenSSH_9.2p1 Debian-2+deb12u3"));
    let s = identify(Probe::Greeting, 22, b"SSH-2.0-dropbear_2022.83\r\n").unwrap();
    assert_eq!(s.banner.as_deref(), Some("SSH-2.0-dropbear_2022.83"));
}

#[test]
fn ftp_and_smtp_share_220() {
    assert_eq!(
        name_version(Probe::Greeting, 21, b"220 (vsFTPd 3.0.3)\r\n"),
        ("ftp".into(), Some("vsFTPd 3.0.3".into()))
    );
    assert_eq!(
        name_version(
            Probe::Greeting,
            2525,
            b"220 mx.example ESMTP Exim 4.96 Mon, 1 Jan\r\n"
        ),
        ("smtp".into(), Some("Exim 4.96".into()))
    );
    assert_eq!(
        name_version(
            Probe::Greeting,
            25,
            b"220 mx.example ESMTP Postfix (Debian/GNU)\r\n"
        ),
        ("smtp".into(), Some("Postfix".into()))
    );
    // Nothing in the text: the port decides.
    assert_eq!(
        name_version(Probe::Greeting, 587, b"220 welcome\r\n").0,
        "smtp"
    );
    assert_eq!(
        name_version(Probe::Greeting, 2121, b"220 welcome\r\n").0,
        "ftp"
    );
}

#[test]
fn other_greetings() {
    assert_eq!(
        name_version(Probe::Greeting, 110, b"+OK Dovecot ready.\r\n").0,
        "pop3"
    );
    assert_eq!(
        name_version(
            Probe::Greeting,
            143,
            b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n"
        )
        .0,
        "imap"
    );
    assert_eq!(
        name_version(Probe::Greeting, 5900, b"RFB 003.008\n"),
        ("vnc".into(), Some("protocol 3.8".into()))
    );
    assert_eq!(
        name_version(Probe::Greeting, 23, &[0xff, 0xfd, 0x18]).0,
        "telnet"
    );
}

#[test]
fn mysql_and_mariadb_greetings() {
    let mut pkt = vec![0, 0, 0, 0, 0x0a];
    pkt.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
    pkt.extend_from_slice(&[1, 2, 3, 4, 0, 0]);
    let len = pkt.len() - 4;
    pkt[0] = len as u8;
    assert_eq!(
        name_version(Probe::Greeting, 3306, &pkt),
        (
            "mysql".into(),
            Some("MariaDB 10.11.6-MariaDB-0+deb12u1".into())
        )
    );
    let mut pkt = vec![0, 0, 0, 0, 0x0a];
    pkt.extend_from_slice(b"8.0.36\0abc");
    pkt[0] = (pkt.len() - 4) as u8;
    assert_eq!(
        name_version(Probe::Greeting, 3306, &pkt).1.as_deref(),
        Some("MySQL 8.0.36")
    );
    assert!(parse_mysql_greeting(b"hello world").is_none());
}

#[test]
fn http_server_header() {
    let r = b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11.2\r\nDate: x\r\n\r\n<html>";
    assert_eq!(
        name_version(Probe::Http, 8000, r),
        ("http".into(), Some("SimpleHTTP/0.6 Python/3.11.2".into()))
    );
    assert_eq!(
        name_version(Probe::Http, 80, b"HTTP/1.1 404 Not Found\r\n\r\n").1,
        None
    );
    assert!(identify(Probe::Http, 80, b"SSH-2.0-x").is_none());
}

#[test]
fn tls_server_hello_versions() {
    // A TLS 1.3 ServerHello: legacy version 1.2, supported_versions = 0x0304.
    let mut hs = vec![2, 0, 0, 0, 3, 3];
    hs.extend([0u8; 32]);
    hs.push(0); // session id
    hs.extend([0x13, 0x01, 0]);
    let exts = [0x00u8, 0x2b, 0, 2, 3, 4];
    hs.extend((exts.len() as u16).to_be_bytes());
    hs.extend(exts);
    let mut rec = vec![0x16, 3, 3];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(&hs);
    assert_eq!(
        name_version(Probe::Tls, 443, &rec),
        ("tls".into(), Some("TLSv1.3".into()))
    );
    // Without extensions, the legacy field.
    let mut old = rec.clone();
    old.truncate(5 + 4 + 2 + 32 + 1 + 3);
    assert_eq!(
        name_version(Probe::Tls, 443, &old).1.as_deref(),
        Some("TLSv1.2")
    );
    assert_eq!(
        name_version(Probe::Tls, 443, &[0x15, 3, 3, 0, 2, 2, 40])
            .1
            .as_deref(),
        Some("alert")
    );
    assert!(identify_tls(b"HTTP/1.0 400").is_none());
}

#[test]
fn client_hello_is_well_formed() {
    let h = client_hello("example.test");
    assert_eq!(&h[..3], &[0x16, 3, 1]);
    let rec_len = usize::from(u16::from_be_bytes([h[3], h[4]]));
    assert_eq!(rec_len + 5, h.len());
    assert_eq!(h[5], 1);
    let hs_len = usize::from(h[6]) << 16 | usize::from(h[7]) << 8 | usize::from(h[8]);
    assert_eq!(hs_len + 4, rec_len);
    assert!(h.windows(12).any(|w| w == b"example.test"));
    assert!(
        !client_hello("10.0.0.1")
            .windows(8)
            .any(|w| w == b"10.0.0.1")
    );
}

#[test]
fn redis_postgres_memcached() {
    let info = b"$120\r\n# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
    assert_eq!(
        name_version(Probe::Redis, 6379, info).1.as_deref(),
        Some("Redis 7.0.15")
    );
    assert_eq!(
        name_version(Probe::Redis, 6379, b"-NOAUTH Authentication required.\r\n").0,
        "redis"
    );
    assert!(identify(Probe::Redis, 6379, b"HTTP/1.1 400").is_none());
    assert_eq!(name_version(Probe::Postgres, 5432, b"N").0, "postgresql");
    assert!(identify(Probe::Postgres, 5432, b"NO").is_none());
    assert_eq!(
        name_version(Probe::Memcached, 11211, b"VERSION 1.6.18\r\n")
            .1
            .as_deref(),
        Some("memcached 1.6.18")
    );
}

#[test]
fn excerpts_are_printable_and_short() {
    assert_eq!(excerpt(b"a\r\nb\x01c\r\n").as_deref(), Some("a | b.c"));
    assert_eq!(excerpt(&[b'x'; 500]).unwrap().len(), BANNER_MAX);
    assert_eq!(excerpt(b"\r\n"), None);
}
