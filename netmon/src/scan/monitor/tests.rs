//! Tests of `crate::scan::monitor`.

use super::*;

#[test]
fn the_state_file_is_written_privately_atomically_and_never_through_a_link() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts.json");
    let mut inv = Inventory::new();
    inv.updated = Some(Utc::now());
    save_state(&path, &inv).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(load_state(&path).unwrap().updated, inv.updated);
    // A link planted at the temporary name is replaced, its target untouched.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    std::os::unix::fs::symlink(&victim, std::path::PathBuf::from(&tmp)).unwrap();
    save_state(&path, &inv).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(!std::path::Path::new(&tmp).exists());
    // Nothing else is left in the directory.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["hosts.json", "victim"]);
}

#[test]
fn a_corrupt_state_file_is_set_aside_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts.json");
    assert!(load_or_set_aside(&path).hosts().next().is_none());
    std::fs::write(&path, "{ not an inventory").unwrap();
    assert!(load_or_set_aside(&path).hosts().next().is_none());
    assert!(!path.exists());
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].starts_with("hosts.json.corrupt-"), "{kept:?}");
    let text = std::fs::read_to_string(dir.path().join(&kept[0])).unwrap();
    assert_eq!(text, "{ not an inventory");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn nothing_is_probed_more_often_than_its_interval() {
    let mut s = Schedule::new(
        Duration::from_secs(600),
        Duration::from_secs(3600),
        Duration::from_secs(60),
    );
    let t0 = Instant::now();
    let a = ip("10.0.0.2");
    let known = [(a, true)];
    let d = s.due(t0, &known, &BTreeSet::new());
    assert!(d.discovery);
    assert_eq!(d.ping, [a]);
    assert_eq!(d.port_scan, [a]);
    s.swept(t0);
    s.probed(a, t0);
    s.port_scanned(a, t0);
    for secs in [1, 30, 59] {
        let d = s.due(t0 + Duration::from_secs(secs), &known, &BTreeSet::new());
        assert_eq!(d, Due::default(), "at {secs} s");
    }
    let d = s.due(t0 + Duration::from_secs(60), &known, &BTreeSet::new());
    assert_eq!(d.ping, [a]);
    assert!(d.port_scan.is_empty() && !d.discovery);
    assert_eq!(
        s.next_due(&known, false, t0 + Duration::from_secs(1)),
        t0 + Duration::from_secs(60)
    );
    // A down host is pinged but not port-scanned.
    let d = s.due(
        t0 + Duration::from_secs(7200),
        &[(a, false)],
        &BTreeSet::new(),
    );
    assert_eq!(d.ping, [a]);
    assert!(d.port_scan.is_empty());
}

#[test]
fn new_peers_once_per_discovery_interval() {
    let mut s = Schedule::new(
        Duration::from_secs(600),
        Duration::from_secs(3600),
        Duration::from_secs(60),
    );
    let t0 = Instant::now();
    let p = ip("10.0.0.7");
    let peers: BTreeSet<IpAddr> = [p].into();
    assert_eq!(s.due(t0, &[], &peers).new_peers, [p]);
    s.probed(p, t0);
    // Did not answer (so not known): not again before the discovery interval.
    assert!(
        s.due(t0 + Duration::from_secs(300), &[], &peers)
            .new_peers
            .is_empty()
    );
    assert_eq!(
        s.due(t0 + Duration::from_secs(600), &[], &peers).new_peers,
        [p]
    );
}

#[test]
fn peers_outside_allow_are_ignored() {
    let dir = std::env::temp_dir().join(format!("netmon-mon-{}", std::process::id()));
    let cfg = ScanConfig {
        allow: vec!["10.200.0.0/24".parse().unwrap()],
        state_file: dir.join("hosts.json"),
        ..ScanConfig::default()
    };
    let mut m = Monitor::new(&cfg).unwrap();
    assert!(m.observe_peer(ip("10.200.0.5")));
    assert!(!m.observe_peer(ip("10.201.0.5")));
    assert!(!m.observe_peer(ip("8.8.8.8")));
    assert_eq!(m.counters.peers_outside_allow, 2);
    // The default config scans nothing at all.
    let mut off = Monitor::new(&ScanConfig {
        state_file: dir.join("off.json"),
        ..ScanConfig::default()
    })
    .unwrap();
    assert!(!off.enabled());
    assert!(!off.observe_peer(ip("10.200.0.5")));
}
