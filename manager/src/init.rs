//! `minkube-manager init`: the cluster CA, the server certificate, an admin
//! token and a join token, written before the first secure start.
use std::path::{Path, PathBuf};

use minkube::pb::Role;

use crate::auth::tokens::AccessState;
use crate::error::ManagerError;
use crate::pki::Pki;
use crate::store::{RedbStore, Store};

/// What `init` made, to print once.
#[derive(Debug)]
pub struct Initialized {
    /// The CA certificate agents and clients need.
    pub ca_path: PathBuf,
    /// Secret of the `admin` token.
    pub admin_token: String,
    /// The join token.
    pub join_token: String,
}

/// Creates the CA in `data_dir/pki` and the tokens in the store. Refuses a
/// data dir that already has a CA. The manager must not be running (the
/// store is opened here).
pub fn init(data_dir: &Path, extra_names: &[String]) -> Result<Initialized, ManagerError> {
    if Pki::exists(data_dir) {
        return Err(crate::pki::PkiError::Exists(data_dir.join(crate::pki::PKI_DIR)).into());
    }
    std::fs::create_dir_all(data_dir).map_err(|source| crate::pki::PkiError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    // The store first: if it is locked (a manager runs), nothing is created.
    let store = RedbStore::open(data_dir)?;
    let snap = store.load()?;
    let mut access = AccessState::from_stored(
        snap.tokens,
        snap.join_token_sha256,
        snap.join_token_issued_at,
    );
    let mut out = Vec::new();
    // Starting over (pki/ deleted): the old admin token goes too.
    let _ = access.revoke("admin", &mut out);
    let admin_token = access.create("admin", Role::Admin, &mut out)?;
    let join_token = access.rotate_join(&mut out);
    Pki::create(data_dir, extra_names)?;
    store.commit(&out)?;
    Ok(Initialized {
        ca_path: Pki::ca_path(data_dir),
        admin_token,
        join_token,
    })
}

impl Initialized {
    /// The instructions `init` prints.
    pub fn instructions(&self, data_dir: &Path) -> String {
        let ca = self.ca_path.display();
        format!(
            "cluster initialised in {dir}\n\
             \n\
             CA certificate (copy to every agent host and client): {ca}\n\
             \n\
             admin token (shown once; keep it secret):\n  {admin}\n\
             join token (shown once; `minkube token rotate-join` replaces it):\n  {join}\n\
             \n\
             start the manager:\n  minkube-manager --data-dir {dir} --host 0.0.0.0\n\
             start an agent (first start joins, later starts use its certificate):\n  \
             minkube-agent --manager <manager-host>:7070 --ca-cert {ca} --join-token {join}\n\
             use the CLI:\n  \
             export MINKUBE_CA_CERT={ca} MINKUBE_TOKEN={admin}\n  \
             minkube --manager <manager-host>:7070 token create alice --role operator\n",
            dir = data_dir.display(),
            admin = self.admin_token,
            join = self.join_token,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn init_makes_working_tokens_once() {
        let dir = tempfile::tempdir().unwrap();
        let done = init(dir.path(), &[]).unwrap();
        assert!(done.ca_path.exists());
        let text = done.instructions(dir.path());
        assert!(text.contains(&done.admin_token) && text.contains(&done.join_token));
        let snap = RedbStore::open(dir.path()).unwrap().load().unwrap();
        let access = AccessState::from_stored(
            snap.tokens,
            snap.join_token_sha256,
            snap.join_token_issued_at,
        );
        assert_eq!(
            access.authenticate(&done.admin_token),
            Some(("admin".into(), Role::Admin))
        );
        assert!(access.join_token_matches(&done.join_token));
        let again = init(dir.path(), &[]).unwrap_err().to_string();
        assert!(again.contains("already holds a cluster CA"), "{again}");
    }
}
