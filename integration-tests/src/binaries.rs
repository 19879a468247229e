//! Finds the product binaries in the cargo target dir the tests were built in.
use std::path::{Path, PathBuf};

/// The manager binary.
pub const MANAGER: &str = "minkube-manager";
/// The agent binary.
pub const AGENT: &str = "minkube-agent";
/// The CLI binary.
pub const CLI: &str = "minkube";

/// `target/<profile>/`: test binaries live in its `deps/` folder, the
/// workspace's binaries in the folder itself.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let dir = exe
        .parent()
        .expect("the test binary lives in a folder")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// Path of one built binary; panics with the command to run when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "{name} not found at {}: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}
