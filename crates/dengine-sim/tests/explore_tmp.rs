use dengine_core::{Message, MessageBody};
use dengine_sim::{FaultProfile, Hooks, KvWorkload, NoHooks, SimOptions, run};
use std::time::Instant;

struct GrantAll {
    pre: bool,
}
impl Hooks for GrantAll {
    fn on_send(&mut self, m: &mut Message) {
        if let MessageBody::RequestVoteResponse { pre_vote, granted } = &mut m.body {
            if !*pre_vote || self.pre {
                *granted = true;
            }
        }
    }
}
struct Early;
impl Hooks for Early {
    fn ack_before_durable(&self) -> bool {
        true
    }
}
struct Inflate;
impl Hooks for Inflate {
    fn on_send(&mut self, m: &mut Message) {
        if let MessageBody::AppendEntries {
            prev,
            entries,
            commit,
        } = &mut m.body
        {
            *commit = dengine_core::LogIndex(prev.index.0 + entries.len() as u64);
        }
    }
}

fn env(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn profile(kind: &str) -> FaultProfile {
    let mut p = FaultProfile::calm();
    match kind {
        "vote" => {
            p.partitions = true;
            p.loss = 0.05;
            p.delay_max_us = 10_000;
            p.nemesis_interval_us = 100_000;
        }
        "early" => {
            p.crashes = true;
            p.disk_latency_us = (5_000, 50_000);
            p.nemesis_interval_us = 100_000;
        }
        "early2" => {
            p.crashes = true;
            p.partitions = true;
            p.disk_latency_us = (5_000, 50_000);
            p.nemesis_interval_us = 100_000;
        }
        "inflate" => {
            p.crashes = true;
            p.partitions = true;
            p.loss = 0.05;
            p.delay_max_us = 10_000;
            p.nemesis_interval_us = 100_000;
        }
        _ => panic!(),
    }
    p
}

#[test]
#[ignore]
fn explore() {
    let kind = std::env::var("KIND").unwrap();
    let prof = std::env::var("PROF").unwrap_or(kind.clone());
    let n = env("N", 20);
    let steps = env("STEPS", 20_000);
    let mut caught = 0;
    let t0 = Instant::now();
    for seed in 0..n {
        let mut o = SimOptions::new(seed);
        o.steps = steps;
        o.faults = Some(profile(&prof));
        let t = Instant::now();
        let r = match kind.as_str() {
            "vote" => run(
                &o,
                KvWorkload::default(),
                &mut GrantAll {
                    pre: env("PRE", 1) == 1,
                },
            ),
            "early" | "early2" => run(&o, KvWorkload::default(), &mut Early),
            "inflate" => run(&o, KvWorkload::default(), &mut Inflate),
            "control" => run(&o, KvWorkload::default(), &mut NoHooks),
            _ => panic!(),
        };
        let props: Vec<_> = r.violations.iter().map(|v| v.property).collect();
        if !r.passed() {
            caught += 1;
        }
        println!(
            "seed {seed}: {:.2}s steps {} passed {} {:?} lin {:?}",
            t.elapsed().as_secs_f64(),
            r.steps,
            r.passed(),
            props.iter().take(4).collect::<Vec<_>>(),
            matches!(
                r.linearizability,
                dengine_sim::linearizability::CheckResult::Ok
            )
        );
    }
    println!(
        "{kind}/{prof}: caught {caught}/{n} in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
