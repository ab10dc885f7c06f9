//! Spot checks of the wire contracts: the names clients call and a few
//! encodings fixed by etcd's field numbers.

use dengine_proto::prost::Message as _;
use dengine_proto::{etcdserverpb, mvccpb, peer};

#[test]
fn service_names_are_etcds_and_dengines() {
    assert_eq!(etcdserverpb::kv_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(
        etcdserverpb::watch_server::SERVICE_NAME,
        "etcdserverpb.Watch"
    );
    assert_eq!(
        etcdserverpb::lease_server::SERVICE_NAME,
        "etcdserverpb.Lease"
    );
    assert_eq!(
        etcdserverpb::cluster_server::SERVICE_NAME,
        "etcdserverpb.Cluster"
    );
    assert_eq!(
        etcdserverpb::maintenance_server::SERVICE_NAME,
        "etcdserverpb.Maintenance"
    );
    assert_eq!(etcdserverpb::auth_server::SERVICE_NAME, "etcdserverpb.Auth");
    assert_eq!(peer::peer_server::SERVICE_NAME, "dengine.peer.v1.Peer");
}

#[test]
fn etcd_messages_encode_with_etcds_field_numbers() {
    // PutRequest: key = 1, value = 2, lease = 3, prev_kv = 4.
    let put = etcdserverpb::PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 7,
        prev_kv: true,
        ..Default::default()
    };
    assert_eq!(
        put.encode_to_vec(),
        [0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 7, 0x20, 1]
    );
    // KeyValue: key = 1, create_revision = 2, mod_revision = 3,
    // version = 4, value = 5, lease = 6.
    let kv = mvccpb::KeyValue {
        key: b"a".to_vec(),
        create_revision: 2,
        mod_revision: 3,
        version: 4,
        value: b"b".to_vec(),
        lease: 6,
    };
    assert_eq!(
        kv.encode_to_vec(),
        [
            0x0a, 1, b'a', 0x10, 2, 0x18, 3, 0x20, 4, 0x2a, 1, b'b', 0x30, 6
        ]
    );
    // RangeResponse.kvs = 2 holds mvccpb.KeyValue.
    let range = etcdserverpb::RangeResponse {
        kvs: vec![kv.clone()],
        ..Default::default()
    };
    let decoded =
        etcdserverpb::RangeResponse::decode(range.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded.kvs, [kv]);
}

#[test]
fn peer_payloads_are_bytes_and_not_copied() {
    let payload = bytes::Bytes::from_static(b"payload");
    let entry = peer::Entry {
        term: 1,
        index: 2,
        payload: Some(peer::entry::Payload::Normal(payload.clone())),
    };
    let wire = bytes::Bytes::from(entry.encode_to_vec());
    let decoded = peer::Entry::decode(wire.clone()).expect("decodes");
    let Some(peer::entry::Payload::Normal(got)) = decoded.payload else {
        panic!("payload lost: {decoded:?}");
    };
    assert_eq!(got, payload);
    // Decoded from a `Bytes`, the payload is a slice of the same buffer.
    let start = wire.as_ptr() as usize;
    let at = got.as_ptr() as usize;
    assert!(at >= start && at + got.len() <= start + wire.len());
}
