//! The key-value store's requests, responses and errors (the shapes of
//! etcd's v3 KV API, so the server maps them one to one).

use std::cell::Cell;

use serde::{Deserialize, Deserializer, Serialize};

mod borrowed;
mod bytes;
mod v1;
mod v2;

pub(crate) use borrowed::{PutView, decode_put};

/// A key's current value and history counters, as etcd reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "bytes")]
    pub key: Vec<u8>,
    /// The value (empty for `keys_only` ranges).
    #[serde(with = "bytes")]
    pub value: Vec<u8>,
    /// The store revision that created the key (since its last deletion).
    pub create_revision: i64,
    /// The store revision of the key's last change.
    pub mod_revision: i64,
    /// How many times the key was written since it was created (1 after
    /// the first put).
    pub version: i64,
    /// The ID of the lease attached to the key (0: none).
    pub lease: i64,
}

/// Which keys a request covers, as in etcd: `range_end` empty means the
/// key alone; `[0]` means every key at or after `key`; anything else means
/// `key <= k < range_end` (empty if `range_end <= key`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyRange<'a> {
    /// One key.
    Single(&'a [u8]),
    /// Keys from the first, to the end (`None`) or before the second.
    Span(&'a [u8], Option<&'a [u8]>),
}

impl<'a> KeyRange<'a> {
    pub(crate) fn new(key: &'a [u8], range_end: &'a [u8]) -> KeyRange<'a> {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::Span(key, None),
            end => KeyRange::Span(key, Some(end)),
        }
    }

    /// Whether `k` is in the range.
    pub(crate) fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => k == key,
            KeyRange::Span(start, None) => start <= k,
            KeyRange::Span(start, Some(end)) => start <= k && k < end,
        }
    }
}

/// Reads keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The first key (or the only one).
    #[serde(with = "bytes")]
    pub key: Vec<u8>,
    /// See [`RangeRequest`]'s key rules: empty, `[0]`, or an exclusive end.
    #[serde(with = "bytes")]
    pub range_end: Vec<u8>,
    /// At most this many keys are returned (0: no limit); `count` still
    /// counts them all.
    pub limit: u64,
    /// Leave values out.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Read the keys as they were at this revision (0 or less: the
    /// current one). Below the compacted revision the read fails with
    /// [`KvError::Compacted`], above the current one with
    /// [`KvError::FutureRevision`].
    pub revision: i64,
}

/// The keys a range found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The keys, in order, at most `limit`.
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds in all.
    pub count: i64,
    /// Whether keys were left out by the limit.
    pub more: bool,
}

/// Sets a key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key (not empty).
    #[serde(with = "bytes")]
    pub key: Vec<u8>,
    /// The new value (empty if `ignore_value`).
    #[serde(with = "bytes")]
    pub value: Vec<u8>,
    /// Return the value it replaced.
    pub prev_kv: bool,
    /// Update the key using its current value: `value` must be empty, and
    /// the put fails ("key not found") if the key does not exist.
    pub ignore_value: bool,
    /// Update the key using its current lease: `lease` must be 0, and the
    /// put fails ("key not found") if the key does not exist.
    pub ignore_lease: bool,
    /// The ID of the lease to attach to the key; 0 for none. The store
    /// keeps it with the key; whether the lease exists is the server's to
    /// check.
    pub lease: i64,
}

/// Removes keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// The first key (or the only one).
    #[serde(with = "bytes")]
    pub key: Vec<u8>,
    /// As in [`RangeRequest`].
    #[serde(with = "bytes")]
    pub range_end: Vec<u8>,
    /// Return the removed keys.
    pub prev_kv: bool,
}

/// What a comparison looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version (0 if it does not exist).
    Version(i64),
    /// The key's create revision (0 if it does not exist).
    CreateRevision(i64),
    /// The key's mod revision (0 if it does not exist).
    ModRevision(i64),
    /// The key's value (a missing key fails the comparison).
    Value(#[serde(with = "bytes")] Vec<u8>),
    /// The ID of the key's lease (0 if it has none or does not exist).
    Lease(i64),
}

