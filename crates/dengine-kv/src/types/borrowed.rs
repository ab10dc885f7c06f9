//! A put decoded without copying its key and value: the apply path's
//! common command, read in place from the entry's bytes.
//!
//! Decoded as a [`KvCommand`](super::KvCommand), each put allocated a `Vec` for its key and
//! one for its value, on every member, only for the store to copy both
//! into its pending record. [`decode_put`] reads a put of today's format
//! as a [`PutView`] borrowing both from the command's bytes; every other
//! command (and every put of an older format) goes through
//! [`KvCommand::decode`](super::KvCommand::decode).

use serde::Deserialize;

use super::{COMMAND_VERSION, PutRequest};

/// A put's fields, borrowed (from a [`PutRequest`] or from a command's
/// bytes). They are [`PutRequest`]'s, in its order: postcard writes no
/// field names, so a put's bytes read as a `PutView` (the byte strings
/// borrowed) give the same put. A field added to `PutRequest` goes here
/// too: `a_put_is_read_in_place_as_decoding_reads_it` fails otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct PutView<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
    pub(crate) prev_kv: bool,
    pub(crate) ignore_value: bool,
    pub(crate) ignore_lease: bool,
    pub(crate) lease: i64,
}

impl PutRequest {
    /// The put's fields, borrowed.
    pub(crate) fn view(&self) -> PutView<'_> {
        PutView {
            key: &self.key,
            value: &self.value,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
            lease: self.lease,
        }
    }
}

/// The index postcard writes (a varint) for
/// [`KvCommand::Put`](super::KvCommand::Put), the
/// enum's first variant.
const PUT_VARIANT: u8 = 0;

/// The put `command` holds, borrowed from it, if it is a put of today's
/// format that decodes whole; `None` for anything else, which
/// [`KvCommand::decode`](super::KvCommand::decode) then reads (and
/// judges).
pub(crate) fn decode_put(command: &[u8]) -> Option<PutView<'_>> {
    let [COMMAND_VERSION, PUT_VARIANT, body @ ..] = command else {
        return None;
    };
    match postcard::take_from_bytes::<PutView<'_>>(body) {
        Ok((put, [])) => Some(put),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::types::{DeleteRangeRequest, KvCommand, TxnOp, TxnRequest};

    fn put() -> impl Strategy<Value = PutRequest> {
        (
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<(bool, bool, bool, i64)>(),
        )
            .prop_map(
                |(key, value, (prev_kv, ignore_value, ignore_lease, lease))| PutRequest {
                    key,
                    value,
                    prev_kv,
                    ignore_value,
                    ignore_lease,
                    lease,
                },
            )
    }

    proptest! {
        /// A put's bytes read in place give the put that decoding them
        /// gives, its key and value pointing into the bytes.
        #[test]
        fn a_put_is_read_in_place_as_decoding_reads_it(p in put()) {
            let bytes = KvCommand::Put(p.clone()).encode();
            let view = decode_put(&bytes).expect("a put");
            let KvCommand::Put(decoded) = KvCommand::decode(&bytes).expect("decodes") else {
                panic!("a put");
            };
            prop_assert_eq!(view, decoded.view());
            prop_assert_eq!(view, p.view());
            let inside = |s: &[u8]| bytes.as_ptr_range().contains(&s.as_ptr()) || s.is_empty();
            prop_assert!(inside(view.key) && inside(view.value));
        }

        /// Cut or grown, a put's bytes are not read in place: decoding
        /// judges them.
        #[test]
        fn a_damaged_put_is_left_to_decoding(p in put(), cut in 1usize..8, extra in any::<u8>()) {
            let bytes = KvCommand::Put(p).encode();
            let short = &bytes[..bytes.len().saturating_sub(cut)];
            prop_assert_eq!(decode_put(short), None);
            let mut long = bytes.clone();
            long.push(extra);
            prop_assert_eq!(decode_put(&long), None);
        }
    }

    #[test]
    fn other_commands_are_left_to_decoding() {
        let others = [
            KvCommand::DeleteRange(DeleteRangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            }),
            KvCommand::Txn(TxnRequest {
                success: vec![TxnOp::Put(PutRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })],
                ..Default::default()
            }),
        ];
        for cmd in others {
            assert_eq!(decode_put(&cmd.encode()), None, "{cmd:?}");
        }
        // A put of another format version.
        let mut bytes = KvCommand::Put(PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .encode();
        bytes[0] = COMMAND_VERSION - 1;
        assert_eq!(decode_put(&bytes), None);
    }
}
