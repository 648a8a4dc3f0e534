//! The client library can be published: its manifest, and those of the geokv crates it
//! depends on, name no dependency by path alone, and geokv-proto builds from `.proto` files
//! inside its own package.

use std::path::Path;

fn manifest(path: &Path) -> toml::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_client_and_the_geokv_crates_it_needs_name_no_dependency_by_path_alone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let workspace = manifest(&root.join("Cargo.toml"));
    let shared = workspace["workspace"]["dependencies"].as_table().expect("workspace dependencies");
    for krate in ["geokv-client", "geokv-proto", "geokv-tls"] {
        let m = manifest(&root.join("crates").join(krate).join("Cargo.toml"));
        for section in ["dependencies", "build-dependencies"] {
            let Some(deps) = m.get(section).and_then(|d| d.as_table()) else { continue };
            for (name, spec) in deps {
                let spec = match spec.get("workspace").and_then(|w| w.as_bool()) {
                    Some(true) => &shared[name],
                    _ => spec,
                };
                assert!(
                    spec.get("path").is_none() || spec.get("version").is_some(),
                    "{krate}'s {section} name {name} by path alone: give it a version in the workspace Cargo.toml"
                );
            }
        }
    }
    let build = std::fs::read_to_string(root.join("crates/geokv-proto/build.rs")).unwrap();
    assert!(!build.contains("\"../"), "geokv-proto must build from files inside its package");
    for file in ["kv.proto", "cluster.proto", "admin.proto"] {
        let path = root.join("crates/geokv-proto/proto/geokv/v1").join(file);
        assert!(path.is_file(), "{} is inside geokv-proto", path.display());
    }
}
