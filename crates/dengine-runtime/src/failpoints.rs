//! Injected faults for tests of the real binary (feature `failpoints`):
//! read once from the `FAILPOINTS` environment variable, inert without
//! it. `FAILPOINTS=fsync-error-after=N` makes every log sync after the
//! first N fail as an fsync returning EIO would, so that a test can see
//! the node stop instead of going on as if the write were durable.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;

struct Points {
    fsync_error_after: Option<u64>,
}

fn points() -> &'static Points {
    static POINTS: OnceLock<Points> = OnceLock::new();
    POINTS.get_or_init(|| {
        let spec = std::env::var("FAILPOINTS").unwrap_or_default();
        let mut points = Points {
            fsync_error_after: None,
        };
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("fsync-error-after", n)) => points.fsync_error_after = n.parse().ok(),
                _ => tracing::warn!(failpoint = part, "unknown failpoint ignored"),
            }
        }
        if spec.is_empty() {
            points
        } else {
            tracing::warn!(failpoints = %spec, "failpoints armed");
            points
        }
    })
}

/// Before a log sync: the injected error, once the sync count passes
/// `fsync-error-after`.
pub(crate) fn before_sync() -> Result<(), Error> {
    static SYNCS: AtomicU64 = AtomicU64::new(0);
    let Some(after) = points().fsync_error_after else {
        return Ok(());
    };
    if SYNCS.fetch_add(1, Ordering::Relaxed) >= after {
        return Err(Error::Storage(
            "syncing the log: Input/output error (os error 5) (injected by FAILPOINTS)".into(),
        ));
    }
    Ok(())
}
