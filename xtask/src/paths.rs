//! Where things live.

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// `.state/es.json`: the running node, read by tests (`test-support`) and xtask.
pub fn state_file() -> PathBuf {
    root().join(".state").join("es.json")
}

/// Downloads and node data, outside the clone so CI keeps them between runs:
/// `CONNECTORS_CACHE_DIR`, else `/var/cache/es-connectors-rs` (root; reachable by the
/// unprivileged node user) or `~/.cache/es-connectors-rs`.
pub fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CONNECTORS_CACHE_DIR")
        && !dir.is_empty()
    {
        return PathBuf::from(dir);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    if home == "/root" {
        PathBuf::from("/var/cache/es-connectors-rs")
    } else {
        PathBuf::from(home).join(".cache").join("es-connectors-rs")
    }
}

/// Data, config and logs of the node of this checkout (one per checkout and engine).
pub fn node_dir(engine: &str) -> PathBuf {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&root(), &mut hasher);
    let id = std::hash::Hasher::finish(&hasher);
    cache_dir()
        .join("nodes")
        .join(format!("{engine}-{id:016x}"))
}

/// The local Maven repository.
pub fn maven_repo() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".m2").join("repository")
}
