//! The client's errors: etcd's server errors by kind (matched on etcd's
//! exact texts, as etcd's own client does), and the client's own.

use std::time::Duration;

use tonic::{Code, Status};

/// What went wrong with a request.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error (etcd's text, kept as sent).
    #[error("{message}")]
    Server {
        /// Which of etcd's errors it is, if it is one of them.
        kind: ErrorKind,
        /// The gRPC status code.
        code: Code,
        /// The server's text.
        message: String,
    },
    /// A write may or may not have been applied: the request was sent,
    /// and then the connection failed or the time ran out before an
    /// answer came. It is not retried (doing it twice could apply it
    /// twice); read the state to learn what happened.
    #[error("the outcome of the write is unknown ({cause}); read the key to find out")]
    Unknown {
        /// What failed after the request was sent.
        cause: String,
    },
    /// No member answered within the deadline.
    #[error("no member answered within {after:?} (last: {endpoint}: {cause})")]
    Unavailable {
        /// The endpoint tried last.
        endpoint: String,
        /// What it failed with.
        cause: String,
        /// How long the client kept trying.
        after: Duration,
    },
    /// A watch could not resume: the revision it needed was compacted.
    #[error(
        "etcdserver: mvcc: required revision has been compacted (the oldest revision left is {compact_revision})"
    )]
    WatchCompacted {
        /// The revision the store was compacted at.
        compact_revision: i64,
    },
    /// The client was given something it cannot use (an endpoint that is
    /// not a URL, an empty endpoint list).
    #[error("{0}")]
    InvalidArgument(String),
    /// A local file could not be read or written (snapshot downloads).
    #[error("{0}")]
    Io(String),
}

/// etcd's server errors (`api/v3rpc/rpctypes`), told apart by their text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// "etcdserver: key is not provided"
    EmptyKey,
    /// "etcdserver: key not found"
    KeyNotFound,
    /// "etcdserver: value is provided"
    ValueProvided,
    /// "etcdserver: lease is provided"
    LeaseProvided,
    /// "etcdserver: ttl is 0"
    TtlZero,
    /// "etcdserver: too many operations in txn request"
    TooManyOps,
    /// "etcdserver: duplicate key given in txn request"
    DuplicateKey,
    /// "etcdserver: mvcc: required revision has been compacted"
    Compacted,
    /// "etcdserver: mvcc: required revision is a future revision"
    FutureRevision,
    /// "etcdserver: mvcc: database space exceeded"
    NoSpace,
    /// "etcdserver: requested lease not found"
    LeaseNotFound,
    /// "etcdserver: lease already exists"
    LeaseExists,
    /// "etcdserver: too large lease TTL"
    LeaseTtlTooLarge,
    /// "etcdserver: member ID already exist"
    MemberExists,
    /// "etcdserver: Peer URLs already exists"
    PeerUrlExists,
    /// "etcdserver: re-configuration failed due to not enough started members"
    MemberNotEnoughStarted,
    /// "etcdserver: given member URLs are invalid"
    MemberBadUrls,
    /// "etcdserver: member not found"
    MemberNotFound,
    /// "etcdserver: can only promote a learner member"
    MemberNotLearner,
    /// "etcdserver: can only promote a learner member which is in sync with leader"
    LearnerNotReady,
    /// "etcdserver: too many learner members in cluster"
    TooManyLearners,
    /// "etcdserver: request is too large"
    RequestTooLarge,
    /// "etcdserver: too many requests"
    TooManyRequests,
    /// "etcdserver: permission denied"
    PermissionDenied,
    /// "etcdserver: invalid auth token"
    InvalidAuthToken,
    /// "etcdserver: user name is empty" (auth is on and the request named
    /// no user)
    UserEmpty,
    /// "etcdserver: authentication failed, invalid user ID or password"
    AuthFailed,
    /// "etcdserver: revision of auth store is old" (the client
    /// authenticates again and retries)
    AuthOldRevision,
    /// "etcdserver: authentication is not enabled"
    AuthNotEnabled,
    /// "etcdserver: no leader"
    NoLeader,
    /// "etcdserver: not leader"
    NotLeader,
    /// "etcdserver: leader changed"
    LeaderChanged,
    /// "etcdserver: not capable"
    NotCapable,
    /// "etcdserver: server stopped"
    Stopped,
    /// "etcdserver: request timed out" (and its variants)
    Timeout,
    /// "etcdserver: unhealthy cluster"
    Unhealthy,
    /// "etcdserver: corrupt cluster"
    Corrupt,
    /// "etcdserver: rpc not supported for learner"
    NotSupportedForLearner,
    /// "etcdserver: bad leader transferee"
    BadLeaderTransferee,
    /// Any other error.
    Other,
}

