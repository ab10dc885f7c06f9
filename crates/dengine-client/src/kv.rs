//! Keys and values: get, put, delete, transactions and compaction.

use dengine_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use dengine_proto::etcdserverpb::kv_client::KvClient;
use dengine_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use dengine_proto::etcdserverpb::request_op::Request as Op;
use dengine_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};

use crate::Client;
use crate::error::Error;
use crate::pool::{Kind, Route};

/// The end of the range holding every key that starts with `prefix`
/// (etcd's rule: the prefix with its last byte below 0xff incremented and
/// what follows dropped; `\0`, meaning "to the end", if every byte is 0xff
/// or the prefix is empty).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Which keys a range names, beside the key itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Span {
    #[default]
    Key,
    Prefix,
    FromKey,
    End(Vec<u8>),
}

impl Span {
    fn range_end(&self, key: &[u8]) -> Vec<u8> {
        match self {
            Span::Key => Vec::new(),
            Span::Prefix => prefix_end(key),
            Span::FromKey => vec![0],
            Span::End(end) => end.clone(),
        }
    }
}

/// Options of [`Client::get`].
#[derive(Clone, Debug, Default)]
pub struct GetOptions {
    span: Span,
    revision: i64,
    limit: i64,
    keys_only: bool,
    count_only: bool,
    serializable: bool,
    sort: Option<(SortTarget, SortOrder)>,
}

impl GetOptions {
    /// Options that read the key alone, linearizably, at the newest revision.
    pub fn new() -> Self {
        Self::default()
    }
    /// Every key starting with the key given.
    pub fn with_prefix(mut self) -> Self {
        self.span = Span::Prefix;
        self
    }
    /// Every key from the key given on.
    pub fn with_from_key(mut self) -> Self {
        self.span = Span::FromKey;
        self
    }
    /// The keys from the key given up to `end` (excluded).
    pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.span = Span::End(end.into());
        self
    }
    /// Reads at a past revision (0: the newest).
    pub fn with_revision(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }
    /// At most `limit` keys (0: no limit).
    pub fn with_limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }
    /// Keys without their values.
    pub fn with_keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }
    /// Only the number of keys.
    pub fn with_count_only(mut self) -> Self {
        self.count_only = true;
        self
    }
    /// Served by the member asked from what it has applied, without a
    /// round with the leader: faster, possibly a little stale.
    pub fn with_serializable(mut self) -> Self {
        self.serializable = true;
        self
    }
    /// Sorted by `target` in `order`.
    pub fn with_sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.sort = Some((target, order));
        self
    }

    fn request(&self, key: Vec<u8>) -> RangeRequest {
        let (sort_target, sort_order) = self.sort.map_or((0, 0), |(t, o)| (t as i32, o as i32));
        RangeRequest {
            range_end: self.span.range_end(&key),
            key,
            limit: self.limit,
            revision: self.revision,
            sort_order,
            sort_target,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        }
    }
}

/// Options of [`Client::put`].
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    lease: i64,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
}

