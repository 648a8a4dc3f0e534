use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Inside the crate, so that its package carries them (the repository's `proto/` links here).
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        root.join("geokv/v1/kv.proto"),
        root.join("geokv/v1/cluster.proto"),
        root.join("geokv/v1/admin.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("geokv_descriptor.bin"))
        // The deployment status is also served as JSON (status page, `geokv status --json`).
        .type_attribute(".geokv.v1.ClusterStatusResponse", "#[derive(serde::Serialize)]")
        .type_attribute(".geokv.v1.NodeStatus", "#[derive(serde::Serialize)]")
        .type_attribute(".geokv.v1.LagCell", "#[derive(serde::Serialize)]")
        .type_attribute(".geokv.v1.LagPoint", "#[derive(serde::Serialize)]")
        .type_attribute(".geokv.v1.RegionPlace", "#[derive(serde::Serialize)]")
        .compile_protos(&files, &[root])?;
    Ok(())
}
