//! How a client connects, waits and retries.

use std::time::Duration;

/// Settings of a [`Client`](crate::Client). `ClientOptions::default()` fits
/// a local cluster; every field has a setter.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one attempt may take before it is given up (a write given
    /// up this way is reported `Unknown`). Default 5 s.
    pub request_timeout: Duration,
    /// How long a request is retried in all before its last error is
    /// returned. Default 10 s.
    pub deadline: Duration,
    /// How long connecting to a member may take. Default 2 s.
    pub connect_timeout: Duration,
    /// The first pause between attempts; it doubles per attempt up to
    /// `max_backoff`, each pause a random half to all of it. Default 50 ms.
    pub backoff: Duration,
    /// The longest pause between attempts. Default 1 s.
    pub max_backoff: Duration,
    /// Whether to add the client URLs of members the cluster lists
    /// (`MemberList`) to the endpoints given. Default on.
    pub discover_members: bool,
    /// The largest response accepted (a range of many large values).
    /// Default 64 MiB.
    pub max_response_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            discover_members: true,
            max_response_bytes: 64 << 20,
        }
    }
}

impl ClientOptions {
    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn with_request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Sets [`deadline`](Self::deadline).
    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets [`backoff`](Self::backoff) and [`max_backoff`](Self::max_backoff).
    pub fn with_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max;
        self
    }

    /// Sets [`discover_members`](Self::discover_members).
    pub fn with_discover_members(mut self, on: bool) -> Self {
        self.discover_members = on;
        self
    }
}
