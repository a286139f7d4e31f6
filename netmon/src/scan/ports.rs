//! Port specifications, nmap-style: `22,80,1000-2000`, `-` (all, as in `-p-`),
//! `1000-` / `-1024` (open-ended), `T:22,U:53` (per protocol), service names (`ssh`),
//! and `--top-ports N` from the ranked list shipped here.
//!
//! The ranked list is netmon's own: the ports common services listen on, most common
//! first, assembled from the IANA registry and everyday experience (not copied from
//! nmap's frequency data). Beyond its end `--top-ports` continues with the remaining
//! ports 1 to 1024 and then upwards, so any N up to 65535 is accepted.
use crate::event::Proto;

/// TCP ports, most commonly open first, with the service usually found there.
pub const TOP_TCP: &[(u16, &str)] = &[
    (80, "http"),
    (443, "https"),
    (22, "ssh"),
    (21, "ftp"),
    (25, "smtp"),
    (23, "telnet"),
    (3389, "ms-wbt-server"),
    (110, "pop3"),
    (445, "microsoft-ds"),
    (139, "netbios-ssn"),
    (143, "imap"),
    (53, "domain"),
    (135, "msrpc"),
    (3306, "mysql"),
    (8080, "http-proxy"),
    (1723, "pptp"),
    (111, "rpcbind"),
    (995, "pop3s"),
    (993, "imaps"),
    (5900, "vnc"),
    (1025, "nfs-or-iis"),
    (587, "submission"),
    (8888, "http-alt"),
    (199, "smux"),
    (1720, "h323q931"),
    (465, "smtps"),
    (548, "afp"),
    (113, "ident"),
    (81, "http"),
    (6001, "x11"),
    (10000, "snet-sensor-mgmt"),
    (514, "shell"),
    (5060, "sip"),
    (179, "bgp"),
    (1026, "msrpc"),
    (2000, "cisco-sccp"),
    (8443, "https-alt"),
    (8000, "http-alt"),
    (32768, "filenet-tms"),
    (554, "rtsp"),
    (26, "smtp"),
    (1433, "ms-sql-s"),
    (49152, "unknown"),
    (2001, "dc"),
    (515, "printer"),
    (8008, "http"),
    (49154, "unknown"),
    (1027, "iis"),
    (5666, "nrpe"),
    (646, "ldp"),
    (5000, "upnp"),
    (5631, "pcanywheredata"),
    (631, "ipp"),
    (49153, "unknown"),
    (8081, "blackice-icecap"),
    (2049, "nfs"),
    (88, "kerberos-sec"),
    (79, "finger"),
    (5800, "vnc-http"),
    (106, "pop3pw"),
    (2121, "ccproxy-ftp"),
    (1110, "nfsd-status"),
    (49155, "unknown"),
    (6000, "x11"),
    (513, "login"),
    (990, "ftps"),
    (5357, "wsdapi"),
    (427, "svrloc"),
    (49156, "unknown"),
    (543, "klogin"),
    (544, "kshell"),
    (5101, "admdog"),
    (144, "news"),
    (7, "echo"),
    (389, "ldap"),
    (8009, "ajp13"),
    (3128, "squid-http"),
    (444, "snpp"),
    (9999, "abyss"),
    (5009, "airport-admin"),
    (7070, "realserver"),
    (5190, "aol"),
    (3000, "ppp"),
    (5432, "postgresql"),
    (1900, "upnp"),
    (3986, "mapper-ws_ethd"),
    (13, "daytime"),
    (1029, "ms-lsa"),
    (9, "discard"),
    (5051, "ida-agent"),
    (6646, "unknown"),
    (49157, "unknown"),
    (1028, "unknown"),
    (873, "rsync"),
    (1755, "wms"),
    (2717, "pn-requester"),
    (4899, "radmin"),
    (9100, "jetdirect"),
    (119, "nntp"),
    (37, "time"),
    (6379, "redis"),
    (27017, "mongod"),
    (11211, "memcache"),
    (9200, "elasticsearch"),
    (5672, "amqp"),
    (9092, "kafka"),
    (2181, "zookeeper"),
    (5984, "couchdb"),
    (6443, "kubernetes-api"),
    (2379, "etcd-client"),
    (2380, "etcd-server"),
    (9090, "zeus-admin"),
    (9091, "xmltec-xmlmail"),
    (9000, "cslistener"),
    (8086, "d-s-n"),
    (3000, "ppp"),
    (4369, "epmd"),
    (15672, "rabbitmq-mgmt"),
    (1883, "mqtt"),
    (8883, "secure-mqtt"),
    (5671, "amqps"),
    (6380, "redis"),
    (7000, "afs3-fileserver"),
    (7001, "afs3-callback"),
    (8001, "vcom-tunnel"),
    (8002, "teradataordbms"),
    (8010, "http"),
    (8082, "blackice-alerts"),
    (8083, "us-srv"),
    (8084, "websnp"),
    (8085, "unknown"),
    (8088, "radan-http"),
    (8089, "unknown"),
    (8090, "opsmessaging"),
    (8180, "unknown"),
    (8181, "intermapper"),
    (8200, "trivnet1"),
    (8500, "fmtp"),
    (8765, "ultraseek-http"),
    (8834, "nessus-xmlrpc"),
    (9001, "tor-orport"),
    (9002, "dynamid"),
    (9042, "cassandra"),
    (9093, "copycat"),
    (9094, "unknown"),
    (9300, "vrace"),
    (9418, "git"),
    (9443, "tungsten-https"),
    (10250, "kubelet"),
    (10255, "unknown"),
    (11210, "couchbase"),
    (25565, "minecraft"),
    (27018, "mongod"),
    (28017, "mongod-http"),
    (50000, "ibm-db2"),
    (50070, "hadoop-nn"),
    (1521, "oracle"),
    (1522, "rna-lm"),
    (1526, "pdap-np"),
    (3050, "gds_db"),
    (5433, "postgresql"),
    (5434, "sgi-arrayd"),
    (5984, "couchdb"),
    (7474, "neo4j"),
    (8529, "arangodb"),
    (26257, "cockroachdb"),
    (33060, "mysqlx"),
    (1434, "ms-sql-m"),
    (636, "ldapssl"),
    (3268, "globalcatLDAP"),
    (3269, "globalcatLDAPssl"),
    (464, "kpasswd5"),
    (593, "http-rpc-epmap"),
    (5985, "wsman"),
    (5986, "wsmans"),
    (47001, "winrm"),
    (9389, "adws"),
    (2222, "EtherNetIP-1"),
    (2022, "down"),
    (830, "netconf-ssh"),
    (161, "snmp"),
    (162, "snmptrap"),
    (69, "tftp"),
    (67, "dhcps"),
    (500, "isakmp"),
    (1194, "openvpn"),
    (1701, "l2tp"),
    (4500, "nat-t-ike"),
    (51820, "wireguard"),
    (3478, "stun"),
    (5349, "stuns"),
    (5222, "xmpp-client"),
    (5223, "hpvirtgrp"),
    (5269, "xmpp-server"),
    (6667, "irc"),
    (6697, "ircs-u"),
    (1935, "rtmp"),
    (3690, "svn"),
    (2375, "docker"),
    (2376, "docker-s"),
    (4243, "vrml-multi-use"),
    (5044, "lxi-evntsvc"),
    (5601, "esmagent"),
    (9600, "micromuse-ncpw"),
    (24224, "fluentd"),
    (4040, "yo-main"),
    (7077, "unknown"),
    (8998, "canto-roboflow"),
    (18080, "unknown"),
    (19999, "dnp-sec"),
    (9411, "unknown"),
    (14250, "unknown"),
    (16686, "unknown"),
    (4317, "otlp-grpc"),
    (4318, "otlp-http"),
    (9115, "unknown"),
    (9100, "jetdirect"),
    (9187, "unknown"),
    (9104, "peerwire"),
    (9121, "unknown"),
    (3100, "opcon-xps"),
    (9095, "unknown"),
    (8428, "unknown"),
    (8126, "unknown"),
    (8125, "unknown"),
    (2003, "finger"),
    (2004, "mailbox"),
    (8649, "unknown"),
    (4949, "munin"),
    (10050, "zabbix-agent"),
    (10051, "zabbix-trapper"),
    (5665, "unknown"),
    (3260, "iscsi"),
    (860, "iscsi"),
    (2049, "nfs"),
    (20048, "mountd"),
    (4045, "lockd"),
    (6000, "x11"),
    (177, "xdmcp"),
    (512, "exec"),
    (1099, "rmiregistry"),
    (8005, "mxi"),
    (8140, "puppet"),
    (4505, "unknown"),
    (4506, "unknown"),
    (8300, "tmi"),
    (8301, "amberon"),
    (8302, "unknown"),
    (8600, "asterix"),
    (4646, "unknown"),
    (4647, "unknown"),
    (8200, "trivnet1"),
    (5050, "mmcc"),
    (7946, "unknown"),
    (2377, "swarm"),
    (10001, "scp-config"),
    (10243, "unknown"),
    (554, "rtsp"),
    (1080, "socks"),
    (3129, "netport-id"),
    (8118, "privoxy"),
    (9050, "tor-socks"),
    (9051, "tor-control"),
    (6881, "bittorrent-tracker"),
    (51413, "unknown"),
    (32400, "plex"),
    (8096, "unknown"),
    (8920, "unknown"),
    (1812, "radius"),
    (1813, "radacct"),
    (49, "tacacs"),
    (102, "iso-tsap"),
    (502, "mbap"),
    (20000, "dnp"),
    (44818, "EtherNetIP-2"),
    (47808, "bacnet"),
    (1911, "mtp"),
    (2404, "iec-104"),
    (4840, "opcua"),
    (9600, "micromuse-ncpw"),
];

