use super::*;
use crate::store::KvStateMachine;
use crate::types::*;
use dengine_runtime::{EntryId, LogIndex, StateMachine, Term};

fn perm(kind: PermKind, key: &str, end: &[u8]) -> Permission {
    Permission {
        kind,
        key: key.as_bytes().to_vec(),
        range_end: end.to_vec(),
    }
}

/// Root with the root role, alice with the role `app` holding `perms`,
/// auth on.
fn setup(perms: Vec<Permission>) -> Vec<AuthRequest> {
    let mut reqs = vec![
        AuthRequest::UserAdd {
            name: ROOT.into(),
            password_hash: "h".into(),
            no_password: false,
        },
        AuthRequest::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        },
        AuthRequest::UserAdd {
            name: "alice".into(),
            password_hash: "h".into(),
            no_password: false,
        },
        AuthRequest::RoleAdd { name: "app".into() },
        AuthRequest::UserGrantRole {
            user: "alice".into(),
            role: "app".into(),
        },
        AuthRequest::Enable,
    ];
    reqs.extend(
        perms
            .into_iter()
            .map(|permission| AuthRequest::RoleGrantPermission {
                role: "app".into(),
                permission,
            }),
    );
    reqs
}

fn state_with(perms: Vec<Permission>) -> AuthState {
    let mut s = AuthState::default();
    for req in setup(perms) {
        s.apply(&req).expect("setup");
    }
    s
}

#[test]
fn ranges_are_allowed_only_where_permissions_cover_them() {
    let s = state_with(vec![
        perm(PermKind::Read, "app/", b"app0"),
        perm(PermKind::ReadWrite, "app/w/", b"app/w0"),
        perm(PermKind::Write, "log", &[]),
        perm(PermKind::Read, "z", &[0]),
    ]);
    let ok = |need, k: &str, e: &[u8]| s.check_range("alice", need, k.as_bytes(), e).is_ok();
    assert!(ok(Need::Read, "app/x", &[]));
    assert!(ok(Need::Read, "app/", b"app0"), "the whole prefix");
    assert!(ok(Need::Read, "app/a", b"app/b"));
    assert!(!ok(Need::Read, "app/", &[0]), "past the prefix");
    assert!(!ok(Need::Write, "app/x", &[]), "read only");
    assert!(ok(Need::Write, "app/w/1", &[]));
    assert!(ok(Need::Read, "app/w/", b"app/w0"));
    assert!(ok(Need::Write, "log", &[]));
    assert!(!ok(Need::Read, "log", &[]), "write only");
    assert!(!ok(Need::Write, "log2", &[]), "a key, not a prefix");
    assert!(ok(Need::Read, "zebra", &[0]), "from z on");
    assert!(!ok(Need::Read, "y", b"zz"), "starts before the right");
    assert!(!ok(Need::Read, "other", &[]));
    // Two rights side by side cover the range across them.
    let s2 = state_with(vec![
        perm(PermKind::Read, "a", b"c"),
        perm(PermKind::Read, "c", b"e"),
    ]);
    assert!(s2.check_range("alice", Need::Read, b"b", b"d").is_ok());
    assert!(s2.check_range("alice", Need::Read, b"b", b"f").is_err());
    // Root may do anything; strangers and the nameless nothing.
    assert!(s.check_range(ROOT, Need::Write, b"\0", &[0]).is_ok());
    assert_eq!(
        s.check_range("mallory", Need::Read, b"a", &[]),
        Err(AuthError::PermissionDenied)
    );
    assert_eq!(
        s.check_range("", Need::Read, b"a", &[]),
        Err(AuthError::UserEmpty)
    );
}