impl PutOptions {
    /// A plain put.
    pub fn new() -> Self {
        Self::default()
    }
    /// Attaches the key to lease `id` (it is deleted when the lease ends).
    pub fn with_lease(mut self, id: i64) -> Self {
        self.lease = id;
        self
    }
    /// Returns the key's previous value.
    pub fn with_prev_key(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// Keeps the current value (the key must exist).
    pub fn with_ignore_value(mut self) -> Self {
        self.ignore_value = true;
        self
    }
    /// Keeps the current lease (the key must exist).
    pub fn with_ignore_lease(mut self) -> Self {
        self.ignore_lease = true;
        self
    }

    fn request(&self, key: Vec<u8>, value: Vec<u8>) -> PutRequest {
        PutRequest {
            key,
            value,
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

/// Options of [`Client::delete`].
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    span: Span,
    prev_kv: bool,
}

impl DeleteOptions {
    /// Deletes the key alone.
    pub fn new() -> Self {
        Self::default()
    }
    /// Every key starting with the key given.
    pub fn with_prefix(mut self) -> Self {
        self.span = Span::Prefix;
        self
    }
    /// Every key from the key given on.
    pub fn with_from_key(mut self) -> Self {
        self.span = Span::FromKey;
        self
    }
    /// The keys from the key given up to `end` (excluded).
    pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.span = Span::End(end.into());
        self
    }
    /// Returns the deleted keys with their values.
    pub fn with_prev_key(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    fn request(&self, key: Vec<u8>) -> DeleteRangeRequest {
        DeleteRangeRequest {
            range_end: self.span.range_end(&key),
            key,
            prev_kv: self.prev_kv,
        }
    }
}

/// How a [`Comparison`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// Equal to.
    Equal,
    /// Greater than.
    Greater,
    /// Less than.
    Less,
    /// Not equal to.
    NotEqual,
}

impl CompareOp {
    fn wire(self) -> i32 {
        match self {
            CompareOp::Equal => CompareResult::Equal as i32,
            CompareOp::Greater => CompareResult::Greater as i32,
            CompareOp::Less => CompareResult::Less as i32,
            CompareOp::NotEqual => CompareResult::NotEqual as i32,
        }
    }
}

/// One condition of a transaction, on a key (or, with
/// [`with_prefix`](Self::with_prefix), on every key of a prefix).
#[derive(Clone, Debug)]
pub struct Comparison(Compare);

impl Comparison {
    fn new(
        key: impl Into<Vec<u8>>,
        op: CompareOp,
        target: CompareTarget,
        value: TargetUnion,
    ) -> Self {
        Comparison(Compare {
            result: op.wire(),
            target: target as i32,
            key: key.into(),
            range_end: Vec::new(),
            target_union: Some(value),
        })
    }
    /// Compares the key's value.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::new(
            key,
            op,
            CompareTarget::Value,
            TargetUnion::Value(value.into()),
        )
    }
    /// Compares the key's version (0: the key does not exist).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self::new(
            key,
            op,
            CompareTarget::Version,
            TargetUnion::Version(version),
        )
    }
    /// Compares the revision the key was created at (0: does not exist).
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(
            key,
            op,
            CompareTarget::Create,
            TargetUnion::CreateRevision(revision),
        )
    }
    /// Compares the revision the key was last changed at.
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(
            key,
            op,
            CompareTarget::Mod,
            TargetUnion::ModRevision(revision),
        )
    }
    /// Compares the lease the key is attached to (0: none).
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Self {
        Self::new(key, op, CompareTarget::Lease, TargetUnion::Lease(lease))
    }
    /// Applies the comparison to every key starting with the key given.
    pub fn with_prefix(mut self) -> Self {
        self.0.range_end = prefix_end(&self.0.key);
        self
    }
}

/// One operation of a transaction.
#[derive(Clone, Debug)]
pub struct TxnOp(Op);

impl TxnOp {
    /// A put.
    pub fn put(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Self {
        TxnOp(Op::RequestPut(
            options
                .unwrap_or_default()
                .request(key.into(), value.into()),
        ))
    }
    /// A read.
    pub fn get(key: impl Into<Vec<u8>>, options: Option<GetOptions>) -> Self {
        TxnOp(Op::RequestRange(
            options.unwrap_or_default().request(key.into()),
        ))
    }
    /// A delete.
    pub fn delete(key: impl Into<Vec<u8>>, options: Option<DeleteOptions>) -> Self {
        TxnOp(Op::RequestDeleteRange(
            options.unwrap_or_default().request(key.into()),
        ))
    }
    /// A nested transaction.
    pub fn txn(txn: Txn) -> Self {
        TxnOp(Op::RequestTxn(txn.request))
    }

    fn writes(&self) -> bool {
        match &self.0 {
            Op::RequestRange(_) => false,
            Op::RequestTxn(t) => t.success.iter().chain(&t.failure).any(|op| {
                op.request
                    .as_ref()
                    .is_some_and(|r| TxnOp(r.clone()).writes())
            }),
            _ => true,
        }
    }
}

/// A transaction: if every comparison holds, the `and_then` operations,
/// else the `or_else` ones, all at one revision.
///
/// ```
/// use dengine_client::{CompareOp, Comparison, Txn, TxnOp};
/// // Moves "job" from "todo" to "doing" only if nobody took it first.
/// let txn = Txn::new()
///     .when([Comparison::value("job", CompareOp::Equal, "todo")])
///     .and_then([TxnOp::put("job", "doing", None)])
///     .or_else([TxnOp::get("job", None)]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Txn {
    request: TxnRequest,
    writes: bool,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }
    /// The comparisons (all must hold).
    pub fn when(mut self, comparisons: impl IntoIterator<Item = Comparison>) -> Self {
        self.request
            .compare
            .extend(comparisons.into_iter().map(|c| c.0));
        self
    }
    /// The operations done when every comparison holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        for op in ops {
            self.writes |= op.writes();
            self.request.success.push(RequestOp {
                request: Some(op.0),
            });
        }
        self
    }
    /// The operations done otherwise.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        for op in ops {
            self.writes |= op.writes();
            self.request.failure.push(RequestOp {
                request: Some(op.0),
            });
        }
        self
    }
}

