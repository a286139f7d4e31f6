//! Tests of `crate::scan`.

use super::*;

#[test]
fn a_network_plans_each_member_alone_in_linear_memory() {
    let targets = vec![(
        "10.20.0.0/16".to_owned(),
        target::parse("10.20.0.0/16").unwrap(),
    )];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let planned = runtime.block_on(plan(&targets, false, None)).unwrap();
    assert_eq!(planned.len(), 65_534);
    assert!(planned.iter().all(|p| p.siblings.is_empty() && !p.single));
}
