//! Generates the server side of KurrentDB's Streams gRPC service from the `.proto` files that
//! ship inside the `kurrentdb` client crate (the version in Cargo.lock), with the protoc that
//! ships inside `protoc-bin-vendored`: no system protobuf compiler, and the local endpoint
//! speaks exactly the protocol of the client release chatd uses.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = client_protos()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let include = protoc_bin_vendored::include_path()?;
    tonic_build::configure()
        .build_client(false)
        .compile_protos_with_config(
            config,
            &[protos.join("streams.proto")],
            &[protos.as_path(), include.as_path()],
        )?;
    println!("cargo:rerun-if-changed=../Cargo.lock");
    Ok(())
}

/// `protos/` of the `kurrentdb` crate in Cargo's registry sources.
fn client_protos() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let lock = std::fs::read_to_string(manifest.join("../Cargo.lock"))?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"kurrentdb\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .ok_or("kurrentdb is not in Cargo.lock")?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    for registry in std::fs::read_dir(cargo_home.join("registry/src"))? {
        let protos = registry?.path().join(format!("kurrentdb-{version}/protos"));
        if protos.join("streams.proto").exists() {
            return Ok(protos);
        }
    }
    Err(format!(
        "kurrentdb-{version}/protos not found under {}",
        cargo_home.display()
    )
    .into())
}
