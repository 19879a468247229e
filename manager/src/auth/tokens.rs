//! API tokens and the join token: random secrets shown once, stored only as
//! SHA-256 hashes (a stolen store yields no usable token).
use std::collections::{BTreeMap, HashMap};

use minkube::pb::{self, Role};
use sha2::{Digest as _, Sha256};

use crate::error::ManagerError;
use crate::store::{Mutation, StoredToken};

/// Prefix of API token secrets.
const TOKEN_PREFIX: &str = "mkt_";
/// Prefix of join tokens.
const JOIN_PREFIX: &str = "mkj_";

/// Hex SHA-256 of a secret.
pub fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new secret: the prefix and 256 random bits in hex.
fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// Tokens and the join token, in memory (mirrors the store).
#[derive(Debug, Default)]
pub struct AccessState {
    tokens: BTreeMap<String, StoredToken>,
    by_hash: HashMap<String, String>,
    join_sha256: Option<String>,
}

impl AccessState {
    /// From what the store holds.
    pub fn from_stored(tokens: Vec<StoredToken>, join_sha256: Option<String>) -> Self {
        let mut s = Self {
            join_sha256,
            ..Self::default()
        };
        for t in tokens {
            s.by_hash.insert(t.sha256.clone(), t.name.clone());
            s.tokens.insert(t.name.clone(), t);
        }
        s
    }

    /// The name and role of the token with this secret.
    pub fn authenticate(&self, secret: &str) -> Option<(String, Role)> {
        let name = self.by_hash.get(&sha256_hex(secret))?;
        let t = self.tokens.get(name)?;
        Some((
            t.name.clone(),
            Role::try_from(t.role).unwrap_or(Role::Unspecified),
        ))
    }

    /// Whether `secret` is the current join token.
    pub fn join_token_matches(&self, secret: &str) -> bool {
        self.join_sha256
            .as_deref()
            .is_some_and(|h| h == sha256_hex(secret))
    }

    /// Creates a token; returns its secret.
    pub fn create(
        &mut self,
        name: &str,
        role: Role,
        out: &mut Vec<Mutation>,
    ) -> Result<String, ManagerError> {
        minkube_common::validate::validate_name("name", name)?;
        if role == Role::Unspecified {
            return Err(ManagerError::BadRequest(
                "role: is required (viewer, operator or admin)".into(),
            ));
        }
        if self.tokens.contains_key(name) {
            return Err(ManagerError::TokenExists(name.to_string()));
        }
        let secret = new_secret(TOKEN_PREFIX);
        let stored = StoredToken {
            name: name.to_string(),
            role: role as i32,
            sha256: sha256_hex(&secret),
            created_at: Some(minkube::convert::now()),
        };
        out.push(Mutation::PutToken(Box::new(stored.clone())));
        self.by_hash
            .insert(stored.sha256.clone(), stored.name.clone());
        self.tokens.insert(stored.name.clone(), stored);
        Ok(secret)
    }

    /// Revokes a token by name.
    pub fn revoke(&mut self, name: &str, out: &mut Vec<Mutation>) -> Result<(), ManagerError> {
        let t = self
            .tokens
            .remove(name)
            .ok_or_else(|| ManagerError::TokenNotFound(name.to_string()))?;
        self.by_hash.remove(&t.sha256);
        out.push(Mutation::DeleteToken(t.name));
        Ok(())
    }

    /// Replaces the join token; returns the new one.
    pub fn rotate_join(&mut self, out: &mut Vec<Mutation>) -> String {
        let secret = new_secret(JOIN_PREFIX);
        let h = sha256_hex(&secret);
        out.push(Mutation::PutJoinToken(h.clone()));
        self.join_sha256 = Some(h);
        secret
    }

    /// Every token, by name.
    pub fn list(&self) -> Vec<pb::TokenInfo> {
        self.tokens
            .values()
            .map(|t| pb::TokenInfo {
                name: t.name.clone(),
                role: t.role,
                created_at: t.created_at,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_work_until_revoked_and_survive_a_reload() {
        let mut s = AccessState::default();
        let mut out = Vec::new();
        let secret = s.create("ci", Role::Operator, &mut out).unwrap();
        assert!(secret.starts_with("mkt_") && secret.len() == 4 + 64);
        assert_eq!(s.authenticate(&secret), Some(("ci".into(), Role::Operator)));
        assert_eq!(s.authenticate("mkt_wrong"), None);
        assert!(matches!(
            s.create("ci", Role::Viewer, &mut out),
            Err(ManagerError::TokenExists(_))
        ));
        // Only the hash is stored.
        let Mutation::PutToken(stored) = &out[0] else {
            panic!("{out:?}")
        };
        assert!(!stored.sha256.contains(&secret[4..]));
        let reloaded = AccessState::from_stored(vec![(**stored).clone()], None);
        assert_eq!(
            reloaded.authenticate(&secret),
            Some(("ci".into(), Role::Operator))
        );
        s.revoke("ci", &mut out).unwrap();
        assert_eq!(s.authenticate(&secret), None);
        assert!(matches!(
            s.revoke("ci", &mut out),
            Err(ManagerError::TokenNotFound(_))
        ));
    }

    #[test]
    fn rotation_replaces_the_join_token() {
        let mut s = AccessState::default();
        let mut out = Vec::new();
        assert!(!s.join_token_matches(""));
        let old = s.rotate_join(&mut out);
        assert!(s.join_token_matches(&old));
        let new = s.rotate_join(&mut out);
        assert!(s.join_token_matches(&new) && !s.join_token_matches(&old));
    }

    #[test]
    fn names_and_roles_are_checked() {
        let mut s = AccessState::default();
        let mut out = Vec::new();
        assert!(s.create("Bad Name", Role::Viewer, &mut out).is_err());
        assert!(s.create("ok", Role::Unspecified, &mut out).is_err());
        assert!(out.is_empty());
    }
}
