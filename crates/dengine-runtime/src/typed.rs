//! Typed commands: propose a serde value, apply it as that value.
//!
//! The log carries bytes. [`encode`] and [`decode`] turn a command into
//! bytes and back with [postcard](https://docs.rs/postcard) (compact and
//! stable); [`Typed`] wraps a [`TypedStateMachine`] so it only ever sees
//! decoded commands, and [`crate::Node::propose_command`] proposes one.
//!
//! A command that does not decode (another program proposed to the same
//! cluster, or the type changed incompatibly) is refused the same way on
//! every replica: `apply` returns [`CommandError`], the state is untouched.
//!
//! ## Format versions
//!
//! Every encoded command starts with one byte, its format version, then
//! the postcard encoding of the value: `version ‖ postcard(command)`.
//! [`encode`] writes version [`FORMAT_VERSION`] (1), and [`decode`] reads
//! only that version: any other is refused with
//! [`CommandError::UnknownVersion`], naming it, never a panic and never a
//! guess. Entries stay in the log (and in snapshots of state built from
//! them) for as long as the cluster lives, so bytes once written must
//! decode the same way forever.
//!
//! postcard is not self-describing: it writes fields in order, without
//! names, and an enum as the index of its variant. So adding a field to a
//! command, removing one, reordering variants or changing a field's type
//! changes how *old* entries decode (or makes them fail). The rule for
//! evolving a command type is: **add a version, keep decoding the old
//! one.** Two ways, both keeping the bytes already in logs valid:
//!
//! - *Versions as variants* (works with [`crate::Node::propose_command`]
//!   and [`Typed`] as they are): make the command an enum and never change
//!   a variant once it has been proposed; a new shape is a new variant
//!   appended at the end (`Put(PutV1)`, later `PutV2(PutV2)`). postcard
//!   tags a variant by its index, so old entries keep decoding to the old
//!   variant, which the state machine keeps handling.
//! - *Versions in the header*: keep the old type frozen (say `CmdV1`),
//!   write the new shape with [`encode_version`]`(2, &cmd)`, and decode by
//!   dispatching on [`split_version`]: version 1 with
//!   [`decode_body`]`::<CmdV1>` (then converted), version 2 with
//!   [`decode_body`]`::<Cmd>`. The key-value store does this for its own
//!   commands (`dengine_kv::KvCommand::decode`).
//!
//! Either way, a test that decodes bytes written by the old version (a
//! fixture committed with the code, as this module's tests do) is what
//! catches a change that breaks old data.

use std::io::{Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state_machine::StateMachine;
use crate::{EntryId, LogIndex};

/// The format version [`encode`] writes and [`decode`] reads: the first
/// byte of every encoded command (see the [module docs](self)).
pub const FORMAT_VERSION: u8 = 1;

/// A command that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The value could not be encoded, or the bytes are not a command of
    /// the expected type (wrong shape, truncated, bytes left over, or no
    /// bytes at all).
    #[error("command encoding: {0}")]
    Encoding(String),
    /// The command was written in a format version this program does not
    /// read (a newer program wrote it, or it is not a command at all).
    #[error("command of format version {0}, which this program does not read")]
    UnknownVersion(u8),
}

/// Encodes `command` for [`crate::Node::propose`]: format version
/// [`FORMAT_VERSION`], then the value.
pub fn encode<C: Serialize>(command: &C) -> Result<Vec<u8>, CommandError> {
    encode_version(FORMAT_VERSION, command)
}

/// Encodes `command` under a format version of the caller's choosing
/// (`version ‖ postcard(command)`), for a type that keeps several versions
/// (see [Format versions](self#format-versions)).
pub fn encode_version<C: Serialize>(version: u8, command: &C) -> Result<Vec<u8>, CommandError> {
    encode_version_sized(version, command, 64)
}

/// [`encode_version`] into a buffer made with room for `size_hint` bytes:
/// a command that knows about how long it encodes (a put: its key and
/// value) is written without the buffer growing (and copying) on the way.
pub fn encode_version_sized<C: Serialize>(
    version: u8,
    command: &C,
    size_hint: usize,
) -> Result<Vec<u8>, CommandError> {
    let mut out = Vec::with_capacity(size_hint.max(1));
    out.push(version);
    postcard::to_extend(command, out).map_err(|e| CommandError::Encoding(e.to_string()))
}