/// etcd's texts and the kinds they name.
const KINDS: &[(&str, ErrorKind)] = &[
    ("etcdserver: key is not provided", ErrorKind::EmptyKey),
    ("etcdserver: key not found", ErrorKind::KeyNotFound),
    ("etcdserver: value is provided", ErrorKind::ValueProvided),
    ("etcdserver: lease is provided", ErrorKind::LeaseProvided),
    ("etcdserver: ttl is 0", ErrorKind::TtlZero),
    (
        "etcdserver: too many operations in txn request",
        ErrorKind::TooManyOps,
    ),
    (
        "etcdserver: duplicate key given in txn request",
        ErrorKind::DuplicateKey,
    ),
    (
        "etcdserver: mvcc: required revision has been compacted",
        ErrorKind::Compacted,
    ),
    (
        "etcdserver: mvcc: required revision is a future revision",
        ErrorKind::FutureRevision,
    ),
    (
        "etcdserver: mvcc: database space exceeded",
        ErrorKind::NoSpace,
    ),
    (
        "etcdserver: requested lease not found",
        ErrorKind::LeaseNotFound,
    ),
    ("etcdserver: lease already exists", ErrorKind::LeaseExists),
    (
        "etcdserver: too large lease TTL",
        ErrorKind::LeaseTtlTooLarge,
    ),
    (
        "etcdserver: member ID already exist",
        ErrorKind::MemberExists,
    ),
    (
        "etcdserver: Peer URLs already exists",
        ErrorKind::PeerUrlExists,
    ),
    (
        "etcdserver: re-configuration failed due to not enough started members",
        ErrorKind::MemberNotEnoughStarted,
    ),
    (
        "etcdserver: given member URLs are invalid",
        ErrorKind::MemberBadUrls,
    ),
    ("etcdserver: member not found", ErrorKind::MemberNotFound),
    (
        "etcdserver: can only promote a learner member",
        ErrorKind::MemberNotLearner,
    ),
    (
        "etcdserver: can only promote a learner member which is in sync with leader",
        ErrorKind::LearnerNotReady,
    ),
    (
        "etcdserver: too many learner members in cluster",
        ErrorKind::TooManyLearners,
    ),
    (
        "etcdserver: request is too large",
        ErrorKind::RequestTooLarge,
    ),
    ("etcdserver: too many requests", ErrorKind::TooManyRequests),
    ("etcdserver: permission denied", ErrorKind::PermissionDenied),
    (
        "etcdserver: invalid auth token",
        ErrorKind::InvalidAuthToken,
    ),
    ("etcdserver: user name is empty", ErrorKind::UserEmpty),
    (
        "etcdserver: authentication failed, invalid user ID or password",
        ErrorKind::AuthFailed,
    ),
    (
        "etcdserver: revision of auth store is old",
        ErrorKind::AuthOldRevision,
    ),
    (
        "etcdserver: authentication is not enabled",
        ErrorKind::AuthNotEnabled,
    ),
    ("etcdserver: no leader", ErrorKind::NoLeader),
    ("etcdserver: not leader", ErrorKind::NotLeader),
    ("etcdserver: leader changed", ErrorKind::LeaderChanged),
    ("etcdserver: not capable", ErrorKind::NotCapable),
    ("etcdserver: server stopped", ErrorKind::Stopped),
    ("etcdserver: request timed out", ErrorKind::Timeout),
    (
        "etcdserver: request timed out, possibly due to previous leader failure",
        ErrorKind::Timeout,
    ),
    (
        "etcdserver: request timed out, possibly due to connection lost",
        ErrorKind::Timeout,
    ),
    ("etcdserver: unhealthy cluster", ErrorKind::Unhealthy),
    ("etcdserver: corrupt cluster", ErrorKind::Corrupt),
    (
        "etcdserver: rpc not supported for learner",
        ErrorKind::NotSupportedForLearner,
    ),
    (
        "etcdserver: bad leader transferee",
        ErrorKind::BadLeaderTransferee,
    ),
];

