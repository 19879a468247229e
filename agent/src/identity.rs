//! Who this agent is: its node id (kept in `<data-dir>/node-id` after the
//! first Register and presented on every later one) and its default name.
use std::fs;
use std::io;
use std::path::Path;

use crate::local_store::{write_atomic, StoreError};

const NODE_ID_FILE: &str = "node-id";

/// The node id from an earlier registration, if any.
pub fn load_node_id(data_dir: &Path) -> Result<Option<String>, StoreError> {
    let path = data_dir.join(NODE_ID_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim();
            Ok((!id.is_empty()).then(|| id.to_string()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

/// Keeps the node id the manager assigned.
pub fn save_node_id(data_dir: &Path, node_id: &str) -> Result<(), StoreError> {
    write_atomic(data_dir, NODE_ID_FILE, format!("{node_id}\n").as_bytes())
}

/// The host name, read from the kernel.
pub fn hostname() -> Option<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn node_id_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_node_id(dir.path()).unwrap(), None);
        save_node_id(dir.path(), "n-1").unwrap();
        assert_eq!(load_node_id(dir.path()).unwrap(), Some("n-1".into()));
        save_node_id(dir.path(), "n-2").unwrap();
        assert_eq!(load_node_id(dir.path()).unwrap(), Some("n-2".into()));
    }

    #[test]
    fn blank_file_means_no_id() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(NODE_ID_FILE), "\n").unwrap();
        assert_eq!(load_node_id(dir.path()).unwrap(), None);
    }

    #[test]
    fn hostname_is_readable_here() {
        assert!(hostname().is_some());
    }
}