/// Decodes bytes made by [`encode`]: version [`FORMAT_VERSION`] only;
/// trailing bytes are an error.
pub fn decode<C: DeserializeOwned>(bytes: &[u8]) -> Result<C, CommandError> {
    match split_version(bytes)? {
        (FORMAT_VERSION, body) => decode_body(body),
        (version, _) => Err(CommandError::UnknownVersion(version)),
    }
}

/// Splits encoded bytes into their format version and the body after it.
pub fn split_version(bytes: &[u8]) -> Result<(u8, &[u8]), CommandError> {
    match bytes.split_first() {
        Some((&version, body)) => Ok((version, body)),
        None => Err(CommandError::Encoding(
            "no bytes: not even a format version".into(),
        )),
    }
}

/// Decodes the body of an encoded command (what follows its format
/// version, see [`split_version`]); trailing bytes are an error.
pub fn decode_body<C: DeserializeOwned>(body: &[u8]) -> Result<C, CommandError> {
    match postcard::take_from_bytes(body) {
        Ok((c, [])) => Ok(c),
        Ok((_, rest)) => Err(CommandError::Encoding(format!(
            "{} bytes left after the command",
            rest.len()
        ))),
        Err(e) => Err(CommandError::Encoding(e.to_string())),
    }
}

/// A state machine over typed commands. Wrap it in [`Typed`] to run it.
pub trait TypedStateMachine: Send + 'static {
    /// What is proposed.
    type Command: Serialize + DeserializeOwned;
    /// What a proposer gets back.
    type Response: Send + 'static;

    /// Applies a committed command (see [`StateMachine::apply`]).
    fn apply(&mut self, at: EntryId, command: Self::Command) -> Self::Response;

    /// See [`StateMachine::apply_membership`].
    fn apply_membership(
        &mut self,
        at: EntryId,
        change: &dengine_core::ConfChange,
        members: &dengine_core::ConfState,
    ) {
        let _ = (at, change, members);
    }

    /// See [`StateMachine::snapshot`].
    fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()>;

    /// See [`StateMachine::restore`].
    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()>;

    /// See [`StateMachine::flush`].
    fn flush(&mut self, applied: LogIndex) -> std::io::Result<()> {
        let _ = applied;
        Ok(())
    }

    /// See [`StateMachine::applied_index`].
    fn applied_index(&self) -> Option<LogIndex> {
        None
    }
}

/// Runs a [`TypedStateMachine`] as a [`StateMachine`]: decodes each
/// command before applying it.
#[derive(Debug, Default, Clone)]
pub struct Typed<T>(pub T);

impl<T: TypedStateMachine> StateMachine for Typed<T> {
    type Response = Result<T::Response, CommandError>;

    fn apply(&mut self, at: EntryId, command: &[u8]) -> Self::Response {
        let command = decode::<T::Command>(command)?;
        Ok(self.0.apply(at, command))
    }

