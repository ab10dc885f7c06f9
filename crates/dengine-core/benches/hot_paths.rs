//! Micro-benchmarks of the protocol core's hot paths (`cargo bench -p
//! dengine-core`): a batch of proposals through a hand-stepped 3-node
//! cluster to commit, the commit index from the followers' progress, and
//! the log record codec.

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dengine_core::testing::Cluster;
use dengine_core::{Bytes, Entry, EntryPayload, LogIndex, NodeId, Term, codec, quorum};

fn propose_to_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("propose to commit, 3 nodes in memory");
    for batch in [1usize, 64] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch of {batch}, 256 B"), |b| {
            b.iter_batched_ref(
                || {
                    let mut cluster = Cluster::new(3);
                    cluster.elect(1);
                    cluster
                },
                |cluster| {
                    for _ in 0..batch {
                        let _ = cluster.propose(1, &[7u8; 256]);
                    }
                    cluster.stabilize();
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

fn commit_index(c: &mut Criterion) {
    let voters: BTreeSet<NodeId> = (1..=5).map(NodeId).collect();
    let matched = [120u64, 118, 131, 99, 125];
    c.bench_function("commit index, 5 voters", |b| {
        b.iter(|| {
            quorum::majority_value(black_box(&voters), |id| {
                matched.get(id.0 as usize - 1).copied()
            })
        });
    });
}

fn codec(c: &mut Criterion) {
    let entry = Entry {
        index: LogIndex(123_456),
        term: Term(7),
        payload: EntryPayload::Normal(Bytes::from(vec![9u8; 256])),
    };
    let record = codec::encode_entry(&entry);
    let mut g = c.benchmark_group("log record, 256 B entry");
    g.throughput(Throughput::Bytes(record.len() as u64));
    g.bench_function("encode", |b| {
        let mut out = Vec::with_capacity(512);
        b.iter(|| {
            out.clear();
            codec::encode_entry_into(black_box(&entry), &mut out);
        });
    });
    g.bench_function("decode", |b| {
        b.iter(|| codec::decode_entry(black_box(&record)));
    });
    g.finish();
}

criterion_group!(benches, propose_to_commit, commit_index, codec);
criterion_main!(benches);
