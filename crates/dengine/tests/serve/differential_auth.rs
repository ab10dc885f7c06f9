//! etcd as the oracle for auth: one seeded sequence of user, role and
//! permission calls, enabling and disabling auth, authentication, and
//! reads and writes made as one user or another (or as nobody), sent to
//! a fresh etcd member and a fresh dengine member; every answer must be
//! the same, error codes and texts included. Tokens differ by nature:
//! each side keeps its own, and an answer shows only whether one came.

use std::collections::HashMap;

use dengine_client::proto::authpb;
use dengine_client::proto::etcdserverpb as pb;
use pb::auth_client::AuthClient;
use pb::kv_client::KvClient;
use tonic::transport::Channel;

use crate::differential::{Answer, Differences, KEYS, Rng, connect, headed, header, seeds};
use crate::harness::Cluster;

/// Names that exist, will, or never do (the empty one).
const USERS: &[&str] = &["root", "alice", "bob", ""];
const ROLES: &[&str] = &["root", "r1", "r2", ""];
const PASSWORDS: &[&str] = &["pw", "other", ""];

/// One call of the sequence.
#[derive(Debug)]
enum Call {
    UserAdd(pb::AuthUserAddRequest),
    UserDelete(pb::AuthUserDeleteRequest),
    ChangePassword(pb::AuthUserChangePasswordRequest),
    GrantRole(pb::AuthUserGrantRoleRequest),
    RevokeRole(pb::AuthUserRevokeRoleRequest),
    UserGet(pb::AuthUserGetRequest),
    UserList,
    RoleAdd(pb::AuthRoleAddRequest),
    RoleDelete(pb::AuthRoleDeleteRequest),
    RoleGet(pb::AuthRoleGetRequest),
    RoleList,
    GrantPermission(pb::AuthRoleGrantPermissionRequest),
    RevokePermission(pb::AuthRoleRevokePermissionRequest),
    Enable,
    Disable,
    Authenticate(pb::AuthenticateRequest),
    Put(pb::PutRequest),
    Range(pb::RangeRequest),
    Delete(pb::DeleteRangeRequest),
}

/// A call and the user it is made as (with that user's last token on
/// each side, if it has one).
#[derive(Debug)]
struct Op {
    call: Call,
    as_user: Option<&'static str>,
}

struct Gen(Rng);

impl Gen {
    fn user(&mut self) -> String {
        self.0.pick(USERS).to_string()
    }

    fn role(&mut self) -> String {
        self.0.pick(ROLES).to_string()
    }

    fn password(&mut self) -> String {
        self.0.pick(PASSWORDS).to_string()
    }

    fn key(&mut self) -> Vec<u8> {
        self.0.pick(KEYS).to_vec()
    }

    /// No end, every key from the key on, its prefix, or another key.
    fn range_end(&mut self, key: &[u8]) -> Vec<u8> {
        match self.0.below(4) {
            0 => Vec::new(),
            1 => vec![0],
            2 => {
                let mut end = key.to_vec();
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                end
            }
            _ => self.key(),
        }
    }

    fn call(&mut self) -> Call {
        match self.0.below(100) {
            0..=9 => Call::UserAdd(pb::AuthUserAddRequest {
                name: self.user(),
                password: self.password(),
                options: Some(authpb::UserAddOptions {
                    no_password: self.0.chance(10),
                }),
                ..Default::default()
            }),
            10..=12 => Call::UserDelete(pb::AuthUserDeleteRequest { name: self.user() }),
            13..=15 => Call::ChangePassword(pb::AuthUserChangePasswordRequest {
                name: self.user(),
                password: self.password(),
                ..Default::default()
            }),
            16..=23 => Call::GrantRole(pb::AuthUserGrantRoleRequest {
                user: self.user(),
                role: self.role(),
            }),
            24..=26 => Call::RevokeRole(pb::AuthUserRevokeRoleRequest {
                name: self.user(),
                role: self.role(),
            }),
            27..=29 => Call::UserGet(pb::AuthUserGetRequest { name: self.user() }),
            30..=31 => Call::UserList,
            32..=39 => Call::RoleAdd(pb::AuthRoleAddRequest { name: self.role() }),
            40..=41 => Call::RoleDelete(pb::AuthRoleDeleteRequest { role: self.role() }),
            42..=44 => Call::RoleGet(pb::AuthRoleGetRequest { role: self.role() }),
            45..=46 => Call::RoleList,
            47..=54 => {
                let key = self.key();
                let mut range_end = self.range_end(&key);
                // No range that ends before it starts: etcd 3.5 refuses
                // one as "invalid auth management", as dengine does, where
                // the 3.4 this test runs took it.
                if range_end != [0] && range_end <= key {
                    range_end.clear();
                }
                Call::GrantPermission(pb::AuthRoleGrantPermissionRequest {
                    name: self.role(),
                    perm: Some(authpb::Permission {
                        perm_type: self.0.below(3) as i32,
                        range_end,
                        key,
                    }),
                })
            }
            55..=57 => {
                let key = self.key();
                Call::RevokePermission(pb::AuthRoleRevokePermissionRequest {
                    role: self.role(),
                    range_end: self.range_end(&key),
                    key,
                })
            }
            58..=61 => Call::Enable,
            62..=63 => Call::Disable,
            64..=71 => Call::Authenticate(pb::AuthenticateRequest {
                name: self.user(),
                password: self.password(),
            }),
            72..=83 => Call::Put(pb::PutRequest {
                key: self.key(),
                value: b"v".to_vec(),
                ..Default::default()
            }),
            84..=93 => {
                let key = self.key();
                Call::Range(pb::RangeRequest {
                    range_end: self.range_end(&key),
                    key,
                    ..Default::default()
                })
            }
            _ => {
                let key = self.key();
                Call::Delete(pb::DeleteRangeRequest {
                    range_end: self.range_end(&key),
                    key,
                    prev_kv: false,
                })
            }
        }
    }