/// How the key's field is compared with the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// Field == target.
    Equal,
    /// Field > target.
    Greater,
    /// Field < target.
    Less,
    /// Field != target.
    NotEqual,
}

/// One condition of a transaction; over a range, every key must pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key (or first key).
    #[serde(with = "bytes")]
    pub key: Vec<u8>,
    /// As in [`RangeRequest`].
    #[serde(with = "bytes")]
    pub range_end: Vec<u8>,
    /// The field and the value to compare with.
    pub target: CompareTarget,
    /// The comparison.
    pub op: CompareOp,
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Read (sees the branch's earlier writes).
    Range(RangeRequest),
    /// Set a key.
    Put(PutRequest),
    /// Remove keys.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction, run as a part of this one at the same
    /// revision. As in etcd, its comparisons (like those of every
    /// transaction nested in the command) are decided on the store as it
    /// was before the command, not after the branch's earlier writes. At
    /// most [`MAX_TXN_DEPTH`] levels deep.
    Txn(#[serde(deserialize_with = "nested_txn")] TxnRequest),
}

/// How deep transactions may nest in one command: a command whose
/// transactions are nested deeper (a [`TxnOp::Txn`] inside a
/// [`TxnOp::Txn`] ... more than this many times) is refused when it is
/// decoded, before the recursion of decoding, checking, running or
/// dropping it could exhaust a thread's stack. etcd's gRPC server cannot
/// pass more than about 50 levels (its protobuf decoder's recursion limit
/// of 100 messages, two per level).
pub const MAX_TXN_DEPTH: usize = 64;

thread_local! {
    /// How many nested transactions are being decoded on this thread, and
    /// whether the command being decoded nests deeper than it may (postcard
    /// keeps no message of a decoding error, so [`KvCommand::decode`] looks
    /// here to say why).
    static DECODE_DEPTH: (Cell<usize>, Cell<bool>) = const { (Cell::new(0), Cell::new(false)) };
}

/// Decodes a [`TxnOp::Txn`], refusing nesting deeper than
/// [`MAX_TXN_DEPTH`].
fn nested_txn<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    struct Level;
    impl Drop for Level {
        fn drop(&mut self) {
            DECODE_DEPTH.with(|(depth, _)| depth.set(depth.get().saturating_sub(1)));
        }
    }
    let too_deep = DECODE_DEPTH.with(|(depth, too_deep)| {
        depth.set(depth.get() + 1);
        too_deep.set(too_deep.get() || depth.get() > MAX_TXN_DEPTH);
        too_deep.get()
    });
    let _level = Level;
    if too_deep {
        return Err(serde::de::Error::custom(TOO_DEEP));
    }
    T::deserialize(d)
}

const TOO_DEEP: &str = "transactions nested too deep";

/// Decodes the body of a command of today's format, or of an older one
/// whose types nest transactions.
fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, KvError> {
    DECODE_DEPTH.with(|(_, too_deep)| too_deep.set(false));
    dengine_runtime::typed::decode_body(body).map_err(|e| {
        KvError::InvalidRequest(if DECODE_DEPTH.with(|(_, too_deep)| too_deep.get()) {
            format!("key-value command: {TOO_DEEP} (more than {MAX_TXN_DEPTH} levels)")
        } else {
            format!("key-value command: {e}")
        })
    })
}

/// If every comparison holds, run `success`, else `failure`, atomically,
/// at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// The conditions.
    pub compare: Vec<Compare>,
    /// Run when all hold.
    pub success: Vec<TxnOp>,
    /// Run otherwise.
    pub failure: Vec<TxnOp>,
}

