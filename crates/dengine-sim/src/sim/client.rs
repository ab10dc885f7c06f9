//! Simulated clients: each runs one request at a time against the node it
//! believes is the leader, and records invoke/complete events in the
//! history.

use dengine_core::{Error, LogIndex, NodeId, ReadId, ReadPolicy};

use super::{Event, Sim};
use crate::linearizability::Operation;
use crate::state_machine::{Request, StateMachine, Workload};

/// How long a client waits for an answer before giving up, virtual µs.
const CLIENT_TIMEOUT_US: u64 = 1_500_000;

/// Clients stop making requests this long after faults end.
const QUIESCE_AFTER_US: u64 = 3_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write,
    Read,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    op: u64,
    node: NodeId,
    kind: Kind,
}

/// One client.
#[derive(Debug)]
pub(crate) struct Client {
    target: NodeId,
    current: Option<InFlight>,
}

impl Client {
    pub(crate) fn new(target: NodeId) -> Client {
        Client {
            target,
            current: None,
        }
    }
}

impl<W: Workload> Sim<'_, W> {
    fn hist_index(op: u64) -> usize {
        (op - 1) as usize
    }

    fn client_of(&self, op: u64) -> Option<usize> {
        self.clients
            .iter()
            .position(|c| c.current.is_some_and(|f| f.op == op))
    }

    /// Frees client `c` and schedules its next request.
    fn client_next(&mut self, c: usize, delay: u64, retarget: Option<NodeId>) {
        let target = match retarget {
            Some(t) => t,
            None => {
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                self.rng.pick(&ids).copied().unwrap_or(NodeId(1))
            }
        };
        if let Some(cl) = self.clients.get_mut(c) {
            cl.current = None;
            cl.target = target;
        }
        let jitter = self.rng.range(0, 2_000);
        self.schedule(delay + jitter, Event::Client(c));
    }

    pub(crate) fn client_start(&mut self, c: usize) {
        let Some(cl) = self.clients.get(c) else {
            return;
        };
        if cl.current.is_some() {
            return;
        }
        if self
            .faults_ended_at
            .is_some_and(|end| self.now > end + QUIESCE_AFTER_US)
        {
            // Let the cluster converge: no new requests late in the
            // liveness phase.
            return;
        }
        let mut target = cl.target;
        let up = self
            .nodes
            .get(&target)
            .is_some_and(|n| n.raw.is_some() && !n.removed);
        if !up {
            let ids: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.raw.is_some() && !n.removed)
                .map(|(&id, _)| id)
                .collect();
            match self.rng.pick(&ids) {
                Some(&id) => target = id,
                None => {
                    self.client_next(c, 50_000, None);
                    return;
                }
            }
        }
        let req = self.workload.next_request(&mut self.rng);
        let op = self.history.len() as u64 + 1;
        let (input, kind) = match &req {
            Request::Write { input, .. } => (input.clone(), Kind::Write),
            Request::Read { input, query } => {
                self.read_queries.insert(op, query.clone());
                (input.clone(), Kind::Read)
            }
        };
        self.history.push(Operation {
            client: c as u64,
            input,
            call: self.now,
            output: None,
            ret: u64::MAX,
        });
        let lease = self.rng.chance(0.5);
        let Some(raw) = self.nodes.get_mut(&target).and_then(|n| n.raw.as_mut()) else {
            return;
        };
        let res = match req {
            Request::Write { command, .. } => {
                let mut data = op.to_le_bytes().to_vec();
                data.extend_from_slice(&command);
                raw.propose(data).map(Some)
            }
            Request::Read { .. } => {
                let policy = if lease {
                    ReadPolicy::Lease
                } else {
                    ReadPolicy::ReadIndex
                };
                raw.read_index(ReadId(op), policy).map(|()| None)
            }
        };
        match res {
            Ok(index) => {
                if let (Some(index), Some(n)) = (index, self.nodes.get_mut(&target)) {
                    n.proposals.insert(index, op);
                }
                if let Some(cl) = self.clients.get_mut(c) {
                    cl.current = Some(InFlight {
                        op,
                        node: target,
                        kind,
                    });
                    cl.target = target;
                }
                self.schedule(CLIENT_TIMEOUT_US, Event::ClientTimeout(c, op));
                self.log(|| format!("client {c} op {op} {kind:?} -> n{target}"));
                self.drain(target);
            }
            Err(e) => {
                // Refused before anything was appended: it never happens.
                self.failed_ops.insert(Self::hist_index(op));
                let hint = match e {
                    Error::NotLeader { leader } => leader,
                    _ => None,
                };
                self.client_next(c, 5_000, hint);
            }
        }
    }

    pub(crate) fn client_timeout(&mut self, c: usize, op: u64) {
        let Some(cl) = self.clients.get(c) else {
            return;
        };
        let Some(f) = cl.current.filter(|f| f.op == op) else {
            return;
        };
        // A write's outcome is now unknown (it stays in the history with no
        // answer); a read that got no answer had no effect.
        if f.kind == Kind::Read {
            self.failed_ops.insert(Self::hist_index(op));
        }
        self.log(|| format!("client {c} op {op} timed out"));
        self.client_next(c, 0, None);
    }

    /// A proposal of node-local op `mine` reached the state machine at
    /// `index`; `same` tells whether the entry there is that op.
    pub(crate) fn write_applied(&mut self, mine: u64, same: bool, index: LogIndex, resp: Vec<u8>) {
        let i = Self::hist_index(mine);
        let Some(c) = self.client_of(mine) else {
            self.settle_abandoned_write(i, same, resp);
            return;
        };
        if same {
            let out = self.workload.output(&self.history[i].input, &resp);
            self.history[i].output = Some(out);
            self.history[i].ret = self.now;
            self.acked_writes.push((index, mine));
            if self.faults_ended_at.is_some() {
                self.writes_after_faults += 1;
            }
            self.log(|| format!("client {c} op {mine} ok at index {index}"));
            let target = self.clients[c].current.map(|f| f.node);
            self.client_next(c, 0, target);
        } else {
            // Another entry took the index: this proposal is gone for good.
            self.failed_ops.insert(i);
            self.log(|| format!("client {c} op {mine} lost its index {index}"));
            self.client_next(c, 1_000, None);
        }
    }

    /// A write its client gave up on (timed out, or redirected) has met
    /// its fate: it took effect by now, or never will. Recording that keeps
    /// the history's unknown writes few, which the linearizability search
    /// pays for dearly (each may fall anywhere after its call).
    fn settle_abandoned_write(&mut self, i: usize, same: bool, resp: Vec<u8>) {
        let Some(op) = self.history.get(i) else {
            return;
        };
        if op.output.is_some() || self.failed_ops.contains(&i) {
            return;
        }
        if same {
            // Applied here now, so committed no later than now.
            let out = self.workload.output(&op.input, &resp);
            self.history[i].output = Some(out);
            self.history[i].ret = self.now;
        } else {
            self.failed_ops.insert(i);
        }
    }

    /// Node `id` may now answer read `op` from its state machine.
    pub(crate) fn read_answered(&mut self, id: NodeId, op: u64) {
        let Some(c) = self.client_of(op) else {
            return;
        };
        let i = Self::hist_index(op);
        let Some(node) = self.nodes.get(&id) else {
            return;
        };
        let query = self.read_queries.remove(&op).unwrap_or_default();
        let answer = node.sm.query(&query);
        let out = self.workload.output(&self.history[i].input, &answer);
        self.history[i].output = Some(out);
        self.history[i].ret = self.now;
        self.log(|| format!("client {c} op {op} read ok on n{id}"));
        self.client_next(c, 0, Some(id));
    }

    pub(crate) fn read_failed(&mut self, op: u64, e: &Error) {
        let Some(c) = self.client_of(op) else {
            return;
        };
        self.failed_ops.insert(Self::hist_index(op));
        let hint = match e {
            Error::NotLeader { leader } => *leader,
            _ => None,
        };
        self.log(|| format!("client {c} op {op} read failed: {e}"));
        self.client_next(c, 2_000, hint);
    }

    /// The node client `c` waits on and since when, if it waits.
    pub(crate) fn client_waiting_on(&self, c: usize) -> Option<(NodeId, u64)> {
        let f = self.clients.get(c)?.current?;
        let since = self.history.get(Self::hist_index(f.op))?.call;
        Some((f.node, since))
    }

    /// Client `c` gives up on what it waits for (as on a timeout: a write's
    /// outcome is unknown, a read had no effect) and turns to `target`.
    pub(crate) fn client_redirect(&mut self, c: usize, target: NodeId) {
        let Some(cl) = self.clients.get(c) else {
            return;
        };
        if let Some(f) = cl.current {
            if f.kind == Kind::Read {
                self.failed_ops.insert(Self::hist_index(f.op));
            }
            let op = f.op;
            self.log(|| format!("client {c} op {op} given up"));
        }
        self.log(|| format!("client {c} redirected to n{target}"));
        self.client_next(c, 0, Some(target));
    }

    /// Node `id` crashed: what its clients waited for is unknown (writes)
    /// or void (reads).
    pub(crate) fn clients_lost_node(&mut self, id: NodeId) {
        for c in 0..self.clients.len() {
            let Some(f) = self.clients[c].current.filter(|f| f.node == id) else {
                continue;
            };
            if f.kind == Kind::Read {
                self.failed_ops.insert(Self::hist_index(f.op));
            }
            self.client_next(c, 10_000, None);
        }
    }
}
