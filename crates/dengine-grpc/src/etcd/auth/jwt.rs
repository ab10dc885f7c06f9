//! etcd's JWT auth tokens (`--auth-token jwt,pub-key=...,priv-key=...,
//! sign-method=...,ttl=...`): a signed token with the user, the auth
//! revision it was made at, and when it lapses. Any member holding the
//! public key checks it without asking the others, so `Authenticate`
//! needs no trip through the log; a token made before a change of the
//! auth store carries the old revision, and writes with it fail with
//! "revision of auth store is old" (clients authenticate again).

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The options of `--auth-token jwt,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtOptions {
    /// The public key (PEM) tokens are checked with.
    pub pub_key: PathBuf,
    /// The private key (PEM) tokens are signed with; without it this
    /// member checks tokens but gives none.
    pub priv_key: Option<PathBuf>,
    /// The algorithm: RS256/384/512, PS256/384/512, ES256/384.
    pub sign_method: String,
    /// How long a token lives (etcd's default, 5 minutes).
    pub ttl: Duration,
}

impl JwtOptions {
    /// Parses etcd's `jwt,pub-key=P,priv-key=K,sign-method=M,ttl=T`.
    pub fn parse(spec: &str) -> Result<JwtOptions, String> {
        let mut parts = spec.split(',');
        if parts.next() != Some("jwt") {
            return Err(format!("{spec:?} does not start with jwt"));
        }
        let (mut pub_key, mut priv_key, mut method, mut ttl) = (None, None, None, None);
        for part in parts {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=value"))?;
            match k {
                "pub-key" => pub_key = Some(PathBuf::from(v)),
                "priv-key" => priv_key = Some(PathBuf::from(v)),
                "sign-method" => method = Some(v.to_string()),
                "ttl" => {
                    ttl = Some(
                        super::super::compactor::parse_duration(v)
                            .filter(|d| !d.is_zero())
                            .ok_or_else(|| format!("ttl={v}: expected a duration such as 5m"))?,
                    )
                }
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        Ok(JwtOptions {
            pub_key: pub_key.ok_or("pub-key=FILE is needed")?,
            priv_key,
            sign_method: method.ok_or("sign-method=METHOD is needed")?,
            ttl: ttl.unwrap_or(Duration::from_secs(300)),
        })
    }
}

/// The claims of a token (etcd's names).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// Signs and checks tokens.
pub struct Jwt {
    algorithm: Algorithm,
    signing: Option<EncodingKey>,
    checking: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("algorithm", &self.algorithm)
            .field("signs", &self.signing.is_some())
            .finish_non_exhaustive()
    }
}

impl Jwt {
    /// Loads the keys of `options`; an error names the file or option.
    pub fn load(options: &JwtOptions) -> Result<Jwt, String> {
        let algorithm: Algorithm = options
            .sign_method
            .parse()
            .map_err(|_| format!("sign-method={}: not an algorithm", options.sign_method))?;
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let public = read(&options.pub_key)?;
        let bad = |p: &PathBuf, e: jsonwebtoken::errors::Error| format!("{}: {e}", p.display());
        let (checking, signing) = match algorithm {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => (
                DecodingKey::from_rsa_pem(&public).map_err(|e| bad(&options.pub_key, e))?,
                match &options.priv_key {
                    Some(p) => Some(EncodingKey::from_rsa_pem(&read(p)?).map_err(|e| bad(p, e))?),
                    None => None,
                },
            ),
            Algorithm::ES256 | Algorithm::ES384 => (
                DecodingKey::from_ec_pem(&public).map_err(|e| bad(&options.pub_key, e))?,
                match &options.priv_key {
                    Some(p) => Some(EncodingKey::from_ec_pem(&read(p)?).map_err(|e| bad(p, e))?),
                    None => None,
                },
            ),
            other => {
                return Err(format!(
                    "sign-method={other:?}: expected RS256/384/512, PS256/384/512 or ES256/384"
                ));
            }
        };
        let jwt = Jwt {
            algorithm,
            signing,
            checking,
            ttl: options.ttl,
        };
        // The two keys must be a pair: a token signed now checks now.
        if jwt.signing.is_some() {
            let probe = jwt.sign("probe", 0)?;
            if jwt.check(&probe).is_none() {
                return Err(format!(
                    "{} and {}: the keys are not a pair",
                    options.pub_key.display(),
                    options
                        .priv_key
                        .as_deref()
                        .unwrap_or(options.pub_key.as_path())
                        .display()
                ));
            }
        }
        Ok(jwt)
    }

    /// A token for `user` at auth revision `revision`.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let key = self
            .signing
            .as_ref()
            .ok_or("this member has no priv-key to sign tokens with")?;
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: jsonwebtoken::get_current_timestamp() + self.ttl.as_secs().max(1),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key).map_err(|e| e.to_string())
    }

    /// The user and auth revision of a valid, unexpired token.
    pub fn check(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<Claims>(token, &self.checking, &validation)
            .ok()
            .map(|t| (t.claims.username, t.claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let private = dir.join("jwt.key");
        let public = dir.join("jwt.pub");
        std::fs::write(&private, key.serialize_pem()).expect("write");
        std::fs::write(&public, key.public_key_pem()).expect("write");
        (public, private)
    }

    #[test]
    fn options_parse_as_etcds() {
        let o = JwtOptions::parse("jwt,pub-key=a.pub,priv-key=a.key,sign-method=ES256,ttl=10m")
            .expect("parse");
        assert_eq!(o.pub_key, PathBuf::from("a.pub"));
        assert_eq!(o.priv_key, Some(PathBuf::from("a.key")));
        assert_eq!(o.ttl, Duration::from_secs(600));
        assert!(JwtOptions::parse("jwt,sign-method=RS256").is_err());
        assert!(JwtOptions::parse("jwt,pub-key=a,sign-method=RS256,colour=red").is_err());
        assert!(JwtOptions::parse("simple").is_err());
    }

    #[test]
    fn tokens_check_only_with_their_key_and_until_they_lapse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (public, private) = keys(dir.path());
        let options = JwtOptions {
            pub_key: public,
            priv_key: Some(private),
            sign_method: "ES256".into(),
            ttl: Duration::from_secs(60),
        };
        let jwt = Jwt::load(&options).expect("load");
        let token = jwt.sign("alice", 7).expect("sign");
        assert_eq!(jwt.check(&token), Some(("alice".to_string(), 7)));
        let mut forged = token.clone();
        forged.pop();
        assert_eq!(jwt.check(&forged), None);
        assert_eq!(jwt.check("not.a.token"), None);
        // Another member's keys do not check it.
        let other_dir = tempfile::tempdir().expect("tempdir");
        let (other_pub, other_priv) = keys(other_dir.path());
        let other = Jwt::load(&JwtOptions {
            pub_key: other_pub,
            priv_key: Some(other_priv),
            ..options.clone()
        })
        .expect("load");
        assert_eq!(other.check(&token), None);
        // A lapsed token does not check.
        let lapsed = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &Claims {
                username: "alice".into(),
                revision: 7,
                exp: jsonwebtoken::get_current_timestamp() - 1,
            },
            jwt.signing.as_ref().expect("signing key"),
        )
        .expect("encode");
        assert_eq!(jwt.check(&lapsed), None);
        // Keys that are not a pair are refused at load.
        let mismatched = JwtOptions {
            pub_key: options.pub_key.clone(),
            priv_key: Some(other_dir.path().join("jwt.key")),
            ..options.clone()
        };
        assert!(
            Jwt::load(&mismatched)
                .expect_err("mismatch")
                .contains("not a pair")
        );
    }
}