impl ErrorKind {
    /// The kind etcd's text `message` names (`Other` if none).
    pub fn of(message: &str) -> ErrorKind {
        KINDS
            .iter()
            .find(|(text, _)| *text == message)
            .map_or(ErrorKind::Other, |(_, kind)| *kind)
    }
}

impl Error {
    /// The kind of server error, if the server answered with one.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Server { kind, .. } => Some(*kind),
            Error::WatchCompacted { .. } => Some(ErrorKind::Compacted),
            _ => None,
        }
    }

    /// Whether a write that failed with this error may have been applied.
    pub fn is_unknown_outcome(&self) -> bool {
        matches!(self, Error::Unknown { .. })
    }

    /// The error for a server's answer.
    pub(crate) fn from_status(status: &Status) -> Error {
        Error::Server {
            kind: ErrorKind::of(status.message()),
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// What a failed attempt tells the retry loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request was refused before anything was done (no leader, too
    /// many requests, never sent): any request may be sent again.
    NotApplied,
    /// The request may have been carried out (the connection broke after
    /// it was sent, a timeout): only reads may be sent again.
    Transient,
    /// The answer is final (bad request, compacted revision, ...).
    Final,
}

impl Failure {
    /// How a failed attempt with `status` is treated.
    pub(crate) fn of(status: &Status) -> Failure {
        match ErrorKind::of(status.message()) {
            ErrorKind::NoLeader
            | ErrorKind::NotLeader
            | ErrorKind::TooManyRequests
            | ErrorKind::NotCapable
            | ErrorKind::NotSupportedForLearner => return Failure::NotApplied,
            ErrorKind::LeaderChanged
            | ErrorKind::Stopped
            | ErrorKind::Timeout
            | ErrorKind::Unhealthy => return Failure::Transient,
            _ => {}
        }
        if never_sent(status) {
            return Failure::NotApplied;
        }
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
                if !status.message().starts_with("etcdserver:") =>
            {
                Failure::Transient
            }
            _ => Failure::Final,
        }
    }
}

/// Whether the request surely never reached a server: the connection
/// could not be made.
fn never_sent(status: &Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            )
        {
            return true;
        }
        let text = e.to_string();
        if text.contains("tcp connect error") || text.contains("dns error") {
            return true;
        }
        source = e.source();
    }
    let m = status.message();
    m.contains("tcp connect error") || m.contains("Connection refused")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcds_texts_name_their_kinds() {
        for (text, kind) in KINDS {
            assert_eq!(ErrorKind::of(text), *kind, "{text}");
        }
        assert_eq!(ErrorKind::of("etcdserver: something new"), ErrorKind::Other);
        let e = Error::from_status(&Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted",
        ));
        assert_eq!(e.kind(), Some(ErrorKind::Compacted));
        assert_eq!(
            e.to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    }

    #[test]
    fn only_refusals_make_a_write_safe_to_send_again() {
        let f = |s: Status| Failure::of(&s);
        assert_eq!(
            f(Status::unavailable("etcdserver: no leader")),
            Failure::NotApplied
        );
        assert_eq!(
            f(Status::resource_exhausted("etcdserver: too many requests")),
            Failure::NotApplied
        );
        assert_eq!(
            f(Status::unavailable("etcdserver: leader changed")),
            Failure::Transient
        );
        assert_eq!(
            f(Status::unavailable("etcdserver: request timed out")),
            Failure::Transient
        );
        assert_eq!(
            f(Status::unavailable("error reading a body")),
            Failure::Transient
        );
        assert_eq!(
            f(Status::resource_exhausted(
                "etcdserver: mvcc: database space exceeded"
            )),
            Failure::Final
        );
        assert_eq!(
            f(Status::invalid_argument("etcdserver: key is not provided")),
            Failure::Final
        );
    }
}