#[test]
fn the_auth_store_keeps_etcds_rules() {
    let mut s = AuthState::default();
    assert_eq!(
        s.apply(&AuthRequest::Enable),
        Err(AuthError::RootUserMissing)
    );
    let add = |name: &str| AuthRequest::UserAdd {
        name: name.into(),
        password_hash: "h".into(),
        no_password: false,
    };
    s.apply(&add(ROOT)).expect("root");
    assert_eq!(s.apply(&add(ROOT)), Err(AuthError::UserExists));
    assert_eq!(s.apply(&add("")), Err(AuthError::UserEmpty));
    assert_eq!(
        s.apply(&AuthRequest::Enable),
        Err(AuthError::RootRoleMissing)
    );
    // The root role needs no record to be granted.
    s.apply(&AuthRequest::UserGrantRole {
        user: ROOT.into(),
        role: ROOT.into(),
    })
    .expect("grant root");
    assert_eq!(
        s.apply(&AuthRequest::UserGrantRole {
            user: ROOT.into(),
            role: "nope".into()
        }),
        Err(AuthError::RoleNotFound)
    );
    let before = s.revision;
    assert_eq!(s.apply(&AuthRequest::Enable), Ok(true));
    assert_eq!(s.revision, before + 1);
    assert_eq!(s.apply(&AuthRequest::Enable), Ok(false), "already on");
    // Nobody may lock the cluster out while auth is on.
    assert_eq!(
        s.apply(&AuthRequest::UserDelete { name: ROOT.into() }),
        Err(AuthError::InvalidManagement)
    );
    assert_eq!(
        s.apply(&AuthRequest::UserRevokeRole {
            user: ROOT.into(),
            role: ROOT.into()
        }),
        Err(AuthError::InvalidManagement)
    );
    s.apply(&AuthRequest::RoleAdd { name: "r".into() })
        .expect("role");
    assert_eq!(
        s.apply(&AuthRequest::RoleAdd { name: "r".into() }),
        Err(AuthError::RoleExists)
    );
    assert_eq!(
        s.apply(&AuthRequest::RoleAdd { name: "".into() }),
        Err(AuthError::RoleEmpty)
    );
    let bad = |k: &str, e: &[u8]| AuthRequest::RoleGrantPermission {
        role: "r".into(),
        permission: perm(PermKind::Read, k, e),
    };
    assert_eq!(s.apply(&bad("", &[])), Err(AuthError::InvalidManagement));
    assert_eq!(s.apply(&bad("z", b"a")), Err(AuthError::InvalidManagement));
    s.apply(&bad("a", b"b")).expect("grant");
    // The same range again replaces the kind.
    s.apply(&AuthRequest::RoleGrantPermission {
        role: "r".into(),
        permission: perm(PermKind::ReadWrite, "a", b"b"),
    })
    .expect("grant again");
    assert_eq!(
        s.roles["r"].permissions,
        [perm(PermKind::ReadWrite, "a", b"b")]
    );
    let revoke = AuthRequest::RoleRevokePermission {
        role: "r".into(),
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
    };
    s.apply(&revoke).expect("revoke");
    assert_eq!(s.apply(&revoke), Err(AuthError::PermissionNotGranted));
    s.apply(&add("bob")).expect("bob");
    assert_eq!(
        s.apply(&AuthRequest::UserRevokeRole {
            user: "bob".into(),
            role: "r".into()
        }),
        Err(AuthError::RoleNotGranted)
    );
    s.apply(&AuthRequest::UserGrantRole {
        user: "bob".into(),
        role: "r".into(),
    })
    .expect("grant r");
    s.apply(&AuthRequest::RoleDelete { name: "r".into() })
        .expect("delete role");
    assert!(s.users["bob"].roles.is_empty(), "taken from its users");
    s.apply(&AuthRequest::Disable).expect("disable");
    s.apply(&AuthRequest::UserDelete { name: ROOT.into() })
        .expect("root may go when auth is off");
}

fn apply(kv: &mut KvStateMachine, index: u64, cmd: KvCommand) -> Result<KvResponse, KvError> {
    kv.apply(EntryId::new(Term(1), LogIndex(index)), &cmd.encode())
}

fn put(k: &str) -> KvCommand {
    KvCommand::Put(PutRequest {
        key: k.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..PutRequest::default()
    })
}

fn as_user(user: &str, revision: u64, cmd: KvCommand) -> KvCommand {
    KvCommand::Authorized(AuthorizedCommand {
        user: user.into(),
        revision,
        command: Box::new(cmd),
    })
}

/// A store with root, and alice who may write under `app/`, auth on.
fn store() -> (KvStateMachine, u64) {
    let mut kv = KvStateMachine::in_memory();
    let perms = || vec![perm(PermKind::ReadWrite, "app/", b"app0")];
    let mut i = 0;
    // The same changes, through commands (root's once auth is on).
    for req in setup(perms()) {
        i += 1;
        let cmd = if kv.auth().enabled() {
            as_user(ROOT, kv.auth().state().revision, KvCommand::Auth(req))
        } else {
            KvCommand::Auth(req)
        };
        apply(&mut kv, i, cmd).expect("auth change");
    }
    assert_eq!(*kv.auth().state(), state_with(perms()));
    (kv, i)
}

