//! The leader chase: a nemesis that cuts leaders off at the moments a
//! commit rule can go wrong, so that the Raft paper's Figure 8 history
//! arises within a few hundred seeds instead of almost never.
//!
//! Random partitions rarely strike inside the short windows that matter.
//! This nemesis watches the cluster and strikes inside them:
//!
//! - **Leaders cut after a minority, in bursts.** A burst starts with the
//!   current leader: the next time entries of its term reached only a
//!   minority, it is isolated or crashed. For the rest of the burst, each
//!   new leader is cut the same way soon after it takes office (at once,
//!   or a few message delays later). Elections follow one another in
//!   short terms, and logs end in uncommitted tails of different terms on
//!   different nodes.
//! - **The Figure 8 window.** A leader that has not yet committed an entry
//!   of its own term, whose followers' acknowledgements put an entry of an
//!   *older* term on a majority, must not commit it: a node whose log ends
//!   in a higher term can still be elected and overwrite it. Right then the
//!   leader is isolated and every node held apart rejoins, so that exactly
//!   that overwrite can happen. (Only when some node could overwrite it.)
//! - **Commits the leader has not synced.** A leader's commit index can
//!   pass what its own disk holds (its followers synced first). Right then
//!   it is crashed, losing the unsynced tail, and a follower holding the
//!   entry is held apart: what was committed must survive on the others.
//!
//! - **Lease races.** The leader is cut off from its peers but not from
//!   its clients, which keep asking it (lease reads among others) while
//!   the other clients turn to the rest, which elect and write: the old
//!   leader's lease must run out before a new leader can commit. Its clock
//!   is set as slow as the run's drift bound allows, the others' as fast.
//!
//! At most a minority is held apart at once, so the rest can elect; each
//! isolated node rejoins (or a crashed one restarts) after a few election
//! timeouts, or earlier when a later chase needs its place.

use std::collections::BTreeMap;

use dengine_core::{LogIndex, NodeId, Role, Term};

use super::{Event, Sim};
use crate::state_machine::Workload;

/// Probability of chasing a new leader.
const CHASE_NEW_LEADER: f64 = 0.5;
/// Probability that a chased new leader is cut before its first messages
/// leave (its entries then stay on it alone).
const CUT_AT_ONCE: f64 = 0.5;
/// A chased leader with nothing uncommitted of its term is looked at again
/// this many times (clients keep writing, so it soon has).
const LOOKS: u32 = 20;
/// Probability that a chase crashes the leader rather than isolating it
/// (when the profile has crashes): what it had not synced is lost.
const CRASH_INSTEAD: f64 = 0.25;
/// Probability of striking when the Figure 8 window opens.
const STRIKE_IN_WINDOW: f64 = 0.7;
/// Probability of striking when a leader commits what it has not synced.
const STRIKE_UNSYNCED: f64 = 0.5;
/// How often the clients of an old leader in a lease race look at it, and
/// how many times (past the longest a leader keeps office alone).
const RACE_LOOK_US: u64 = 2_000;
const RACE_LOOKS: u32 = 150;
/// How long they wait on it before asking again.
const RACE_PATIENCE_US: u64 = 3_000;
/// How long a burst of chased elections lasts, virtual microseconds.
const BURST_US: (u64, u64) = (300_000, 2_000_000);
/// How long a chased node stays apart, virtual microseconds (a few
/// election timeouts, so that the others elect and are chased in turn).
const APART_US: (u64, u64) = (150_000, 600_000);

/// How the chase takes a node out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strike {
    /// Cut every link to and from it; its disk keeps everything.
    Isolate,
    /// Crash it (losing what it had not synced) if the profile has
    /// crashes, now and then; else isolate it.
    MaybeCrash,
    /// Crash it.
    Crash,
}

