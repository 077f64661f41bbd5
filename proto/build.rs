//! Compiles `proto/*.proto` with the pure-Rust protox compiler, so a machine
//! with only the Rust toolchain builds shardfs (no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/chunk.proto", "proto/meta.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