/// UDP ports, most common first.
pub const TOP_UDP: &[(u16, &str)] = &[
    (53, "domain"),
    (123, "ntp"),
    (161, "snmp"),
    (137, "netbios-ns"),
    (67, "dhcps"),
    (68, "dhcpc"),
    (69, "tftp"),
    (138, "netbios-dgm"),
    (500, "isakmp"),
    (514, "syslog"),
    (520, "route"),
    (1900, "upnp"),
    (5353, "zeroconf"),
    (4500, "nat-t-ike"),
    (1194, "openvpn"),
    (51820, "wireguard"),
    (11211, "memcache"),
    (162, "snmptrap"),
    (1812, "radius"),
    (1813, "radacct"),
    (5060, "sip"),
    (3478, "stun"),
    (111, "rpcbind"),
    (2049, "nfs"),
    (1434, "ms-sql-m"),
    (427, "svrloc"),
    (631, "ipp"),
    (1701, "l2tp"),
    (443, "https"),
    (8125, "statsd"),
];

/// Where a spec comes from; only for naming it in errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port spec `{token}`: {reason}")]
pub struct PortSpecError {
    pub token: String,
    pub reason: String,
}

fn bad(token: &str, reason: impl Into<String>) -> PortSpecError {
    PortSpecError {
        token: token.to_owned(),
        reason: reason.into(),
    }
}

