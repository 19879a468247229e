//! Compiles proto/minkube/v1 with protox (no system protoc) into tonic/prost
//! code and writes the file descriptor set that server reflection serves.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/minkube/v1/task.proto",
        "proto/minkube/v1/node.proto",
        "proto/minkube/v1/control.proto",
        "proto/minkube/v1/agent.proto",
        "proto/minkube/v1/access.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("minkube_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // `build_transport(false)`: the RPC named Connect would clash with the
    // generated `Client::connect(dst)`; clients are built with `new(channel)`.
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