    fn op(&mut self) -> Op {
        let call = self.call();
        let as_user = match self.0.below(5) {
            0 => None,
            1 | 2 => Some("root"),
            3 => Some("alice"),
            _ => Some("bob"),
        };
        Op { call, as_user }
    }
}

/// One system's clients and the tokens its users were given.
struct Side {
    auth: AuthClient<Channel>,
    kv: KvClient<Channel>,
    tokens: HashMap<String, String>,
}

impl Side {
    async fn connect(endpoint: String) -> Side {
        let channel = connect(endpoint).await;
        Side {
            auth: AuthClient::new(channel.clone()),
            kv: KvClient::new(channel),
            tokens: HashMap::new(),
        }
    }

    /// `msg` with the token of `as_user` on this side, if it has one.
    fn request<T>(&self, msg: T, as_user: Option<&str>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(token) = as_user.and_then(|u| self.tokens.get(u)) {
            r.metadata_mut()
                .insert("token", token.parse().expect("a token is ASCII"));
        }
        r
    }

    async fn send(&mut self, op: &Op) -> Answer {
        // The call on `$client`, its header's cluster and member taken out.
        macro_rules! call {
            ($client:ident . $method:ident ($msg:expr)) => {{
                let r = self.request($msg, op.as_user);
                headed(self.$client.$method(r).await, |r| &mut r.header)
            }};
        }
        match &op.call {
            Call::UserAdd(r) => call!(auth.user_add(r.clone())),
            Call::UserDelete(r) => call!(auth.user_delete(r.clone())),
            Call::ChangePassword(r) => call!(auth.user_change_password(r.clone())),
            Call::GrantRole(r) => call!(auth.user_grant_role(r.clone())),
            Call::RevokeRole(r) => call!(auth.user_revoke_role(r.clone())),
            Call::UserGet(r) => call!(auth.user_get(r.clone())),
            Call::UserList => call!(auth.user_list(pb::AuthUserListRequest {})),
            Call::RoleAdd(r) => call!(auth.role_add(r.clone())),
            Call::RoleDelete(r) => call!(auth.role_delete(r.clone())),
            Call::RoleGet(r) => call!(auth.role_get(r.clone())),
            Call::RoleList => call!(auth.role_list(pb::AuthRoleListRequest {})),
            Call::GrantPermission(r) => call!(auth.role_grant_permission(r.clone())),
            Call::RevokePermission(r) => call!(auth.role_revoke_permission(r.clone())),
            Call::Enable => call!(auth.auth_enable(pb::AuthEnableRequest {})),
            Call::Disable => call!(auth.auth_disable(pb::AuthDisableRequest {})),
            Call::Put(r) => call!(kv.put(r.clone())),
            Call::Range(r) => call!(kv.range(r.clone())),
            Call::Delete(r) => call!(kv.delete_range(r.clone())),
            Call::Authenticate(a) => {
                let r = self.request(a.clone(), op.as_user);
                match self.auth.authenticate(r).await {
                    Ok(r) => {
                        let mut r = r.into_inner();
                        header(&mut r.header);
                        if !r.token.is_empty() {
                            let token = std::mem::replace(&mut r.token, "<a token>".into());
                            self.tokens.insert(a.name.clone(), token);
                        }
                        Answer::Ok(format!("{r:?}"))
                    }
                    Err(s) => Answer::Err(s.code(), s.message().to_string()),
                }
            }
        }
    }
}

/// Two seeds (see [`seeds`](crate::differential::seeds)).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_sequence_of_auth_calls_gets_the_answers_etcd_gives() {
    for seed in seeds(2) {
        let mut etcd = Cluster::etcd(1);
        etcd.start_and_wait().await;
        let mut ours = Cluster::new(1);
        ours.start_and_wait().await;
        let mut e = Side::connect(etcd.members[0].endpoint()).await;
        let mut d = Side::connect(ours.members[0].endpoint()).await;
        let mut g = Gen(Rng::new(seed));
        let mut differ = Differences::default();
        for i in 0..250 {
            let op = g.op();
            let from_etcd = e.send(&op).await;
            let from_ours = d.send(&op).await;
            let request = || format!("seed {seed}, call {i}: {op:?}");
            if !differ.compare(request, &from_etcd, &from_ours) {
                break;
            }
        }
        differ.assert_none();
    }
}
