//! Automatic compaction, as etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention`: the leader proposes `Compact` so that
//! the history kept covers the retention, by time or by revisions.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dengine_kv::{CompactRequest, KvCommand};
use tokio::sync::watch;

use super::EtcdCore;

/// How the history is compacted on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Never (clients compact with `Compact`, as Kubernetes does).
    #[default]
    Off,
    /// Keep this much time of history: every tenth of it, compact at the
    /// revision the store had one retention ago (etcd's `periodic` mode).
    Periodic(Duration),
    /// Keep this many revisions: every 5 minutes, compact at the current
    /// revision less this (etcd's `revision` mode).
    Revision(i64),
}

/// How often the revision mode looks (etcd's `revInterval`).
const REVISION_CHECK: Duration = Duration::from_secs(300);

/// Runs the compactor of `mode` until `stop`: it samples the revision on
/// every member, and proposes compactions while this member leads.
pub async fn run(core: Arc<EtcdCore>, mode: AutoCompaction, mut stop: watch::Receiver<bool>) {
    let every = match mode {
        AutoCompaction::Off => return,
        AutoCompaction::Periodic(keep) => (keep / 10).max(Duration::from_millis(10)),
        AutoCompaction::Revision(_) => REVISION_CHECK,
    };
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Ok((revision, compacted)) = core
            .read(true, |kv| (kv.revision(), kv.compacted_revision()))
            .await
        else {
            continue;
        };
        let now = Instant::now();
        let target = match mode {
            AutoCompaction::Off => return,
            AutoCompaction::Periodic(keep) => {
                samples.push_back((now, revision));
                // The newest sample at least one retention old.
                let mut target = None;
                while let Some(&(at, rev)) = samples.front() {
                    if now.duration_since(at) < keep {
                        break;
                    }
                    target = Some(rev);
                    samples.pop_front();
                }
                if let Some(rev) = target {
                    // Kept, so that the next round can compact at it again
                    // if this one fails.
                    samples.push_front((now - keep, rev));
                }
                target
            }
            AutoCompaction::Revision(keep) => Some(revision - keep),
        };
        let Some(target) = target.filter(|&t| t > compacted && t > 0) else {
            continue;
        };
        if core.leader_now() != Some(core.member_id) {
            continue;
        }
        let cmd = KvCommand::Compact(CompactRequest { revision: target });
        match core.write(&cmd).await {
            // The store logs the compaction itself, on every member.
            Ok(_) => tracing::debug!(revision = target, "auto-compaction asked"),
            Err(e) => tracing::debug!(revision = target, error = %e.message(), "auto-compaction"),
        }
    }
}

/// Parses etcd's `--auto-compaction-retention` for `mode` (`periodic` or
/// `revision`): "0" is off; periodic takes a duration ("1h", "30m",
/// "1h30m", "10s", "500ms") or a whole number of hours; revision takes a
/// number of revisions.
pub fn parse(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
    let retention = retention.trim();
    if retention.is_empty() || retention == "0" {
        return Ok(AutoCompaction::Off);
    }
    match mode {
        "revision" => retention
            .parse::<i64>()
            .ok()
            .filter(|&n| n > 0)
            .map(AutoCompaction::Revision)
            .ok_or_else(|| {
                format!("--auto-compaction-retention {retention:?}: not a number of revisions")
            }),
        "periodic" => {
            if let Ok(hours) = retention.parse::<u64>() {
                return Ok(AutoCompaction::Periodic(Duration::from_secs(hours * 3600)));
            }
            parse_duration(retention)
                .filter(|d| !d.is_zero())
                .map(AutoCompaction::Periodic)
                .ok_or_else(|| {
                    format!(
                        "--auto-compaction-retention {retention:?}: not a duration (like 1h, \
                         30m, 10s) or a number of hours"
                    )
                })
        }
        other => Err(format!(
            "--auto-compaction-mode {other:?}: periodic or revision"
        )),
    }
}

/// A duration as Go writes them: numbers with units h, m, s, ms.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .filter(|&i| i > 0)?;
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(n * secs).ok()?;
        rest = &rest[unit..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_parse_as_etcd_takes_them() {
        let p = |m: &str, r: &str| parse(m, r);
        assert_eq!(p("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(p("revision", "0"), Ok(AutoCompaction::Off));
        assert_eq!(
            p("periodic", "72"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(72 * 3600)))
        );
        assert_eq!(
            p("periodic", "1h30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            p("periodic", "2s"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(2)))
        );
        assert_eq!(
            p("periodic", "500ms"),
            Ok(AutoCompaction::Periodic(Duration::from_millis(500)))
        );
        assert_eq!(p("revision", "1000"), Ok(AutoCompaction::Revision(1000)));
        assert!(p("revision", "1h").is_err());
        assert!(p("periodic", "1d").is_err());
        assert!(p("periodic", "h").is_err());
        assert!(p("sometimes", "1h").is_err());
    }
}