/// The ports to scan, per protocol, sorted and without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
}

impl PortList {
    pub fn len(&self) -> usize {
        self.tcp.len() + self.udp.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty()
    }

    fn normalise(mut self) -> PortList {
        self.tcp.sort_unstable();
        self.tcp.dedup();
        self.udp.sort_unstable();
        self.udp.dedup();
        self
    }
}

/// Parses a `-p` value. Items are comma-separated; `T:`/`U:` switch the protocol for
/// the items that follow (TCP until told otherwise).
pub fn parse(spec: &str) -> Result<PortList, PortSpecError> {
    let mut list = PortList::default();
    let mut proto = Proto::Tcp;
    if spec.trim().is_empty() {
        return Err(bad(spec, "empty port spec"));
    }
    for raw in spec.split(',') {
        let mut item = raw.trim();
        if let Some(rest) = item.strip_prefix("T:").or_else(|| item.strip_prefix("t:")) {
            proto = Proto::Tcp;
            item = rest;
        } else if let Some(rest) = item.strip_prefix("U:").or_else(|| item.strip_prefix("u:")) {
            proto = Proto::Udp;
            item = rest;
        }
        if item.is_empty() {
            return Err(bad(raw, "empty item (two commas in a row?)"));
        }
        let ports: Vec<u16> = if item == "-" {
            (1..=65535).collect()
        } else if let Some((a, b)) = item.split_once('-') {
            let a = if a.is_empty() {
                1
            } else {
                port_number(raw, a)?
            };
            let b = if b.is_empty() {
                65535
            } else {
                port_number(raw, b)?
            };
            if a > b {
                return Err(bad(raw, "the range ends before it starts"));
            }
            (a..=b).collect()
        } else if item.chars().all(|c| c.is_ascii_digit()) {
            vec![port_number(raw, item)?]
        } else {
            let table = match proto {
                Proto::Tcp => TOP_TCP,
                Proto::Udp => TOP_UDP,
            };
            let found: Vec<u16> = table
                .iter()
                .filter(|(_, n)| n.eq_ignore_ascii_case(item))
                .map(|(p, _)| *p)
                .collect();
            if found.is_empty() {
                return Err(bad(raw, "not a port number, range or known service name"));
            }
            found
        };
        match proto {
            Proto::Tcp => list.tcp.extend(ports),
            Proto::Udp => list.udp.extend(ports),
        }
    }
    Ok(list.normalise())
}

