//! etcd's errors, with its gRPC codes and its exact texts: clients map an
//! error back to a typed one by its message (etcd's
//! `api/v3rpc/rpctypes/error.go`), so every byte matters.

use dengine_kv::{AuthError, KvError};
use dengine_runtime::Error;
use tonic::{Code, Status};

/// "etcdserver: key is not provided"
pub fn empty_key() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: key is not provided")
}

/// "etcdserver: key not found" (etcd's answer to an empty request op)
pub fn key_not_found() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: key not found")
}

/// "etcdserver: value is provided"
pub fn value_provided() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: value is provided")
}

/// "etcdserver: lease is provided"
pub fn lease_provided() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: lease is provided")
}

/// "etcdserver: too many operations in txn request"
pub fn too_many_ops() -> Status {
    Status::new(
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    )
}

/// "etcdserver: duplicate key given in txn request"
pub fn duplicate_key() -> Status {
    Status::new(
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    )
}

/// "etcdserver: invalid sort option"
pub fn invalid_sort_option() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: invalid sort option")
}

/// "etcdserver: mvcc: required revision has been compacted"
pub fn compacted() -> Status {
    Status::new(
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    )
}

/// "etcdserver: mvcc: required revision is a future revision"
pub fn future_revision() -> Status {
    Status::new(
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    )
}

/// "etcdserver: request is too large"
pub fn request_too_large() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: request is too large")
}

/// The error of a lease grant past [`super::Limits::max_leases`]
/// (dengine's own: etcd has no such limit).
pub const TOO_MANY_LEASES: &str = "etcdserver: too many leases";

/// [`TOO_MANY_LEASES`], as `ResourceExhausted`.
pub fn too_many_leases() -> Status {
    Status::new(Code::ResourceExhausted, TOO_MANY_LEASES)
}

/// "etcdserver: too many requests"
pub fn too_many_requests() -> Status {
    Status::new(Code::ResourceExhausted, "etcdserver: too many requests")
}

/// "etcdserver: no leader"
pub fn no_leader() -> Status {
    Status::new(Code::Unavailable, "etcdserver: no leader")
}

/// "etcdserver: leader changed"
pub fn leader_changed() -> Status {
    Status::new(Code::Unavailable, "etcdserver: leader changed")
}

/// "etcdserver: server stopped"
pub fn stopped() -> Status {
    Status::new(Code::Unavailable, "etcdserver: server stopped")
}

/// "etcdserver: request timed out"
pub fn timed_out() -> Status {
    Status::new(Code::Unavailable, "etcdserver: request timed out")
}

/// "etcdserver: request timed out, possibly due to connection lost"
pub fn timed_out_connection_lost() -> Status {
    Status::new(
        Code::Unavailable,
        "etcdserver: request timed out, possibly due to connection lost",
    )
}

/// A method of etcd's API this server does not serve yet.
pub fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!(
        "{method} is not implemented by dengine yet (see the README for the etcd API served)"
    ))
}

/// The etcd error for a runtime error ("no leader" when the node knows
/// none).
pub fn from_runtime(e: &Error) -> Status {
    match e {
        Error::NotLeader { leader: None } => no_leader(),
        Error::NotLeader { .. }
        | Error::Dropped(_)
        | Error::TransferInProgress
        | Error::TransferFailed(_) => leader_changed(),
        Error::Timeout => timed_out(),
        Error::Overloaded => too_many_requests(),
        Error::Invalid(why) => Status::invalid_argument(format!("etcdserver: {why}")),
        Error::Shutdown | Error::Fatal(_) | Error::Storage(_) => stopped(),
        Error::ConfChange(why) => {
            Status::failed_precondition(format!("etcdserver: membership change refused: {why}"))
        }
        other => Status::internal(format!("etcdserver: {other}")),
    }
}

