//! The nemesis: injects the run's faults and operations at random times.

use dengine_core::{ConfChange, ConfChangeStep, ConfChangeTransition, NodeId};

use super::{Event, Sim};
use crate::disk::SimDisk;
use crate::state_machine::Workload;

#[derive(Clone, Copy, Debug)]
enum Action {
    Partition,
    IsolateLeader,
    OneWay,
    Heal,
    Crash,
    Restart,
    AddLearner,
    Promote,
    RemoveVoter,
    Swap,
    Transfer,
    ChaseLeader,
    LeaseRace,
}

/// Most nodes alive at once (members and joiners).
const MAX_NODES: usize = 7;

impl<W: Workload> Sim<'_, W> {
    pub(crate) fn nemesis(&mut self) {
        if !self.faults_active {
            return;
        }
        let iv = self.profile.nemesis_interval_us;
        let next = self.rng.range(iv / 2, iv + iv / 2);
        self.schedule(next, Event::Nemesis);
        self.decommission_removed();

        let mut actions = Vec::new();
        if self.profile.partitions {
            actions.extend([
                Action::Partition,
                Action::IsolateLeader,
                Action::OneWay,
                Action::Heal,
                Action::Heal,
            ]);
        }
        if self.profile.crashes {
            actions.extend([Action::Crash, Action::Restart, Action::Restart]);
        }
        if self.profile.membership {
            actions.extend([
                Action::AddLearner,
                Action::Promote,
                Action::RemoveVoter,
                Action::Swap,
            ]);
        }
        if self.profile.transfers {
            actions.push(Action::Transfer);
        }
        if self.profile.chase_leaders {
            actions.extend([Action::ChaseLeader, Action::ChaseLeader, Action::LeaseRace]);
        }
        let Some(&action) = self.rng.pick(&actions) else {
            return;
        };
        self.log(|| format!("nemesis: {action:?}"));
        match action {
            Action::Partition => self.partition_random(),
            Action::IsolateLeader => {
                if let Some(l) = self.leader() {
                    let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                    for o in ids.into_iter().filter(|&o| o != l) {
                        self.cut.insert((l, o));
                        self.cut.insert((o, l));
                    }
                }
            }
            Action::OneWay => {
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                if let (Some(&a), Some(&b)) = (self.rng.pick(&ids), self.rng.pick(&ids))
                    && a != b
                {
                    self.cut.insert((a, b));
                }
            }
            Action::ChaseLeader => self.chase_current_leader(),
            Action::LeaseRace => self.race_the_lease(),
            Action::Heal => {
                self.cut.clear();
                self.forget_chase();
            }
            Action::Crash => {
                let up: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.raw.is_some())
                    .map(|(&id, _)| id)
                    .collect();
                if let Some(&id) = self.rng.pick(&up) {
                    self.crash_node(id);
                }
            }
            Action::Restart => {
                let down: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.raw.is_none() && !n.removed)
                    .map(|(&id, _)| id)
                    .collect();
                if let Some(&id) = self.rng.pick(&down) {
                    self.restart_node(id);
                }
            }
            Action::AddLearner => self.add_learner(),
            Action::Promote => {
                if let Some((l, conf)) = self.leader_conf() {
                    let learners: Vec<NodeId> = conf.learners.iter().copied().collect();
                    if let Some(&id) = self.rng.pick(&learners) {
                        self.change(l, vec![ConfChangeStep::AddVoter(id)]);
                    }
                }
            }
            Action::RemoveVoter => {
                if let Some((l, conf)) = self.leader_conf()
                    && conf.voters.len() > 2
                {
                    let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
                    if let Some(&id) = self.rng.pick(&voters) {
                        self.change(l, vec![ConfChangeStep::Remove(id)]);
                    }
                }
            }
            Action::Swap => {
                if let Some((l, conf)) = self.leader_conf() {
                    let learners: Vec<NodeId> = conf.learners.iter().copied().collect();
                    let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
                    if let (Some(&add), Some(&rm)) =
                        (self.rng.pick(&learners), self.rng.pick(&voters))
                    {
                        self.change(
                            l,
                            vec![ConfChangeStep::AddVoter(add), ConfChangeStep::Remove(rm)],
                        );
                    }
                }
            }
            Action::Transfer => {
                if let Some((l, conf)) = self.leader_conf() {
                    let others: Vec<NodeId> =
                        conf.voters.iter().copied().filter(|&v| v != l).collect();
                    if let Some(&to) = self.rng.pick(&others)
                        && let Some(raw) = self.nodes.get_mut(&l).and_then(|n| n.raw.as_mut())
                    {
                        let res = raw.transfer_leader(to);
                        self.log(|| format!("transfer n{l} -> n{to}: {res:?}"));
                        self.drain(l);
                    }
                }
            }
        }
    }

    fn partition_random(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let side: Vec<bool> = ids.iter().map(|_| self.rng.chance(0.5)).collect();
        for (i, &a) in ids.iter().enumerate() {
            for (j, &b) in ids.iter().enumerate() {
                if side[i] != side[j] {
                    self.cut.insert((a, b));
                }
            }
        }
    }

    fn leader_conf(&self) -> Option<(NodeId, dengine_core::ConfState)> {
        let l = self.leader()?;
        let raw = self.nodes.get(&l)?.raw.as_ref()?;
        Some((l, raw.status().conf_state))
    }

    fn change(&mut self, leader: NodeId, steps: Vec<ConfChangeStep>) -> bool {
        let Some(raw) = self.nodes.get_mut(&leader).and_then(|n| n.raw.as_mut()) else {
            return false;
        };
        let cc = ConfChange {
            transition: ConfChangeTransition::Auto,
            steps,
            context: Vec::new(),
        };
        let res = raw.propose_conf_change(cc.clone());
        self.log(|| format!("conf change {:?} on n{leader}: {res:?}", cc.steps));
        self.drain(leader);
        res.is_ok()
    }

    fn add_learner(&mut self) {
        let alive = self.nodes.values().filter(|n| !n.removed).count();
        if alive >= MAX_NODES {
            return;
        }
        let Some(l) = self.leader() else {
            return;
        };
        let id = NodeId(self.next_node_id);
        if self.change(l, vec![ConfChangeStep::AddLearner(id)]) {
            self.next_node_id += 1;
            self.joining.insert(id, self.now);
            self.start_node(id, SimDisk::empty());
        }
    }

    /// Stops nodes that are no longer members (and are not joining).
    fn decommission_removed(&mut self) {
        let Some(l) = self.leader() else {
            return;
        };
        let Some(raw) = self.nodes.get(&l).and_then(|n| n.raw.as_ref()) else {
            return;
        };
        let st = raw.status();
        // Only judge from a settled membership.
        // A new leader knows the commit index only once an entry of its
        // term committed; before that its membership may be stale.
        let settled = raw.log_term(st.hard_state.commit).ok() == Some(st.hard_state.term);
        if !settled || st.conf_state.is_joint() || st.applying < st.hard_state.commit {
            return;
        }
        let members = st.conf_state.members();
        // Stop a removed node only once every member has applied the change
        // that removed it (as an operator would): before that a member may
        // still need its vote or its log.
        let commit = st.hard_state.commit;
        let lagging = members.iter().any(|m| {
            self.nodes
                .get(m)
                .is_some_and(|n| n.raw.is_some() && n.applied < commit)
        });
        if lagging {
            return;
        }
        // A joiner whose change is not committed yet may still become a
        // member: only nodes that were members and are no more are gone.
        self.joining.retain(|id, _| !members.contains(id));
        let gone: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|&(&id, n)| {
                !n.removed && id != l && !members.contains(&id) && !self.joining.contains_key(&id)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.crash_node(id);
            if let Some(n) = self.nodes.get_mut(&id) {
                n.removed = true;
            }
            self.inv.forget_node(id);
            self.log(|| format!("n{id} decommissioned"));
        }
    }
}