fn port_number(token: &str, s: &str) -> Result<u16, PortSpecError> {
    match s.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(_) => Err(bad(token, format!("port {s} is outside 1-65535"))),
        Err(_) => Err(bad(token, format!("`{s}` is not a port number"))),
    }
}

/// The `n` most common ports of a protocol: the ranked list, then the remaining ports
/// from 1 upwards.
pub fn top(proto: Proto, n: usize) -> Vec<u16> {
    let table = match proto {
        Proto::Tcp => TOP_TCP,
        Proto::Udp => TOP_UDP,
    };
    let mut seen = vec![false; 65536];
    let mut out = Vec::with_capacity(n.min(65535));
    for &(p, _) in table {
        if out.len() >= n {
            break;
        }
        if !std::mem::replace(&mut seen[p as usize], true) {
            out.push(p);
        }
    }
    for p in 1..=65535u16 {
        if out.len() >= n {
            break;
        }
        if !std::mem::replace(&mut seen[p as usize], true) {
            out.push(p);
        }
    }
    out.sort_unstable();
    out
}

/// The service usually found on a port (nmap calls this the `service` column when it
/// has not probed): a guess, reported as such.
pub fn well_known(proto: Proto, port: u16) -> Option<&'static str> {
    let table = match proto {
        Proto::Tcp => TOP_TCP,
        Proto::Udp => TOP_UDP,
    };
    table
        .iter()
        .find(|(p, n)| *p == port && *n != "unknown")
        .map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges() {
        let l = parse("22,80,1000-1002,80").unwrap();
        assert_eq!(l.tcp, [22, 80, 1000, 1001, 1002]);
        assert!(l.udp.is_empty());
        assert_eq!(parse("-").unwrap().tcp.len(), 65535);
        assert_eq!(parse("65530-").unwrap().tcp.len(), 6);
        assert_eq!(parse("-3").unwrap().tcp, [1, 2, 3]);
    }

    #[test]
    fn protocols_and_names() {
        let l = parse("T:22,ssh,U:53,123,T:443").unwrap();
        assert_eq!(l.tcp, [22, 443]);
        assert_eq!(l.udp, [53, 123]);
        assert_eq!(parse("https").unwrap().tcp, [443]);
    }

    #[test]
    fn errors_name_the_bad_token() {
        for (spec, tok) in [
            ("22,abc", "abc"),
            ("0", "0"),
            ("70000", "70000"),
            ("22,,80", ""),
            ("90-80", "90-80"),
            ("1-x", "1-x"),
        ] {
            let err = parse(spec).unwrap_err();
            assert_eq!(err.token, tok, "{spec}");
            assert!(err.to_string().contains(&format!("`{tok}`")));
        }
    }

    #[test]
    fn top_ports_are_ranked_then_filled() {
        let t = top(Proto::Tcp, 3);
        assert_eq!(t, [22, 80, 443]);
        let t = top(Proto::Tcp, 1000);
        assert_eq!(t.len(), 1000);
        assert!(t.contains(&6379) && t.contains(&5432));
        assert_eq!(top(Proto::Tcp, 70000).len(), 65535);
        assert_eq!(top(Proto::Udp, 2), [53, 123]);
    }

    #[test]
    fn well_known_names() {
        assert_eq!(well_known(Proto::Tcp, 22), Some("ssh"));
        assert_eq!(well_known(Proto::Udp, 53), Some("domain"));
        assert_eq!(well_known(Proto::Tcp, 49152), None);
    }
}
