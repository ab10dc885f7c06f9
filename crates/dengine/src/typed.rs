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

use std::io::{Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state_machine::StateMachine;
use crate::{EntryId, LogIndex};

/// A command that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("command encoding: {0}")]
pub struct CommandError(pub String);

/// Encodes `command` for [`crate::Node::propose`].
pub fn encode<C: Serialize>(command: &C) -> Result<Vec<u8>, CommandError> {
    postcard::to_stdvec(command).map_err(|e| CommandError(e.to_string()))
}

/// Decodes bytes made by [`encode`]; trailing bytes are an error.
pub fn decode<C: DeserializeOwned>(bytes: &[u8]) -> Result<C, CommandError> {
    match postcard::take_from_bytes(bytes) {
        Ok((c, [])) => Ok(c),
        Ok((_, rest)) => Err(CommandError(format!(
            "{} bytes left after the command",
            rest.len()
        ))),
        Err(e) => Err(CommandError(e.to_string())),
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
        assert!(decode::<Cmd>(&[9, 9, 9]).is_err(), "unknown variant");
        assert!(decode::<Cmd>(&[]).is_err(), "empty");
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
