//! Compiles proto/saga/v1 with protox (no system protoc needed) into prost messages and
//! tonic client/server code, and writes the file descriptor set beside the generated
//! code (for gRPC reflection).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "saga/v1/saga.proto",
        "saga/v1/orders.proto",
        "saga/v1/gateway.proto",
        "saga/es/v1/es.proto",
        "saga/es/v1/bank.proto",
        "saga/es/v1/orders.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("saga_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
