//! Micro-benchmarks of the key-value store (`cargo bench -p dengine-kv`):
//! applying puts (one entry each, flushed per 64, as the apply thread
//! batches them) and ranges over a store of 100,000 keys, in memory.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dengine_kv::{KvCommand, KvStateMachine, PutRequest, RangeRequest};
use dengine_runtime::{EntryId, LogIndex, StateMachine, Term};

const KEYS: u64 = 100_000;

fn key(k: u64) -> Vec<u8> {
    format!("/registry/pods/key{k:08}").into_bytes()
}

/// A store holding `KEYS` keys with 256-byte values; the next index.
fn filled() -> (KvStateMachine, u64) {
    let mut sm = KvStateMachine::in_memory();
    let mut index = 0;
    for k in 0..KEYS {
        index += 1;
        let cmd = KvCommand::Put(PutRequest {
            key: key(k),
            value: vec![b'v'; 256],
            ..Default::default()
        });
        let _ = sm.apply(EntryId::new(Term(1), LogIndex(index)), &cmd.encode());
    }
    let _ = sm.flush(LogIndex(index));
    (sm, index + 1)
}

fn puts(c: &mut Criterion) {
    let (mut sm, mut index) = filled();
    let commands: Vec<_> = (0..1024u64)
        .map(|i| {
            KvCommand::Put(PutRequest {
                key: key(i * 97 % KEYS),
                value: vec![b'w'; 256],
                ..Default::default()
            })
            .encode()
        })
        .collect();
    let mut g = c.benchmark_group("mvcc put, 100k keys, 256 B");
    g.throughput(Throughput::Elements(64));
    let mut next = 0usize;
    g.bench_function("64 puts then a flush", |b| {
        b.iter(|| {
            for _ in 0..64 {
                let cmd = &commands[next % commands.len()];
                next += 1;
                let _ = sm.apply(EntryId::new(Term(1), LogIndex(index)), black_box(cmd));
                index += 1;
            }
            let _ = sm.flush(LogIndex(index - 1));
        });
    });
    g.finish();
}

fn ranges(c: &mut Criterion) {
    let (sm, _) = filled();
    let mut g = c.benchmark_group("mvcc range, 100k keys");
    let mut k = 0u64;
    g.bench_function("one key", |b| {
        b.iter(|| {
            k = (k + 7919) % KEYS;
            sm.range(black_box(&RangeRequest {
                key: key(k),
                ..Default::default()
            }))
        });
    });
    g.bench_function("100 keys", |b| {
        b.iter(|| {
            k = (k + 7919) % (KEYS - 100);
            sm.range(black_box(&RangeRequest {
                key: key(k),
                range_end: key(k + 100),
                ..Default::default()
            }))
        });
    });
    g.finish();
}

criterion_group!(benches, puts, ranges);
criterion_main!(benches);
