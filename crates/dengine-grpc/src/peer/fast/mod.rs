//! The fast Raft link: Raft messages between members on a plain TCP
//! connection of their own, without HTTP/2.
//!
//! On the `Raft` gRPC stream a message went from the core task to the
//! stream's body task, to the HTTP/2 connection's task, then to the
//! socket, and on the other side from the connection's task to the call's
//! task before it reached the node: at one client, with every member's
//! threads sharing two cores, those hand-offs and HTTP/2's framing were a
//! good part of a write's latency. On this link the sender writes each
//! message to the socket itself, from whichever thread sends it (the core
//! task, or the disk thread for an acknowledgement), and one task per
//! connection reads messages and hands them to the node.
//!
//! It shares the peer port with the gRPC services: a connection that
//! starts with [`MAGIC`] is a fast link, any other (HTTP/2's preface) goes
//! to gRPC. It is used only where peers talk plain TCP: with peer TLS the
//! `Raft` stream carries the messages. A peer that does not know it (an
//! older member) answers the greeting with something else, or closes the
//! connection unanswered a few times in a row, and the link then uses the
//! `Raft` stream instead.
//!
//! The protocol:
//! - the caller sends [`MAGIC`], then the cluster id, its own id and the
//!   id of the member it calls (little-endian `u64`s): what a gRPC call
//!   carries in its metadata, checked the same way
//!   ([`super::check_caller`]);
//! - the member answers [`REPLY`], a code ([`ACCEPTED`], [`REMOVED`] or
//!   [`REFUSED`]), and a reason (a little-endian `u16` length, then UTF-8);
//!   after a refusal it closes the connection;
//! - then the caller sends frames, each a little-endian `u32` length and a
//!   `RaftBatch` (the `Raft` stream's message) of that length. The member
//!   sends nothing more; it closes the connection on a malformed frame,
//!   and when it stops.

mod link;
#[cfg(test)]
mod link_tests;
mod serve;

pub(crate) use link::FastLink;
pub(crate) use serve::split_incoming;

/// What a fast link's connection starts with. Its first byte tells it
/// from HTTP/2's preface (`P`) and from a TLS handshake (0x16).
pub(crate) const MAGIC: &[u8; 15] = b"DENGINE-RAFT/1\n";
/// The length of the caller's greeting.
pub(crate) const GREETING_LEN: usize = MAGIC.len() + 24;
/// What the member's answer starts with.
pub(crate) const REPLY: &[u8; 4] = b"DRL1";
/// The answer's code: the link is up.
pub(crate) const ACCEPTED: u8 = 0;
/// The answer's code: the caller was removed from the cluster.
pub(crate) const REMOVED: u8 = 1;
/// The answer's code: refused for another reason (another cluster, a
/// call meant for another member, a caller that is not a member).
pub(crate) const REFUSED: u8 = 2;
/// The length of a frame's header.
pub(crate) const FRAME_HEADER: usize = 4;

/// The caller's greeting.
pub(crate) fn greeting(cluster_id: u64, from: u64, to: u64) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[..MAGIC.len()].copy_from_slice(MAGIC);
    let ids = &mut g[MAGIC.len()..];
    ids[..8].copy_from_slice(&cluster_id.to_le_bytes());
    ids[8..16].copy_from_slice(&from.to_le_bytes());
    ids[16..].copy_from_slice(&to.to_le_bytes());
    g
}

/// The cluster id, sender and receiver a greeting states; `None` if it is
/// not a greeting.
pub(crate) fn parse_greeting(g: &[u8; GREETING_LEN]) -> Option<(u64, u64, u64)> {
    if &g[..MAGIC.len()] != MAGIC {
        return None;
    }
    let word = |i: usize| {
        let at = MAGIC.len() + 8 * i;
        let mut b = [0u8; 8];
        b.copy_from_slice(&g[at..at + 8]);
        u64::from_le_bytes(b)
    };
    Some((word(0), word(1), word(2)))
}

/// The member's answer: `code` and `reason` (cut to what a `u16` counts).
pub(crate) fn answer(code: u8, reason: &str) -> Vec<u8> {
    let mut reason = reason.as_bytes();
    if reason.len() > usize::from(u16::MAX) {
        reason = &reason[..usize::from(u16::MAX)];
    }
    let mut a = Vec::with_capacity(REPLY.len() + 3 + reason.len());
    a.extend_from_slice(REPLY);
    a.push(code);
    a.extend_from_slice(&(reason.len() as u16).to_le_bytes());
    a.extend_from_slice(reason);
    a
}

/// Appends `batch`, whose encoded length is `len`, to `out` as one frame.
pub(crate) fn put_frame(out: &mut Vec<u8>, batch: &dengine_proto::peer::RaftBatch, len: usize) {
    out.reserve(FRAME_HEADER + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    // A Vec grows as needed: encoding into one cannot fail.
    let _ = prost::Message::encode(batch, out);
}

/// Why a frame could not be taken from a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The frame says it is longer than a message may be.
    TooLong(usize),
}

/// The length of the frame at the start of `buf` if all of it is there;
/// `Ok(None)` while it is incomplete.
pub(crate) fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < FRAME_HEADER {
        return Ok(None);
    }
    let mut h = [0u8; FRAME_HEADER];
    h.copy_from_slice(&buf[..FRAME_HEADER]);
    let len = u32::from_le_bytes(h) as usize;
    if len > max {
        return Err(FrameError::TooLong(len));
    }
    Ok((buf.len() >= FRAME_HEADER + len).then_some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_proto::peer as wire;

    #[test]
    fn a_greeting_reads_back_and_nothing_else_reads_as_one() {
        let g = greeting(0xc1, 2, 3);
        assert_eq!(parse_greeting(&g), Some((0xc1, 2, 3)));
        let mut h2 = [0u8; GREETING_LEN];
        h2[..24].copy_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(parse_greeting(&h2), None);
        assert_ne!(
            MAGIC[0], b'P',
            "told from HTTP/2's preface by its first byte"
        );
        assert_ne!(MAGIC[0], 0x16, "and from a TLS handshake");
    }

    #[test]
    fn frames_are_taken_whole_and_bounded() {
        let batch = wire::RaftBatch {
            messages: vec![wire::Message::default(); 3],
        };
        let mut buf = Vec::new();
        let encoded = prost::Message::encoded_len(&batch);
        put_frame(&mut buf, &batch, encoded);
        put_frame(&mut buf, &batch, encoded);
        let len = frame_len(&buf, 1 << 20).expect("fits").expect("whole");
        assert_eq!(len + FRAME_HEADER, buf.len() / 2);
        let decoded: wire::RaftBatch =
            prost::Message::decode(&buf[FRAME_HEADER..FRAME_HEADER + len]).expect("decodes");
        assert_eq!(decoded, batch);
        for cut in 0..FRAME_HEADER + len {
            assert_eq!(frame_len(&buf[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
        assert_eq!(frame_len(&buf, len - 1), Err(FrameError::TooLong(len)));
    }

    #[test]
    fn an_answer_states_its_code_and_reason() {
        let a = answer(REMOVED, "gone");
        assert_eq!(&a[..4], REPLY);
        assert_eq!(a[4], REMOVED);
        assert_eq!(&a[5..7], &4u16.to_le_bytes());
        assert_eq!(&a[7..], b"gone");
        let long = "x".repeat(70_000);
        assert_eq!(answer(REFUSED, &long).len(), 7 + usize::from(u16::MAX));
    }
}
