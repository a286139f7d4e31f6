//! Host hints from what replies look like: hop distance from the reply TTL, and an
//! operating-system family guess from the initial TTL (and the SYN-ACK window when a
//! SYN scan saw one). These are hints: TTLs and windows are configurable, and anything
//! between (NAT, proxies, load balancers) changes them.

/// The initial TTL a reply most likely left its host with: the smallest common default
/// (32, 64, 128, 255) at or above the observed one.
pub fn initial_ttl(observed: u8) -> u8 {
    [32u8, 64, 128, 255]
        .into_iter()
        .find(|&t| observed <= t)
        .unwrap_or(255)
}

/// Hops to a remote host, nmap's convention: 1 for a host on the same link.
pub fn distance(observed_ttl: u8) -> u8 {
    initial_ttl(observed_ttl) - observed_ttl + 1
}

/// What a host's reply says about it: distance and OS hint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostHints {
    pub distance: Option<u8>,
    pub os_hint: Option<String>,
}

/// The hints of a reply with TTL `ttl` (and SYN-ACK `window`, from a SYN scan). This
/// host itself (`local`) is at distance 0, and its TTL says nothing about its system.
pub fn of_reply(ttl: Option<u8>, window: Option<u16>, local: bool) -> HostHints {
    if local {
        return HostHints {
            distance: Some(0),
            os_hint: None,
        };
    }
    HostHints {
        distance: ttl.map(distance),
        os_hint: ttl.map(|t| os_hint(t, window)),
    }
}

/// An operating-system family guess, phrased as a hint.
pub fn os_hint(observed_ttl: u8, syn_ack_window: Option<u16>) -> String {
    let initial = initial_ttl(observed_ttl);
    let family = match (initial, syn_ack_window) {
        (64, Some(65535)) => "BSD or macOS",
        (64, Some(w)) if LINUX_WINDOWS.contains(&w) => "Linux",
        (64, _) => "Linux or another Unix",
        (128, _) => "Windows",
        (255, _) => "network device, Solaris or AIX",
        (32, _) => "old Windows or embedded device",
        _ => "unknown",
    };
    match syn_ack_window {
        Some(w) => format!("{family} (hint: initial TTL {initial}, window {w})"),
        None => format!("{family} (hint: initial TTL {initial})"),
    }
}

/// SYN-ACK windows Linux kernels offer by default (for MSS 1460, 1440, 65483 on
/// loopback and a few older kernels' values).
const LINUX_WINDOWS: &[u16] = &[
    5792, 5840, 14480, 14600, 26883, 28960, 29200, 43690, 42340, 64240, 65160, 64800, 62727, 65483,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_ttls_and_distances() {
        assert_eq!(initial_ttl(64), 64);
        assert_eq!(initial_ttl(57), 64);
        assert_eq!(initial_ttl(113), 128);
        assert_eq!(initial_ttl(250), 255);
        assert_eq!(initial_ttl(20), 32);
        assert_eq!(distance(64), 1);
        assert_eq!(distance(62), 3);
        assert_eq!(
            of_reply(Some(64), None, true),
            HostHints {
                distance: Some(0),
                os_hint: None
            }
        );
        assert_eq!(of_reply(None, None, false), HostHints::default());
        assert_eq!(of_reply(Some(62), None, false).distance, Some(3));
    }

    #[test]
    fn os_hints_say_they_are_hints() {
        assert_eq!(
            os_hint(64, None),
            "Linux or another Unix (hint: initial TTL 64)"
        );
        assert_eq!(
            os_hint(63, Some(65160)),
            "Linux (hint: initial TTL 64, window 65160)"
        );
        assert!(os_hint(64, Some(65535)).starts_with("BSD or macOS"));
        assert!(os_hint(120, None).starts_with("Windows"));
        assert!(os_hint(254, None).starts_with("network device"));
        assert!(os_hint(1, None).contains("hint"));
    }
}