/// The key-value service on `channel`, taking answers up to `max` bytes
/// (a range, or the previous values of a put or delete, can be large).
fn kv_client(channel: crate::pool::AuthChannel, max: usize) -> KvClient<crate::pool::AuthChannel> {
    KvClient::new(channel).max_decoding_message_size(max)
}

impl Client {
    /// Reads a key (or a range, see [`GetOptions`]). Linearizable reads go
    /// to the leader, serializable ones to any member; both are retried on
    /// another member when one fails.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// use dengine_client::GetOptions;
    /// let r = client.get("config/", Some(GetOptions::new().with_prefix())).await?;
    /// for kv in &r.kvs {
    ///     println!("{} = {}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<RangeResponse, Error> {
        let options = options.unwrap_or_default();
        let route = if options.serializable {
            Route::Any
        } else {
            Route::Leader
        };
        let request = options.request(key.into());
        let max = self.pool.options.max_response_bytes;
        self.pool
            .call(route, Kind::Read, |ch| {
                let request = request.clone();
                async move { kv_client(ch, max).range(request).await }
            })
            .await
    }

    /// Writes a value. A put that fails after it was sent comes back as
    /// [`Error::Unknown`] rather than being sent twice.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// let r = client.put("greeting", "hello", None).await?;
    /// println!("written at revision {}", r.header.map_or(0, |h| h.revision));
    /// # Ok(()) }
    /// ```
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse, Error> {
        let request = options
            .unwrap_or_default()
            .request(key.into(), value.into());
        let max = self.pool.options.max_response_bytes;
        self.pool
            .call(Route::Leader, Kind::Write, |ch| {
                let request = request.clone();
                async move { kv_client(ch, max).put(request).await }
            })
            .await
    }

    /// Deletes a key (or a range, see [`DeleteOptions`]).
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// use dengine_client::DeleteOptions;
    /// let r = client.delete("tmp/", Some(DeleteOptions::new().with_prefix())).await?;
    /// println!("{} keys deleted", r.deleted);
    /// # Ok(()) }
    /// ```
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteRangeResponse, Error> {
        let request = options.unwrap_or_default().request(key.into());
        let max = self.pool.options.max_response_bytes;
        self.pool
            .call(Route::Leader, Kind::Write, |ch| {
                let request = request.clone();
                async move { kv_client(ch, max).delete_range(request).await }
            })
            .await
    }

    /// Runs a transaction (see [`Txn`]). One that only reads is retried
    /// like a read; one that writes like a write.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// use dengine_client::{CompareOp, Comparison, Txn, TxnOp};
    /// let created = client
    ///     .txn(
    ///         Txn::new()
    ///             .when([Comparison::version("lock", CompareOp::Equal, 0)])
    ///             .and_then([TxnOp::put("lock", "me", None)]),
    ///     )
    ///     .await?
    ///     .succeeded;
    /// # Ok(()) }
    /// ```
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        let kind = if txn.writes { Kind::Write } else { Kind::Read };
        let request = txn.request;
        let max = self.pool.options.max_response_bytes;
        self.pool
            .call(Route::Leader, kind, |ch| {
                let request = request.clone();
                async move { kv_client(ch, max).txn(request).await }
            })
            .await
    }

    /// Drops the history before `revision` (reads and watches below it
    /// then fail with "required revision has been compacted"). With
    /// `physical`, returns once the space can be reclaimed.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// client.compact(1000, false).await?;
    /// # Ok(()) }
    /// ```
    pub async fn compact(
        &self,
        revision: i64,
        physical: bool,
    ) -> Result<CompactionResponse, Error> {
        let request = CompactionRequest { revision, physical };
        let max = self.pool.options.max_response_bytes;
        // Not repeated after it was sent: a second compaction at the same
        // revision fails ("compacted"), which would hide the first one.
        self.pool
            .call(Route::Leader, Kind::Write, |ch| async move {
                kv_client(ch, max).compact(request).await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_follow_etcds_rule() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn a_txn_that_only_reads_is_a_read() {
        let read = Txn::new().and_then([TxnOp::get("a", None)]);
        assert!(!read.writes);
        let nested =
            Txn::new().or_else([TxnOp::txn(Txn::new().and_then([TxnOp::delete("a", None)]))]);
        assert!(nested.writes);
    }
}
