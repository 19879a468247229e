//! API tokens and the join token: random secrets shown once, stored only as
//! SHA-256 hashes (a stolen store yields no usable token).
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

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
    /// When the join token was made.
    join_issued_at: Option<SystemTime>,
    /// Removed nodes by name: when each was removed (Unix seconds).
    removed_nodes: HashMap<String, u64>,
    /// Removed nodes by id, with when: no agent registers under one again.
    removed_ids: HashMap<String, u64>,
}

/// Why a join token is refused.
#[derive(Debug, PartialEq)]
pub enum JoinRefusal {
    /// Not the current join token (forged, mistyped or rotated).
    Wrong,
    /// The current one, but older than the allowed lifetime.
    Expired {
        /// How long ago it was made.
        age: Duration,
    },
}

impl AccessState {
    /// From what the store holds. A join token without an issue time (from
    /// a store written before join tokens expired) counts as made now.
    pub fn from_stored(
        tokens: Vec<StoredToken>,
        join_sha256: Option<String>,
        join_issued_at: Option<u64>,
    ) -> Self {
        let join_issued_at = join_sha256.as_ref().map(|_| {
            join_issued_at.map_or_else(SystemTime::now, |secs| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
            })
        });
        let mut s = Self {
            join_sha256,
            join_issued_at,
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

    /// Checks a join token: the current one, and younger than `ttl` (if set).
    pub fn check_join_token(
        &self,
        secret: &str,
        now: SystemTime,
        ttl: Option<Duration>,
    ) -> Result<(), JoinRefusal> {
        if !self.join_token_matches(secret) {
            return Err(JoinRefusal::Wrong);
        }
        let age = self
            .join_issued_at
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        match ttl {
            Some(ttl) if age > ttl => Err(JoinRefusal::Expired { age }),
            _ => Ok(()),
        }
    }

    /// Marks node `id` (named `name`) removed at `at` (Unix seconds): its
    /// id is refused from now on, and so are its certificates issued until
    /// then. In memory; the store holds it through `Mutation::RemoveNode`.
    pub fn remove_node(&mut self, id: &str, name: &str, at: u64) {
        self.removed_nodes.insert(name.to_string(), at);
        self.removed_ids.insert(id.to_string(), at);
    }

    /// Removed nodes as the store holds them: names with their removal
    /// times, and ids.
    pub fn set_removed_nodes(&mut self, names: Vec<(String, u64)>, ids: Vec<(String, u64)>) {
        self.removed_nodes = names.into_iter().collect();
        self.removed_ids = ids.into_iter().collect();
    }

    /// When node id `id` was removed, if it was.
    pub fn node_id_removed(&self, id: &str) -> Option<u64> {
        self.removed_ids.get(id).copied()
    }

    /// When node `name` was removed, if a certificate of it issued at
    /// `issued_at` (Unix seconds) was issued before then (or in the same
    /// second: certificate times have whole seconds) and so is revoked.
    pub fn node_removed(&self, name: &str, issued_at: i64) -> Option<u64> {
        let at = *self.removed_nodes.get(name)?;
        (issued_at <= i64::try_from(at).unwrap_or(i64::MAX)).then_some(at)
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
        let now = SystemTime::now();
        out.push(Mutation::PutJoinToken {
            sha256: h.clone(),
            issued_at: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        self.join_sha256 = Some(h);
        self.join_issued_at = Some(now);
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
        let reloaded = AccessState::from_stored(vec![(**stored).clone()], None, None);
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
    fn join_tokens_expire_after_their_lifetime() {
        let mut s = AccessState::default();
        let mut out = Vec::new();
        let secret = s.rotate_join(&mut out);
        let ttl = Some(Duration::from_secs(3600));
        let now = SystemTime::now();
        assert_eq!(s.check_join_token(&secret, now, ttl), Ok(()));
        assert_eq!(
            s.check_join_token("mkj_forged", now, ttl),
            Err(JoinRefusal::Wrong)
        );
        let later = now + Duration::from_secs(7200);
        assert!(matches!(
            s.check_join_token(&secret, later, ttl),
            Err(JoinRefusal::Expired { age }) if age >= Duration::from_secs(7199)
        ));
        assert_eq!(
            s.check_join_token(&secret, later, None),
            Ok(()),
            "no lifetime set"
        );
        // The issue time is stored: a reload keeps the age.
        let Some(Mutation::PutJoinToken { sha256, issued_at }) = out.last().cloned() else {
            panic!("the rotation is stored");
        };
        let reloaded = AccessState::from_stored(Vec::new(), Some(sha256), Some(issued_at));
        assert!(matches!(
            reloaded.check_join_token(&secret, later, ttl),
            Err(JoinRefusal::Expired { .. })
        ));
    }

    #[test]
    fn a_removed_nodes_certificates_from_before_its_removal_are_refused() {
        let mut a = AccessState::default();
        assert_eq!(a.node_removed("n", 100), None);
        assert_eq!(a.node_id_removed("id-1"), None);
        a.remove_node("id-1", "n", 1_000);
        assert_eq!(a.node_id_removed("id-1"), Some(1_000));
        assert_eq!(a.node_removed("n", 999), Some(1_000));
        assert_eq!(a.node_removed("n", 1_000), Some(1_000));
        assert_eq!(a.node_removed("n", 1_001), None, "joined again later");
        assert_eq!(a.node_removed("other", 10), None);
        let mut reloaded = AccessState::default();
        reloaded.set_removed_nodes(vec![("n".into(), 1_000)], vec![("id-1".into(), 1_000)]);
        assert_eq!(reloaded.node_removed("n", 999), Some(1_000));
        assert_eq!(reloaded.node_id_removed("id-1"), Some(1_000));
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
