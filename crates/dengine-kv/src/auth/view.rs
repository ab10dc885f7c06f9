//! The auth store as a member's services read it, and its simple tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use super::AuthState;

/// A simple token's user and when it lapses.
#[derive(Debug)]
struct Token {
    user: String,
    lapses: Instant,
}

/// How long a simple token lives unused when nothing else is said (etcd's
/// `--auth-token-ttl`, 300 seconds).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Tokens kept before expired ones are swept out.
const SWEEP_AT: usize = 1024;

struct Shared {
    state: RwLock<AuthState>,
    /// `state.enabled`, read without the lock (every request asks).
    enabled: AtomicBool,
    tokens: Mutex<HashMap<String, Token>>,
    token_ttl: RwLock<Duration>,
}

/// The auth store as the serving side of a member sees it: shared with
/// the store, which changes it as it applies; readable from any thread
/// without a trip through the apply thread.
#[derive(Clone)]
pub struct AuthView {
    shared: Arc<Shared>,
}

impl Default for AuthView {
    fn default() -> Self {
        AuthView {
            shared: Arc::new(Shared {
                state: RwLock::new(AuthState::default()),
                enabled: AtomicBool::new(false),
                tokens: Mutex::new(HashMap::new()),
                token_ttl: RwLock::new(DEFAULT_TOKEN_TTL),
            }),
        }
    }
}

impl std::fmt::Debug for AuthView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthView")
            .field("enabled", &self.enabled())
            .finish_non_exhaustive()
    }
}

impl AuthView {
    /// The state, to read.
    pub fn state(&self) -> RwLockReadGuard<'_, AuthState> {
        self.shared
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut AuthState) -> R) -> R {
        let mut state = self
            .shared
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let out = f(&mut state);
        self.shared.enabled.store(state.enabled, Ordering::Release);
        out
    }

    /// Whether auth is on.
    pub fn enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::Acquire)
    }

    /// How long simple tokens live unused.
    pub fn set_token_ttl(&self, ttl: Duration) {
        *self
            .shared
            .token_ttl
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = ttl;
    }

    fn token_ttl(&self) -> Duration {
        *self
            .shared
            .token_ttl
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, Token>> {
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The user of a simple token, which lives on for another TTL; `None`
    /// for an unknown or lapsed token.
    pub fn user_of_token(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let ttl = self.token_ttl();
        let mut tokens = self.tokens();
        let t = tokens.get_mut(token)?;
        if t.lapses <= now {
            tokens.remove(token);
            return None;
        }
        t.lapses = now + ttl;
        Some(t.user.clone())
    }

    pub(crate) fn assign_token(&self, token: &str, user: &str) {
        let now = Instant::now();
        let ttl = self.token_ttl();
        let mut tokens = self.tokens();
        if tokens.len() >= SWEEP_AT && tokens.len().is_power_of_two() {
            tokens.retain(|_, t| t.lapses > now);
        }
        tokens.insert(
            token.to_string(),
            Token {
                user: user.to_string(),
                lapses: now + ttl,
            },
        );
    }

    /// Forgets every token (auth turned off), or those of one user
    /// (deleted, or a new password).
    pub(crate) fn forget_tokens(&self, user: Option<&str>) {
        let mut tokens = self.tokens();
        match user {
            None => tokens.clear(),
            Some(u) => tokens.retain(|_, t| t.user != u),
        }
    }
}
