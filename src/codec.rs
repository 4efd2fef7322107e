//! The protobuf codec of the generated service and client: tonic's prost codec with a smaller
//! first buffer. tonic allocates the codec's buffer eagerly, per call, at 8 KiB; our messages
//! are chat deltas of a few hundred bytes, and a held stream keeps its buffer for its whole
//! life, so at 10,000 open streams the default would be 80 MiB of mostly empty buffers. The
//! buffer still grows in steps of its size for a larger message.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The first (and growth step) size of a call's encode and decode buffers.
pub const BUFFER_SIZE: usize = 1024;

/// tonic's default: how much a stream batches before yielding to the transport.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// A [`ProstCodec`] with [`BUFFER_SIZE`] buffers. Named by `codec_path` in `build.rs`.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}
