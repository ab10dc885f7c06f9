//! The clients: registers (put, linearizable and serializable get,
//! compare-and-swap), a bank of accounts moved with txns, and a watcher on
//! every member. They use the `etcd-client` crate, a client nobody here
//! wrote, each connected to one member.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dengine_sim::SimRng;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions,
};

use crate::check::Event;
use crate::history::{History, Input, Op, Output, SerialRead};

/// Registers `r/0` .. `r/<REGISTERS - 1>`.
pub const REGISTERS: u64 = 6;
/// Accounts `b/0` .. `b/<ACCOUNTS - 1>`.
pub const ACCOUNTS: u64 = 5;
/// Each account's starting balance.
pub const BALANCE: u64 = 100;
/// How long a client waits for an answer before the outcome is unknown.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);

/// What the clients share: the history, the source of unique values, and
/// when to stop.
pub struct Shared {
    /// The recorded history.
    pub history: History,
    /// The next value a write uses (each once).
    pub next_value: AtomicU64,
    /// Set when the clients must stop.
    pub stop: AtomicBool,
    /// Register writes refused for want of space (left out of the
    /// history: they were not made).
    pub refused_for_space: AtomicU64,
}

/// A client of member `url`, connected lazily (a member that is down does
/// not stop it from being made).
pub async fn connect(url: &str) -> Option<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(OP_TIMEOUT);
    match tokio::time::timeout(OP_TIMEOUT, Client::connect([url], Some(options))).await {
        Ok(Ok(client)) => Some(client),
        _ => None,
    }
}

fn reg_key(key: u8) -> String {
    format!("r/{key}")
}

fn parse(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A register client: random operations on random registers until told to
/// stop. `id` names it in the history.
pub async fn registers(shared: Arc<Shared>, id: u64, member: usize, url: String, mut rng: SimRng) {
    let h = &shared.history;
    let mut client = None;
    // The last value this client saw in each register: what its
    // compare-and-swaps expect.
    let mut seen: Vec<Option<u64>> = vec![None; REGISTERS as usize];
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            client = connect(&url).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        let key = rng.below(REGISTERS) as u8;
        let roll = rng.below(100);
        let call = h.now();
        if roll < 15 {
            // A serializable get: only its revision is checked.
            let options = GetOptions::new().with_serializable();
            if let Ok(Ok(resp)) =
                tokio::time::timeout(OP_TIMEOUT, c.get(reg_key(key), Some(options))).await
                && let Some(header) = resp.header()
            {
                h.serial(SerialRead {
                    client: id,
                    member,
                    incarnation: h.incarnation(member),
                    revision: header.revision(),
                    at: h.now(),
                });
            }
            continue;
        }
        let (input, output) = if roll < 50 {
            let input = Input::Get { key };
            let output = match tokio::time::timeout(OP_TIMEOUT, c.get(reg_key(key), None)).await {
                Ok(Ok(resp)) => {
                    let value = resp.kvs().first().and_then(|kv| parse(kv.value()));
                    seen[key as usize] = value;
                    Some(Output::Value(value))
                }
                _ => None,
            };
            (input, output)
        } else if roll < 80 {
            let value = shared.next_value.fetch_add(1, Ordering::Relaxed);
            let input = Input::Put { key, value };
            let output = match tokio::time::timeout(
                OP_TIMEOUT,
                c.put(reg_key(key), value.to_string(), None),
            )
            .await
            {
                Ok(Ok(_)) => Some(Output::Ok),
                Ok(Err(e)) if refused_for_space(&e) => {
                    shared.refused_for_space.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                _ => None,
            };
            (input, output)
        } else {
            let to = shared.next_value.fetch_add(1, Ordering::Relaxed);
            let from = seen[key as usize];
            let compare = match from {
                Some(v) => Compare::value(reg_key(key), CompareOp::Equal, v.to_string()),
                None => Compare::create_revision(reg_key(key), CompareOp::Equal, 0),
            };
            let txn = Txn::new().when([compare]).and_then([TxnOp::put(
                reg_key(key),
                to.to_string(),
                None,
            )]);
            let output = match tokio::time::timeout(OP_TIMEOUT, c.txn(txn)).await {
                Ok(Ok(resp)) => {
                    if resp.succeeded() {
                        seen[key as usize] = Some(to);
                    }
                    Some(Output::Swapped(resp.succeeded()))
                }
                Ok(Err(e)) if refused_for_space(&e) => {
                    shared.refused_for_space.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                _ => None,
            };
            (Input::Cas { key, from, to }, output)
        };
        h.op(Op {
            client: id,
            member,
            input,
            call,
            ret: h.now(),
            output: output.clone(),
        });
        if output.is_none() {
            // The connection may be to a member that is gone: make it
            // anew, after a pause so a dead member is not hammered.
            client = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether a write was refused for want of space (a `NOSPACE` alarm): it
/// was not made, on any member (refused before it was proposed, or by
/// every member as it applied it), so it is left out of the history
/// rather than recorded as an unknown outcome.
fn refused_for_space(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.message() == "etcdserver: mvcc: database space exceeded")
}

/// Writes the accounts' starting balances (before any fault); the
/// revision they were written at.
pub async fn open_accounts(client: &mut Client) -> Result<i64, String> {
    let puts: Vec<TxnOp> = (0..ACCOUNTS)
        .map(|a| TxnOp::put(format!("b/{a}"), BALANCE.to_string(), None))
        .collect();
    let resp = client
        .txn(Txn::new().and_then(puts))
        .await
        .map_err(|e| format!("opening the accounts: {e}"))?;
    resp.header()
        .map(|h| h.revision())
        .ok_or_else(|| "opening the accounts: no header".to_string())
}

/// Reads every account at one revision and checks the total; the
/// accounts' (balance, mod revision), or `None` if the read failed.
async fn read_accounts(
    shared: &Shared,
    c: &mut Client,
    member: usize,
    serializable: bool,
    opened: i64,
) -> Option<Vec<(u64, i64)>> {
    let mut options = GetOptions::new().with_prefix();
    if serializable {
        options = options.with_serializable();
    }
    let resp = tokio::time::timeout(OP_TIMEOUT, c.get("b/", Some(options)))
        .await
        .ok()?
        .ok()?;
    let accounts: Vec<(u64, i64)> = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                parse(kv.value()).unwrap_or(u64::MAX / 16),
                kv.mod_revision(),
            )
        })
        .collect();
    let total: u64 = accounts.iter().map(|(b, _)| b).sum();
    let revision = resp.header().map_or(0, |h| h.revision());
    if serializable && revision < opened {
        // A member that has not applied the opening yet: a serializable
        // read may be that stale.
        return None;
    }
    if accounts.len() as u64 != ACCOUNTS || total != ACCOUNTS * BALANCE {
        shared.history.violation(format!(
            "bank: a {} read of n{} at revision {revision} has {} accounts holding {total} (expected {ACCOUNTS} holding {})",
            if serializable { "serializable" } else { "linearizable" },
            member + 1,
            accounts.len(),
            ACCOUNTS * BALANCE
        ));
        return None;
    }
    Some(accounts)
}

/// A bank client: reads every account, moves a random amount between two
/// with a txn that commits only if neither changed since; every read
/// checks that the total is what it was. `opened`: the revision the
/// accounts were written at.
pub async fn bank(
    shared: Arc<Shared>,
    member: usize,
    url: String,
    opened: i64,
    mut rng: SimRng,
) -> u64 {
    let mut client = None;
    let mut moved = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            client = connect(&url).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            continue;
        };
        let serializable = rng.chance(0.2);
        let Some(accounts) = read_accounts(&shared, c, member, serializable, opened).await else {
            client = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if serializable {
            continue;
        }
        let from = rng.below(ACCOUNTS) as usize;
        let to = (from + 1 + rng.below(ACCOUNTS - 1) as usize) % ACCOUNTS as usize;
        let amount = rng.below(accounts[from].0 + 1);
        let txn = Txn::new()
            .when([
                Compare::mod_revision(format!("b/{from}"), CompareOp::Equal, accounts[from].1),
                Compare::mod_revision(format!("b/{to}"), CompareOp::Equal, accounts[to].1),
            ])
            .and_then([
                TxnOp::put(
                    format!("b/{from}"),
                    (accounts[from].0 - amount).to_string(),
                    None,
                ),
                TxnOp::put(
                    format!("b/{to}"),
                    (accounts[to].0 + amount).to_string(),
                    None,
                ),
            ]);
        match tokio::time::timeout(OP_TIMEOUT, c.txn(txn)).await {
            Ok(Ok(resp)) if resp.succeeded() => moved += 1,
            Ok(Ok(_)) => {}
            _ => client = None,
        }
    }
    moved
}

