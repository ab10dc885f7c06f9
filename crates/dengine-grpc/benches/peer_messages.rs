//! Micro-benchmarks of the peer protocol (`cargo bench -p dengine-grpc`):
//! an append of 64 entries of 256 bytes to its wire form and bytes, and
//! back.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dengine_core::{
    Bytes, Entry, EntryId, EntryPayload, LogIndex, Message, MessageBody, NodeId, Term,
};
use dengine_grpc::peer::{message_from_wire, message_to_wire};
use dengine_grpc::proto::peer as wire;
use prost::Message as _;

fn append() -> Message {
    let entries = (0..64)
        .map(|i| Entry {
            index: LogIndex(1000 + i),
            term: Term(3),
            payload: EntryPayload::Normal(Bytes::from(vec![5u8; 256])),
        })
        .collect();
    Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(3),
        body: MessageBody::AppendEntries {
            prev: EntryId::new(Term(3), LogIndex(999)),
            entries,
            commit: LogIndex(990),
        },
    }
}

fn peer_messages(c: &mut Criterion) {
    let msg = append();
    let bytes = message_to_wire(msg.clone()).encode_to_vec();
    let mut g = c.benchmark_group("append of 64 x 256 B");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode", |b| {
        let mut out = Vec::with_capacity(bytes.len());
        b.iter(|| {
            out.clear();
            let w = message_to_wire(black_box(msg.clone()));
            w.encode(&mut out)
        });
    });
    let shared = Bytes::from(bytes);
    g.bench_function("decode", |b| {
        b.iter(|| {
            let w = wire::Message::decode(black_box(shared.clone()));
            w.map(message_from_wire)
        });
    });
    g.finish();
}

criterion_group!(benches, peer_messages);
criterion_main!(benches);