/// A write proposed to the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Set a key.
    Put(PutRequest),
    /// Remove keys.
    DeleteRange(DeleteRangeRequest),
    /// A conditional, atomic group of operations.
    Txn(TxnRequest),
    /// Forget the history before a revision.
    Compact(CompactRequest),
    /// Create a lease.
    LeaseGrant(LeaseGrantRequest),
    /// End a lease, deleting its keys (at one revision).
    LeaseRevoke(LeaseRevokeRequest),
    /// Renew a lease: its time to live starts again, on every member.
    LeaseKeepAlive(LeaseKeepAliveRequest),
    /// A member publishes its name and client URLs (as etcd's `publish`
    /// when a member starts).
    MemberAttrs(MemberAttrsRequest),
    /// Change a member's peer URLs.
    MemberUpdate(MemberUpdateRequest),
    /// Raise or clear an alarm.
    Alarm(crate::AlarmRequest),
    /// Change the auth store, or give a user a token.
    Auth(crate::AuthRequest),
    /// A client's command with its user, checked against the auth store
    /// when it is applied.
    Authorized(crate::AuthorizedCommand),
}

/// What a member publishes of itself when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttrsRequest {
    /// The member.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its peer URLs: recorded only if none are (a cluster made before the
    /// members' URLs were replicated).
    pub peer_urls: Vec<String>,
    /// Its client URLs.
    pub client_urls: Vec<String>,
}

/// Changes where a member's peers reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberUpdateRequest {
    /// The member.
    pub id: u64,
    /// Its new peer URLs (used by no other member).
    pub peer_urls: Vec<String>,
}

/// Creates a lease. Its time to live is counted by the members, outside
/// the store: the store only knows it exists, its granted TTL, and its
/// keys; the leader revokes it when it expires.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantRequest {
    /// The lease's ID (not 0: the server picks one before proposing).
    pub id: i64,
    /// Its time to live in seconds.
    pub ttl: i64,
}

/// Ends a lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeRequest {
    /// The lease's ID.
    pub id: i64,
}

/// Renews a lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKeepAliveRequest {
    /// The lease's ID.
    pub id: i64,
}

/// Forgets the history before `revision`: afterwards every key's value
/// is readable at any revision from `revision` on, and no earlier.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactRequest {
    /// The first revision that stays readable: at most the current
    /// revision, and above the revision of the last compaction.
    pub revision: i64,
}

/// The format version [`KvCommand::encode`] writes (the first byte of an
/// encoded command, see [`dengine_runtime::typed`]): 3, today's types
/// (with a range's `revision` and [`KvCommand::Compact`]).
/// [`KvCommand::decode`] also reads the versions before, through frozen
/// copies of the types of then, whose new fields take etcd's defaults:
/// version 2 (no range revision) and version 1 (also no `ignore_value`,
/// `ignore_lease`, lease, lease comparisons or nested transactions).
/// Entries of old versions stay in logs and must apply the same way
/// forever. A later change to the shape of a command adds version 4 the
/// same way, freezing today's types as version 3 (the fixtures in the
/// store's tests check that old bytes keep decoding as they did). A new
/// command or operation added as the last variant of its enum changes
/// nothing old bytes mean and needs no new version.
pub const COMMAND_VERSION: u8 = 3;

impl KvCommand {
    /// The bytes to propose: [`COMMAND_VERSION`], then the command.
    pub fn encode(&self) -> Vec<u8> {
        // A put (the common command) knows its size: its key and value and
        // a few bytes of lengths, flags and lease; others start at 64.
        let size_hint = match self {
            KvCommand::Put(p) => p.key.len() + p.value.len() + 24,
            _ => 64,
        };
        // Plain data of vectors, integers and enums always encodes.
        dengine_runtime::typed::encode_version_sized(COMMAND_VERSION, self, size_hint)
            .unwrap_or_default()
    }

