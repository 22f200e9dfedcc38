//! Compiles `proto/quickp2p/v1/*.proto` with protox (pure Rust, no system `protoc`) and generates the
//! prost messages and tonic clients and servers into `OUT_DIR/quickp2p.v1.rs`. The encoded
//! `FileDescriptorSet`, with source info (comments), goes to `OUT_DIR/quickp2p_v1_descriptor.bin`
//! for server reflection and the documentation test.

use std::error::Error;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let include = manifest_dir.join("proto");
    let package_dir = include.join("quickp2p").join("v1");

    // Re-run when anything under proto/ changes (cargo scans a directory recursively).
    println!("cargo:rerun-if-changed={}", include.display());

    let files = proto_files(&package_dir)?;
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let mut compiler = protox::Compiler::new([&include])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(&files)?;
    std::fs::write(
        out_dir.join("quickp2p_v1_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // All `bytes` fields are `bytes::Bytes`: decoding a frame from `Bytes` then slices payloads
        // without copying them.
        .bytes(".")
        .type_attribute(".", "#[allow(clippy::all)]")
        .message_attribute(".quickp2p.v1.PeerId", "#[derive(PartialOrd, Ord)]")
        .message_attribute(".quickp2p.v1.AppId", "#[derive(PartialOrd, Ord)]")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

/// The `.proto` files of the package, sorted so the build is deterministic.
fn proto_files(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
