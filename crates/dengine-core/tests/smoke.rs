use dengine_core::testing::Cluster;

#[test]
fn three_nodes_elect_and_replicate() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let idx = c.propose(1, b"hello").unwrap();
    c.stabilize();
    for id in 1..=3 {
        let n = c.node(id);
        assert_eq!(n.applied_data(), vec![b"hello".to_vec()], "node {id}");
        assert!(n.status().applied >= idx);
    }
    c.check_state_machine_safety();
}

#[test]
fn election_by_ticks() {
    let mut c = Cluster::new(3);
    c.tick_all(40);
    let lead = c.leader().expect("a leader elected by ticks alone").0;
    c.propose(lead, b"x").unwrap();
    c.stabilize();
    for id in 1..=3 {
        assert_eq!(c.node(id).applied_data(), vec![b"x".to_vec()]);
    }
}
