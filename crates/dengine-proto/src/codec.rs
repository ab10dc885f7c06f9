//! The codec of every generated client and server: prost's, with smaller
//! buffers.
//!
//! tonic's default gives every call an 8 KiB buffer to encode into and
//! another to decode from. etcd's requests and answers are mostly a few
//! hundred bytes, so at tens of thousands of calls a second those buffers
//! were a visible share of a member's CPU (fresh pages zeroed by the
//! kernel, copies). The buffers start at [`BUFFER_SIZE`] and grow as a
//! larger message needs.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The size a call's encode and decode buffers start at.
pub const BUFFER_SIZE: usize = 1024;

/// How much a stream encodes before it yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost's codec with [`BUFFER_SIZE`] buffers (see the module's docs).
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
