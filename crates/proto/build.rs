//! Generates the `baton.v1` messages and gRPC stubs with `protoc` (Debian: `protobuf-compiler`),
//! plus the file descriptor set that server reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The manifest dir read when the script runs, not baked in when it was compiled: a target
    // dir shared by two clones at different paths reuses one compiled build script.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "types.proto",
        "events.proto",
        "progress.proto",
        "services.proto",
    ]
    .map(|f| root.join("baton/v1").join(f));
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The .proto files live outside this crate, so cargo would not notice their changes.
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::process::Command::new(std::env::var("PROTOC").unwrap_or_else(|_| "protoc".into()))
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(
            "protoc not found: install it (Debian/Ubuntu: `apt-get install protobuf-compiler`) \
                    or set PROTOC to its path; deploy/setup.sh does this"
                .into(),
        );
    }
    tonic_prost_build::configure()
        // Maps as `BTreeMap`, so encoding a message writes map entries in key order: the
        // encoding of a value is then a function of its content, which the signed approval's
        // digest relies on (`baton_runtime::signing`).
        .btree_map(".")
        .file_descriptor_set_path(out.join("baton_descriptor.bin"))
        .type_attribute(
            ".baton.v1.Trigger",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        .compile_protos(&files, &[root])?;
    Ok(())
}