/// The etcd error for a key-value store error.
pub fn from_kv(e: &KvError) -> Status {
    match e {
        KvError::InvalidRequest(why) => {
            Status::new(Code::InvalidArgument, format!("etcdserver: {why}"))
        }
        KvError::Storage(why) => Status::new(Code::Unavailable, format!("etcdserver: {why}")),
        KvError::Compacted => compacted(),
        KvError::LeaseNotFound => lease_not_found(),
        KvError::LeaseExists => Status::new(Code::FailedPrecondition, LEASE_EXISTS),
        KvError::FutureRevision => future_revision(),
        KvError::MemberNotFound => member_not_found(),
        KvError::PeerUrlExists => peer_url_exists(),
        KvError::NoSpace => no_space(),
        KvError::Corrupt => corrupt(),
        KvError::Auth(a) => from_auth(a),
        other => Status::internal(format!("etcdserver: {other}")),
    }
}

/// etcd's auth errors (`ErrGRPCUserEmpty` and the rest), with its codes:
/// "etcdserver: " and the error's text.
pub fn from_auth(e: &AuthError) -> Status {
    let code = match e {
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::PermissionNotGiven
        | AuthError::AuthFailed
        | AuthError::InvalidManagement
        | AuthError::OldRevision => Code::InvalidArgument,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidToken => Code::Unauthenticated,
        AuthError::UserNotFound
        | AuthError::UserExists
        | AuthError::RoleNotFound
        | AuthError::RoleExists
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::NotEnabled
        | AuthError::RootUserMissing
        | AuthError::RootRoleMissing => Code::FailedPrecondition,
    };
    Status::new(code, format!("etcdserver: {e}"))
}

/// What etcd answers to a password for a user added without one: its
/// auth store's own error, which etcd does not translate, so gRPC's
/// `Unknown` with the store's text.
pub fn no_password_user() -> Status {
    Status::new(
        Code::Unknown,
        "auth: authentication failed, password was given for no password user",
    )
}

/// etcd's `ErrGRPCLeaseExist`.
pub const LEASE_EXISTS: &str = "etcdserver: lease already exists";

/// "etcdserver: requested lease not found"
pub fn lease_not_found() -> Status {
    Status::new(Code::NotFound, "etcdserver: requested lease not found")
}

/// etcd's `ErrGRPCMemberNotFound` (also for a removed member).
pub fn member_not_found() -> Status {
    Status::new(Code::NotFound, "etcdserver: member not found")
}

/// etcd's `ErrGRPCPeerURLExist`.
pub fn peer_url_exists() -> Status {
    Status::new(
        Code::FailedPrecondition,
        "etcdserver: Peer URLs already exists",
    )
}

/// etcd's `ErrGRPCMemberBadURLs`.
pub fn member_bad_urls() -> Status {
    Status::new(
        Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    )
}

/// etcd's `ErrGRPCMemberNotLearner`.
pub fn member_not_learner() -> Status {
    Status::new(
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    )
}

/// etcd's `ErrGRPCLearnerNotReady`.
pub fn learner_not_ready() -> Status {
    Status::new(
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member which is in sync with leader",
    )
}

/// etcd's `ErrGRPCTooManyLearners`.
pub fn too_many_learners() -> Status {
    Status::new(
        Code::FailedPrecondition,
        "etcdserver: too many learner members in cluster",
    )
}

/// etcd's `ErrGRPCNoSpace`.
pub fn no_space() -> Status {
    Status::new(
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    )
}

/// etcd's `ErrGRPCCorrupt`: "etcdserver: corrupt cluster", while a
/// `CORRUPT` alarm is raised.
pub fn corrupt() -> Status {
    Status::new(Code::DataLoss, "etcdserver: corrupt cluster")
}

/// etcd's `ErrGRPCMemberNotEnoughStarted`.
pub fn not_enough_started() -> Status {
    Status::new(
        Code::FailedPrecondition,
        "etcdserver: re-configuration failed due to not enough started members",
    )
}

/// etcd's `ErrGRPCUnhealthy`.
pub fn unhealthy() -> Status {
    Status::new(Code::Unavailable, "etcdserver: unhealthy cluster")
}