    /// Decodes bytes made by [`KvCommand::encode`], of this format version
    /// or version 1; another format version (or bytes that are not a
    /// command) is an [`KvError::InvalidRequest`] naming what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<KvCommand, KvError> {
        use dengine_runtime::typed::split_version;
        let invalid = |e: dengine_runtime::typed::CommandError| {
            KvError::InvalidRequest(format!("key-value command: {e}"))
        };
        match split_version(bytes).map_err(invalid)? {
            (COMMAND_VERSION, body) => decode_body(body),
            (v2::VERSION, body) => decode_body::<v2::KvCommand>(body).map(KvCommand::from),
            (v1::VERSION, body) => dengine_runtime::typed::decode_body::<v1::KvCommand>(body)
                .map(KvCommand::from)
                .map_err(invalid),
            (version, _) => Err(KvError::InvalidRequest(format!(
                "key-value command of format version {version}, which this program does not \
                 read (it reads versions {} to {COMMAND_VERSION})",
                v1::VERSION
            ))),
        }
    }
}

/// What one operation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResponse {
    /// A range's result.
    Range(RangeResponse),
    /// A put's result.
    Put {
        /// The replaced key, if asked for and present.
        prev_kv: Option<KeyValue>,
    },
    /// A delete's result.
    DeleteRange {
        /// How many keys were removed.
        deleted: i64,
        /// The removed keys, if asked for.
        prev_kvs: Vec<KeyValue>,
    },
    /// A transaction's result.
    Txn {
        /// Whether every comparison held.
        succeeded: bool,
        /// The chosen branch's results, in order.
        responses: Vec<OpResponse>,
    },
    /// A compaction's result (the history before its revision is gone).
    Compact,
    /// A lease was granted.
    LeaseGrant {
        /// Its ID.
        id: i64,
        /// Its time to live in seconds.
        ttl: i64,
    },
    /// A lease was revoked, its keys deleted.
    LeaseRevoke,
    /// A lease was renewed (`ttl` 0: no such lease, as etcd answers).
    LeaseKeepAlive {
        /// Its ID.
        id: i64,
        /// Its granted time to live in seconds (0: not found).
        ttl: i64,
    },
    /// The members' list was changed.
    Member,
    /// The alarms an alarm command changed: (member, kind).
    Alarm {
        /// The alarm raised, or cleared (none if it was not raised).
        alarms: Vec<(u64, crate::AlarmKind)>,
    },
    /// The auth store's answer: its revision after the change.
    Auth {
        /// The auth revision.
        auth_revision: u64,
    },
}

/// The answer to a [`KvCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvResponse {
    /// The store's revision after the command.
    pub revision: i64,
    /// What the command did.
    pub op: OpResponse,
}

/// Why a key-value request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The request is malformed (refused the same way on every replica;
    /// nothing changed).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The store's data is unreadable or a write failed: the node stops.
    #[error("key-value storage: {0}")]
    Storage(String),
    /// The revision asked for was compacted away (etcd's
    /// `ErrCompacted`; nothing changed).
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for is after the current one (etcd's
    /// `ErrFutureRev`; nothing changed).
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// No lease has the ID (etcd's `ErrLeaseNotFound`; nothing changed).
    #[error("lease not found")]
    LeaseNotFound,
    /// A lease with the ID exists already (etcd's `ErrLeaseExists`;
    /// nothing changed).
    #[error("lease already exists")]
    LeaseExists,
    /// No member has the ID (etcd's `ErrIDNotFound`; nothing changed).
    #[error("member not found")]
    MemberNotFound,
    /// Another member uses one of the peer URLs (etcd's
    /// `ErrPeerURLexists`; nothing changed).
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    /// A `NOSPACE` alarm is raised: writes that grow the store are
    /// refused (etcd's `ErrNoSpace`; nothing changed).
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// A `CORRUPT` alarm is raised: a member's store differs from the
    /// others', and writes are refused (etcd's `ErrCorrupt`; nothing
    /// changed).
    #[error("corrupt cluster")]
    Corrupt,
    /// The auth store refused (etcd's auth errors; nothing changed).
    #[error("{0}")]
    Auth(#[from] crate::AuthError),
}