    fn apply_membership(
        &mut self,
        at: EntryId,
        change: &dengine_core::ConfChange,
        members: &dengine_core::ConfState,
    ) {
        self.0.apply_membership(at, change, members);
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        self.0.snapshot(out)
    }

    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        self.0.restore(input)
    }

    fn flush(&mut self, applied: LogIndex) -> std::io::Result<()> {
        self.0.flush(applied)
    }

    fn applied_index(&self) -> Option<LogIndex> {
        self.0.applied_index()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Term;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Cmd {
        Add(u64),
        Name { who: String, tags: Vec<u8> },
    }

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        for c in [
            Cmd::Add(7),
            Cmd::Name {
                who: "ada".into(),
                tags: vec![1, 2],
            },
        ] {
            let bytes = encode(&c).expect("encode");
            assert_eq!(decode::<Cmd>(&bytes).expect("decode"), c);
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode::<Cmd>(&longer).is_err(), "trailing bytes");
        }
        assert!(decode::<Cmd>(&[1, 9, 9]).is_err(), "unknown variant");
        assert_eq!(
            decode::<Cmd>(&[9, 0, 7]),
            Err(CommandError::UnknownVersion(9)),
            "unknown format version"
        );
        let e = decode::<Cmd>(&[]).expect_err("empty");
        assert!(matches!(e, CommandError::Encoding(_)), "{e}");
        assert!(
            CommandError::UnknownVersion(9).to_string().contains('9'),
            "the error names the version"
        );
    }

    /// Bytes written by this version of the format, committed with the
    /// code: if a change to the format (or to `Cmd`) changes how they
    /// decode, this fails. Never edit these bytes; add new ones.
    const FIXTURE_ADD_300: &[u8] = &[0x01, 0x00, 0xac, 0x02];
    const FIXTURE_NAME: &[u8] = &[0x01, 0x01, 0x03, b'a', b'd', b'a', 0x02, 0x01, 0x02];

    #[test]
    fn committed_fixtures_of_format_1_decode() {
        assert_eq!(decode::<Cmd>(FIXTURE_ADD_300), Ok(Cmd::Add(300)));
        let name = Cmd::Name {
            who: "ada".into(),
            tags: vec![1, 2],
        };
        assert_eq!(decode::<Cmd>(FIXTURE_NAME), Ok(name));
        assert_eq!(encode(&Cmd::Add(300)).expect("encode"), FIXTURE_ADD_300);
    }

    /// The two ways of evolving a command type from the module docs, both
    /// still reading the format-1 fixtures written by the old `Cmd`.
    #[test]
    fn an_evolved_command_type_still_decodes_old_entries() {
        // Versions as variants: a variant appended at the end.
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        enum CmdWithVariant {
            Add(u64),
            Name { who: String, tags: Vec<u8> },
            AddTagged { n: u64, tag: String },
        }
        assert_eq!(
            decode::<CmdWithVariant>(FIXTURE_ADD_300),
            Ok(CmdWithVariant::Add(300))
        );
        let new = CmdWithVariant::AddTagged {
            n: 1,
            tag: "t".into(),
        };
        assert_eq!(decode(&encode(&new).expect("encode")), Ok(new));

        // Versions in the header: `Name` gained a field in version 2.
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        enum CmdV2 {
            Add(u64),
            Name {
                who: String,
                tags: Vec<u8>,
                admin: bool,
            },
        }
        fn decode_any(bytes: &[u8]) -> Result<CmdV2, CommandError> {
            match split_version(bytes)? {
                (1, body) => Ok(match decode_body::<Cmd>(body)? {
                    Cmd::Add(n) => CmdV2::Add(n),
                    Cmd::Name { who, tags } => CmdV2::Name {
                        who,
                        tags,
                        admin: false,
                    },
                }),
                (2, body) => decode_body(body),
                (v, _) => Err(CommandError::UnknownVersion(v)),
            }
        }
        let old = decode_any(FIXTURE_NAME).expect("version 1");
        assert_eq!(
            old,
            CmdV2::Name {
                who: "ada".into(),
                tags: vec![1, 2],
                admin: false
            }
        );
        let new = CmdV2::Name {
            who: "bo".into(),
            tags: vec![],
            admin: true,
        };
        let bytes = encode_version(2, &new).expect("encode");
        assert_eq!(bytes[0], 2);
        assert_eq!(decode_any(&bytes), Ok(new));
        assert_eq!(
            decode::<Cmd>(&bytes),
            Err(CommandError::UnknownVersion(2)),
            "a reader of version 1 refuses version 2"
        );
    }

    #[derive(Default)]
    struct Sum(u64);
    impl TypedStateMachine for Sum {
        type Command = Cmd;
        type Response = u64;
        fn apply(&mut self, _: EntryId, c: Cmd) -> u64 {
            if let Cmd::Add(n) = c {
                self.0 += n;
            }
            self.0
        }
        fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
            out.write_all(&self.0.to_le_bytes())
        }
        fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
            let mut b = [0; 8];
            input.read_exact(&mut b)?;
            self.0 = u64::from_le_bytes(b);
            Ok(())
        }
    }

    #[test]
    fn typed_applies_decoded_commands_and_refuses_the_rest_untouched() {
        let mut sm = Typed(Sum::default());
        let add = encode(&Cmd::Add(5)).expect("encode");
        assert_eq!(sm.apply(EntryId::new(Term(1), LogIndex(1)), &add), Ok(5));
        assert!(
            sm.apply(EntryId::new(Term(1), LogIndex(2)), b"\xff\xff")
                .is_err()
        );
        assert_eq!(sm.0.0, 5, "a bad command changes nothing");
    }
}