/// Nodes the chase holds apart, oldest first.
#[derive(Debug, Default)]
pub(crate) struct LeaderChase {
    apart: Vec<Apart>,
    /// Each leader's term and commit index when it took office: the
    /// Figure 8 window is about entries beyond it (the leader's own commit
    /// index cannot tell, a broken leader moves it into the window).
    elected: BTreeMap<NodeId, (Term, LogIndex)>,
    /// Numbers each hold, so that a stale rejoin timer does nothing.
    next_hold: u64,
    /// New leaders are chased until then (a burst of short terms).
    burst_until: u64,
}

#[derive(Clone, Copy, Debug)]
struct Apart {
    node: NodeId,
    hold: u64,
    crashed: bool,
}

impl<W: Workload> Sim<'_, W> {
    fn chasing(&self) -> bool {
        self.profile.chase_leaders && self.faults_active
    }

    /// `id` just became leader of `term`: maybe chase it soon.
    pub(crate) fn chase_new_leader(&mut self, id: NodeId, term: Term) {
        if !self.chasing() {
            return;
        }
        if let Some(raw) = self.nodes.get(&id).and_then(|n| n.raw.as_ref()) {
            let commit = raw.hard_state().commit;
            self.chase.elected.insert(id, (term, commit));
        }
        if self.now >= self.chase.burst_until || !self.rng.chance(CHASE_NEW_LEADER) {
            return;
        }
        // At once: the event runs after this step, and what the leader sent
        // meanwhile is dropped on arrival. Later: it reached some followers.
        let delay = if self.rng.chance(CUT_AT_ONCE) {
            0
        } else {
            self.rng
                .range(self.profile.delay_min_us, 3 * self.profile.delay_max_us)
        };
        self.schedule(delay, Event::ChaseLeader(id, term, 1));
    }

    /// A nemesis action: start a burst of short terms. The current leader,
    /// however long it has led, is chased the next time entries of its
    /// term are on a minority only, and so are the leaders elected during
    /// the burst. Between bursts the cluster commits and its logs
    /// converge: unending bursts leave hundreds of one-entry terms to
    /// backtrack over, one round trip each, and little else.
    pub(crate) fn chase_current_leader(&mut self) {
        let Some((id, term)) = self.settled_leader() else {
            return;
        };
        let burst = self.rng.range(BURST_US.0, BURST_US.1);
        self.chase.burst_until = self.chase.burst_until.max(self.now + burst);
        let d = self.rng.range(0, self.profile.delay_max_us);
        self.schedule(d, Event::ChaseLeader(id, term, LOOKS));
    }

    /// A nemesis action: a race against the leader's lease. The leader is
    /// cut off from its peers but not from clients; half the clients turn
    /// to it (its lease reads must stop before the others can elect), the
    /// others to the rest of the cluster, which elects a new leader and
    /// writes.
    pub(crate) fn race_the_lease(&mut self) {
        let Some((id, term)) = self.settled_leader() else {
            return;
        };
        let why = format!("lease race against the leader of t{term}");
        self.hold_apart(id, &why, Strike::Isolate);
        self.worst_clocks_for_the_lease(id);
        let others: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|&(&o, n)| o != id && n.raw.is_some() && !n.removed)
            .map(|(&o, _)| o)
            .collect();
        for c in 0..self.clients.len() {
            let target = if c % 2 == 0 {
                Some(id)
            } else {
                self.rng.pick(&others).copied()
            };
            if let Some(t) = target {
                self.client_redirect(c, t);
            }
        }
        self.schedule(RACE_LOOK_US, Event::LeaseRace(id, RACE_LOOKS));
    }

    /// The worst clocks the run's drift bound allows for the lease of
    /// leader `id`: its own as slow as allowed (its lease lasts longest in
    /// real time), every other as fast as allowed (they time out soonest).
    /// Rates stay so after the race; any rate within the bound is fair.
    fn worst_clocks_for_the_lease(&mut self, id: NodeId) {
        let drift = self.profile.drift;
        if drift <= 0.0 {
            return;
        }
        for (&o, n) in self.nodes.iter_mut() {
            // A rate above 1 spaces ticks further apart: a slower clock.
            n.rate = if o == id { 1.0 + drift } else { 1.0 - drift };
        }
        self.log(|| format!("clocks: n{id} at 1+{drift}, the others at 1-{drift}"));
    }

    /// During a lease race, the clients of the old leader `id` are
    /// impatient: one stuck there (on a write, or a read waiting for a
    /// round no quorum answers) gives up and asks again, so that lease
    /// reads keep coming while the others elect and write. The other
    /// clients are kept off it.
    pub(crate) fn lease_race_due(&mut self, id: NodeId, looks: u32) {
        if !self.faults_active || !self.chase.apart.iter().any(|a| a.node == id) {
            return;
        }
        let others: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|&(&o, n)| o != id && n.raw.is_some() && !n.removed)
            .map(|(&o, _)| o)
            .collect();
        for c in 0..self.clients.len() {
            let Some((node, since)) = self.client_waiting_on(c) else {
                continue;
            };
            if node != id {
                continue;
            }
            if c % 2 == 0 {
                if self.now >= since + RACE_PATIENCE_US {
                    self.client_redirect(c, id);
                }
            } else if let Some(&o) = self.rng.pick(&others) {
                // Followers that still take the old leader for leader send
                // the others back to it.
                self.client_redirect(c, o);
            }
        }
        if looks > 1 {
            self.schedule(RACE_LOOK_US, Event::LeaseRace(id, looks - 1));
        }
    }

    /// The leader and its term if a burst may start: it committed an entry
    /// of its term and every voter holds what it committed. A burst starts
    /// only from a settled cluster, which bounds the divergent one-entry
    /// terms that followers must later backtrack over (one round trip
    /// each) to a burst's worth.
    fn settled_leader(&self) -> Option<(NodeId, Term)> {
        let id = self.leader()?;
        let raw = self.nodes.get(&id)?.raw.as_ref()?;
        let term = raw.term();
        let commit = raw.hard_state().commit;
        if raw.log_term(commit).ok() != Some(term) {
            return None;
        }
        let status = raw.status();
        let voters = status.conf_state.voters.iter();
        let all_hold = voters
            .chain(status.conf_state.voters_outgoing.iter())
            .all(|v| status.progress.get(v).is_some_and(|p| p.matched >= commit));
        all_hold.then_some((id, term))
    }

    /// The chase of leader `id` of `term` is due: strike if it is still
    /// leader with entries of its term on a minority only; else look again
    /// soon, `looks` times in all.
    pub(crate) fn chase_leader_due(&mut self, id: NodeId, term: Term, looks: u32) {
        if !self.chasing() {
            return;
        }
        let Some(raw) = self.nodes.get(&id).and_then(|n| n.raw.as_ref()) else {
            return;
        };
        if raw.role() != Role::Leader || raw.term() != term {
            return;
        }
        let last = raw.last_index();
        let uncommitted_own =
            last > raw.hard_state().commit && raw.log_term(last).ok() == Some(term);
        if !uncommitted_own {
            if looks > 1 {
                let d = self.rng.range(100, 2_000);
                self.schedule(d, Event::ChaseLeader(id, term, looks - 1));
            }
            return;
        }
        let why = format!("leader of t{term} with entries up to {last} on a minority");
        self.hold_apart(id, &why, Strike::MaybeCrash);
    }

    /// Leader `id` heard from a follower: if an older-term entry is now on
    /// a majority while nothing of its term is committed, strike.
    pub(crate) fn watch_figure8_window(&mut self, id: NodeId) {
        if !self.chasing() {
            return;
        }
        let Some(raw) = self.nodes.get(&id).and_then(|n| n.raw.as_ref()) else {
            return;
        };
        if raw.role() != Role::Leader {
            return;
        }
        let term = raw.term();
        // Once an entry of its term is committed the window is closed, and
        // this cheap test keeps the watch off nearly every step.
        if raw.log_term(raw.hard_state().commit).ok() == Some(term) {
            return;
        }
        let Some(&(elected_in, commit)) = self.chase.elected.get(&id) else {
            return;
        };
        if elected_in != term {
            return;
        }
        let status = raw.status();
        let matched = |v: NodeId| status.progress.get(&v).map_or(0, |p| p.matched.0);
        let on_majority = majority_value(&status.conf_state.voters, matched)
            .min(majority_value(&status.conf_state.voters_outgoing, matched));
        let index = LogIndex(on_majority);
        if index <= commit {
            return;
        }
        let Ok(entry_term) = raw.log_term(index) else {
            return;
        };
        if entry_term >= term {
            return;
        }
        // Striking only matters if some node could overwrite the entry: its
        // log ends in a later term than the entry's, without the entry.
        let Some(rival) = self.rival_of(id, index, entry_term) else {
            return;
        };
        if !self.rng.chance(STRIKE_IN_WINDOW) {
            return;
        }
        let why = format!(
            "Figure 8 window: entry {index} of t{entry_term} on a majority, nothing of t{term} committed, n{rival} could overwrite it"
        );
        // Everyone held apart comes back, the rival among them, so that the
        // rest can elect it.
        for a in std::mem::take(&mut self.chase.apart) {
            self.let_back(a);
        }
        // Crashing would do as well, but isolation keeps the tail for the
        // next round of the dance.
        self.hold_apart(id, &why, Strike::Isolate);
    }

    /// Leader `id` of `term` now has a commit index beyond what its own
    /// disk holds (a quorum of followers synced it first, or a broken
    /// leader counted its own unsynced entries): maybe strike right after
    /// this step.
    pub(crate) fn watch_commit_beyond_durable(&mut self, id: NodeId, term: Term, commit: LogIndex) {
        if !self.chasing() {
            return;
        }
        let durable = self.nodes.get(&id).map(|n| n.disk.state().last_index());
        if durable.is_none_or(|d| d >= commit) || !self.rng.chance(STRIKE_UNSYNCED) {
            return;
        }
        self.schedule(0, Event::ChaseUnsynced(id, term, commit));
    }

    /// Crashes leader `id` of `term`, which committed up to `commit` but
    /// has not synced it, and holds apart a follower that has: the entry
    /// must still be on enough of the others to survive both.
    pub(crate) fn chase_unsynced_due(&mut self, id: NodeId, term: Term, commit: LogIndex) {
        if !self.chasing() {
            return;
        }
        let Some(n) = self.nodes.get(&id) else {
            return;
        };
        let Some(raw) = n.raw.as_ref() else {
            return;
        };
        if raw.role() != Role::Leader || raw.term() != term {
            return;
        }
        let durable = n.disk.state().last_index();
        if durable >= commit {
            return;
        }
        let status = raw.status();
        let holders: Vec<NodeId> = status
            .progress
            .iter()
            .filter(|&(&f, p)| f != id && !p.is_learner && p.matched >= commit)
            .map(|(&f, _)| f)
            .collect();
        let holder = self.rng.pick(&holders).copied();
        let why = format!("leader of t{term} committed {commit}, synced only up to {durable}");
        self.hold_apart(id, &why, Strike::Crash);
        if let Some(f) = holder {
            let why = format!("a follower holding {commit} of the crashed leader n{id}");
            self.hold_apart(f, &why, Strike::Isolate);
        }
    }

    /// A node other than `leader` whose durable log ends in a term later
    /// than `entry_term` and does not hold that entry at `index`.
    fn rival_of(&self, leader: NodeId, index: LogIndex, entry_term: Term) -> Option<NodeId> {
        self.nodes.iter().find_map(|(&id, n)| {
            if id == leader || n.removed {
                return None;
            }
            let d = n.disk.state();
            let last_term = d.term_at(d.last_index())?;
            let holds = d.term_at(index) == Some(entry_term);
            (last_term > entry_term && !holds).then_some(id)
        })
    }

    /// Isolates (or maybe crashes) `id`, first letting back the isolated
    /// node whose log ends in the highest term if the chase already holds
    /// a minority apart.
    fn hold_apart(&mut self, id: NodeId, why: &str, strike: Strike) {
        let room = (self.voter_count().max(1) - 1) / 2;
        if room == 0 {
            return;
        }
        // A node restarted or let back early may be chased again.
        if let Some(pos) = self.chase.apart.iter().position(|a| a.node == id) {
            self.chase.apart.remove(pos);
        }
        while self.chase.apart.len() >= room {
            let Some(pos) = self.strongest_apart() else {
                break;
            };
            let a = self.chase.apart.remove(pos);
            self.let_back(a);
        }
        let crashed = match strike {
            Strike::Isolate => false,
            Strike::MaybeCrash => self.profile.crashes && self.rng.chance(CRASH_INSTEAD),
            Strike::Crash => true,
        };
        self.chase.next_hold += 1;
        let hold = self.chase.next_hold;
        self.chase.apart.push(Apart {
            node: id,
            hold,
            crashed,
        });
        let what = if crashed { "crash" } else { "isolate" };
        self.log(|| format!("nemesis: ChaseLeader {what} n{id} ({why})"));
        if crashed {
            self.crash_node(id);
        } else {
            self.isolate(id);
        }
        let d = self.rng.range(APART_US.0, APART_US.1);
        self.schedule(d, Event::ChaseRejoin(id, hold));
    }

    /// The position of the held node whose log ends in the highest term
    /// (the one that could overwrite an older tail), the oldest on a tie.
    fn strongest_apart(&self) -> Option<usize> {
        let last_term = |id: NodeId| {
            let d = self.nodes.get(&id).map(|n| n.disk.state());
            d.map_or(Term(0), |s| s.term_at(s.last_index()).unwrap_or(Term(0)))
        };
        let mut best: Option<(usize, Term)> = None;
        for (i, a) in self.chase.apart.iter().enumerate() {
            let t = last_term(a.node);
            if best.is_none_or(|(_, b)| t > b) {
                best = Some((i, t));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The hold `hold` on `id` is over.
    pub(crate) fn chase_rejoin_due(&mut self, id: NodeId, hold: u64) {
        if !self.faults_active {
            return;
        }
        let Some(pos) = self.chase.apart.iter().position(|a| a.hold == hold) else {
            return;
        };
        let a = self.chase.apart.remove(pos);
        debug_assert_eq!(a.node, id);
        self.let_back(a);
    }

    fn let_back(&mut self, a: Apart) {
        let id = a.node;
        self.log(|| format!("nemesis: ChaseRejoin n{id}"));
        if a.crashed {
            self.restart_node(id);
        } else {
            self.cut.retain(|&(x, y)| x != id && y != id);
        }
    }

    /// Voters of the leader's membership (or the initial ones).
    fn voter_count(&self) -> usize {
        self.leader()
            .and_then(|l| self.nodes.get(&l))
            .and_then(|n| n.raw.as_ref())
            .map_or(self.opts.nodes, |r| r.conf_state().voters.len())
    }

    fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            self.cut.insert((id, o));
            self.cut.insert((o, id));
        }
    }

    /// The network was healed (or faults ended): nobody is held apart.
    pub(crate) fn forget_chase(&mut self) {
        self.chase.apart.clear();
    }
}

/// The largest value a majority of `voters` reports at least (0 if there
/// is no voter). Computed here, not borrowed from the core under test.
fn majority_value(
    voters: &std::collections::BTreeSet<NodeId>,
    value: impl Fn(NodeId) -> u64,
) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    let mut v: Vec<u64> = voters.iter().map(|&id| value(id)).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v[voters.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> std::collections::BTreeSet<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn majority_value_is_what_a_majority_holds() {
        let m = |vals: &[u64]| {
            let ids: Vec<u64> = (1..=vals.len() as u64).collect();
            majority_value(&set(&ids), |id| vals[id.0 as usize - 1])
        };
        assert_eq!(m(&[5, 3, 1]), 3);
        assert_eq!(m(&[5, 5, 1, 1, 4]), 4);
        assert_eq!(m(&[7]), 7);
        assert_eq!(m(&[2, 9]), 2);
        assert_eq!(majority_value(&set(&[]), |_| 0), u64::MAX);
    }
}
