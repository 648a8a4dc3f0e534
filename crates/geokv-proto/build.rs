use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [root.join("geokv/v1/kv.proto"), root.join("geokv/v1/cluster.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("geokv_descriptor.bin"))
        .compile_protos(&files, &[root])?;
    Ok(())
}
