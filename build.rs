//! Compiles `proto/` with protox (pure Rust, so no system `protoc` is needed) and writes the
//! descriptor set that the reflection service serves.

use prost::Message;
use std::{env, fs, path::PathBuf};

const PROTO: &str = "proto/llmrouter/v1/router.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile([PROTO], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("llmrouter_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // tonic's prost codec with small per-call buffers: see src/codec.rs.
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
