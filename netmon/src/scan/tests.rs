//! Tests of `crate::scan`.

use super::*;

fn plan_of(tokens: &[&str]) -> Result<Plan, ScanError> {
    plan_public(tokens, false)
}

fn plan_public(tokens: &[&str], allow_public: bool) -> Result<Plan, ScanError> {
    let targets = target::parse_all(tokens).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(plan(&targets, allow_public, None))
}

#[test]
fn a_network_plans_in_constant_memory() {
    // A /12 (the most one scan takes): the plan holds the one target as its bounds,
    // and its million members come out one at a time, each a host of its own.
    let plan = plan_of(&["10.16.0.0/12"]).unwrap();
    assert_eq!(plan.entries.len(), 1);
    assert!(matches!(
        plan.entries[0].addrs,
        PlanAddrs::Range(target::Addrs::Net(_))
    ));
    let mut count = 0usize;
    for p in plan.iter() {
        assert!(p.siblings.is_empty() && !p.single && p.token == "10.16.0.0/12");
        count += 1;
    }
    assert_eq!(count, (1 << 20) - 2);
}

#[test]
fn addresses_come_in_target_order_each_once() {
    let plan = plan_of(&["10.0.0.2-4", "10.0.0.0/30", "10.0.0.9", "10.0.0.3"]).unwrap();
    let got: Vec<(String, String, bool)> = plan
        .iter()
        .map(|p| (p.addr.to_string(), p.token, p.single))
        .collect();
    let want = [
        ("10.0.0.2", "10.0.0.2-4", false),
        ("10.0.0.3", "10.0.0.2-4", false),
        ("10.0.0.4", "10.0.0.2-4", false),
        ("10.0.0.1", "10.0.0.0/30", false),
        ("10.0.0.9", "10.0.0.9", true),
    ];
    let want: Vec<(String, String, bool)> = want
        .iter()
        .map(|(a, t, s)| (a.to_string(), t.to_string(), *s))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn every_address_is_checked_before_the_scan() {
    // The refused address is the last of the range: the plan fails as a whole.
    let err = plan_public(&["10.0.0.1", "223.255.255.254-224.0.0.0"], true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("224.0.0.0") && err.contains("multicast"),
        "{err}"
    );
    let err = plan_of(&["10.255.255.0-11.0.0.1"]).unwrap_err().to_string();
    assert!(
        err.contains("11.0.0.0") && err.contains("--allow-public"),
        "{err}"
    );
}

#[test]
fn host_groups_bound_the_probes_of_a_group() {
    let mut o = ScanOptions::default();
    assert_eq!(host_group(&o), 1048); // 1,000 ports
    o.ports = PortList::default();
    assert_eq!(host_group(&o), 4096);
    o.ports.tcp = (1..=65535).collect();
    assert_eq!(host_group(&o), 256);
}