/// What a watcher received: its events, and the revision it had reached.
#[derive(Default)]
pub struct Watched {
    /// Every event, in the order received.
    pub events: Vec<Event>,
    /// Times the stream was opened again after an error.
    pub resumes: u64,
}

/// A watcher of every key on one member, from revision `from`: when its
/// stream fails it opens a new one at the revision after the last event
/// it got (etcd's resumable watch). Runs until `stop_at` is set and the
/// watcher has reached that revision (or `give_up` is set).
pub async fn watcher(
    url: String,
    from: i64,
    stop_at: Arc<AtomicU64>,
    give_up: Arc<AtomicBool>,
) -> Watched {
    let mut got = Watched::default();
    let mut response = 0u64;
    let mut opened = false;
    loop {
        let next = got.events.last().map_or(from, |e| e.revision + 1);
        let done = |next: i64| {
            let target = stop_at.load(Ordering::Relaxed);
            give_up.load(Ordering::Relaxed) || (target > 0 && next > target as i64)
        };
        if done(next) {
            return got;
        }
        let Some(mut c) = connect(&url).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let options = WatchOptions::new()
            .with_all_keys()
            .with_start_revision(next);
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(OP_TIMEOUT, c.watch(vec![0u8], Some(options))).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if opened {
            got.resumes += 1;
        }
        opened = true;
        loop {
            // Wake up now and then to see whether the run is over.
            let message =
                match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                    Err(_) => {
                        let next = got.events.last().map_or(from, |e| e.revision + 1);
                        if done(next) {
                            return got;
                        }
                        continue;
                    }
                    Ok(Ok(Some(m))) => m,
                    Ok(_) => break,
                };
            if message.canceled() {
                break;
            }
            response += 1;
            for e in message.events() {
                let Some(kv) = e.kv() else { continue };
                got.events.push(Event {
                    revision: kv.mod_revision(),
                    key: kv.key().to_vec(),
                    delete: e.event_type() == EventType::Delete,
                    value: kv.value().to_vec(),
                    response,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