#[test]
fn writes_are_checked_at_apply_with_the_auth_revision_they_saw() {
    let (mut kv, mut i) = store();
    let rev = kv.auth().state().revision;
    let mut next = || {
        i += 1;
        i
    };
    apply(&mut kv, next(), as_user("alice", rev, put("app/1"))).expect("her prefix");
    assert_eq!(
        apply(&mut kv, next(), as_user("alice", rev, put("other"))),
        Err(KvError::Auth(AuthError::PermissionDenied))
    );
    assert_eq!(
        apply(&mut kv, next(), put("app/2")),
        Err(KvError::Auth(AuthError::UserEmpty)),
        "a client's write without its user"
    );
    assert_eq!(
        apply(&mut kv, next(), as_user("alice", rev - 1, put("app/3"))),
        Err(KvError::Auth(AuthError::OldRevision))
    );
    // Auth management is root's.
    let add = KvCommand::Auth(AuthRequest::RoleAdd { name: "x".into() });
    assert_eq!(
        apply(&mut kv, next(), as_user("alice", rev, add.clone())),
        Err(KvError::Auth(AuthError::PermissionDenied))
    );
    apply(&mut kv, next(), as_user(ROOT, rev, add)).expect("root adds a role");
    assert_eq!(kv.auth().state().revision, rev + 1);
    // A txn needs read on its compares and ranges, write on its writes.
    let txn = |compare_key: &str| {
        KvCommand::Txn(TxnRequest {
            compare: vec![Compare {
                key: compare_key.as_bytes().to_vec(),
                range_end: Vec::new(),
                target: CompareTarget::Version(0),
                op: CompareOp::Equal,
            }],
            success: vec![TxnOp::Put(PutRequest {
                key: b"app/t".to_vec(),
                value: b"1".to_vec(),
                ..PutRequest::default()
            })],
            failure: Vec::new(),
        })
    };
    let rev = rev + 1;
    apply(&mut kv, next(), as_user("alice", rev, txn("app/c"))).expect("txn in her prefix");
    assert_eq!(
        apply(&mut kv, next(), as_user("alice", rev, txn("secret"))),
        Err(KvError::Auth(AuthError::PermissionDenied))
    );
    // Nothing refused was written.
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..RangeRequest::default()
    };
    let keys: Vec<Vec<u8>> = kv
        .range(&all)
        .expect("range")
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, [b"app/1".to_vec(), b"app/t".to_vec()]);
}

#[test]
fn tokens_are_given_to_known_users_and_forgotten_when_auth_goes_off() {
    let (mut kv, mut i) = store();
    let view = kv.auth();
    let token = |t: &str, u: &str| {
        KvCommand::Auth(AuthRequest::AssignToken {
            token: t.into(),
            user: u.into(),
        })
    };
    i += 1;
    apply(&mut kv, i, token("abc.1", "alice")).expect("token");
    assert_eq!(view.user_of_token("abc.1").as_deref(), Some("alice"));
    assert_eq!(view.user_of_token("abc.2"), None);
    i += 1;
    assert_eq!(
        apply(&mut kv, i, token("x.1", "nobody")),
        Err(KvError::Auth(AuthError::AuthFailed))
    );
    // A client may not hand out tokens.
    i += 1;
    let rev = view.state().revision;
    assert_eq!(
        apply(&mut kv, i, as_user(ROOT, rev, token("y.1", ROOT))),
        Err(KvError::Auth(AuthError::InvalidManagement))
    );
    i += 1;
    apply(
        &mut kv,
        i,
        as_user(ROOT, rev, KvCommand::Auth(AuthRequest::Disable)),
    )
    .expect("disable");
    assert_eq!(view.user_of_token("abc.1"), None);
    // With auth off, plain writes go through again.
    i += 1;
    apply(&mut kv, i, put("anything")).expect("put");
}

#[test]
fn tokens_lapse_after_their_ttl_unless_used() {
    let view = AuthView::default();
    view.set_token_ttl(Duration::from_millis(50));
    view.assign_token("t", "alice");
    std::thread::sleep(Duration::from_millis(30));
    assert!(view.user_of_token("t").is_some(), "used: lives on");
    std::thread::sleep(Duration::from_millis(30));
    assert!(view.user_of_token("t").is_some(), "used again");
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(view.user_of_token("t"), None, "lapsed");
}

#[test]
fn the_auth_store_survives_a_snapshot() {
    let (mut kv, i) = store();
    kv.flush(LogIndex(i)).expect("flush");
    let mut snap = Vec::new();
    kv.snapshot(&mut snap).expect("snapshot");
    let mut other = KvStateMachine::in_memory();
    other.restore(&mut snap.as_slice()).expect("restore");
    assert_eq!(*other.auth().state(), *kv.auth().state());
    assert!(other.auth().enabled());
}

#[test]
fn records_of_the_auth_store_round_trip_and_damage_is_named() {
    let (kv, _) = store();
    let state = kv.auth().state().clone();
    let record = encode_record(&state);
    assert_eq!(decode_record(&record), Ok(state));
    let mut damaged = record.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let e = decode_record(&damaged).expect_err("damaged");
    assert!(e.to_string().contains("auth record"), "{e}");
}

use std::time::Duration;
