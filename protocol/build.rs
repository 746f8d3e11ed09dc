//! Compiles `proto/ocs/v1/ocs.proto` with protox, a pure-Rust protobuf compiler,
//! so neither builds nor Docker images need `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/ocs/v1/ocs.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
