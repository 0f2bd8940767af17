//! Users and their credentials, stored as RabbitMQ stores them
//! (`rabbit_password_hashing_sha256`): base64(salt[4] ++ SHA-256(salt ++ utf8 password)).

use std::collections::HashMap;

use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One user: full configure/write/read permission on each vhost in `vhosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDef {
    pub name: String,
    pub password_hash: String,
    pub tags: Vec<String>,
    pub vhosts: Vec<String>,
}

const SALT_LEN: usize = 4;

/// Hashes a password with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::thread_rng().fill_bytes(&mut salt);
    hash_with_salt(&salt, password)
}

fn hash_with_salt(salt: &[u8], password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Checks `password` against a stored hash in constant time (in the length of the hash).
pub fn verify_password(password_hash: &str, password: &str) -> bool {
    let Ok(stored) = base64::engine::general_purpose::STANDARD.decode(password_hash) else {
        return false;
    };
    if stored.len() != SALT_LEN + 32 {
        return false;
    }
    let mut h = Sha256::new();
    h.update(&stored[..SALT_LEN]);
    h.update(password.as_bytes());
    let digest = h.finalize();
    // Fold every byte difference so the time taken does not depend on where they differ.
    let diff = stored[SALT_LEN..]
        .iter()
        .zip(digest.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    diff == 0
}

/// The set of users, replaced whole by `Engine::set_users`.
#[derive(Debug, Default, Clone)]
pub struct UserStore {
    users: HashMap<String, UserDef>,
}

impl UserStore {
    pub fn new(users: Vec<UserDef>) -> Self {
        UserStore {
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
        }
    }

    /// The user if the password is right.
    pub fn authenticate(&self, name: &str, password: &str) -> Option<&UserDef> {
        let user = self.users.get(name)?;
        verify_password(&user.password_hash, password).then_some(user)
    }

    pub fn get(&self, name: &str) -> Option<&UserDef> {
        self.users.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &UserDef> {
        self.users.values()
    }

    /// Every vhost named by some user.
    pub fn vhosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.users.values().flat_map(|u| u.vhosts.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_roundtrip_and_rejects_wrong_password() {
        let h = hash_password("s3cret");
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3cret!"));
        assert!(!verify_password("not base64 !!", "s3cret"));
    }

    #[test]
    fn matches_rabbitmq_format() {
        // Salt 0x908DC60A and password "test12" (RabbitMQ's docs example).
        let salt = [0x90, 0x8d, 0xc6, 0x0a];
        let h = hash_with_salt(&salt, "test12");
        assert_eq!(h, "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR");
        assert!(verify_password(&h, "test12"));
    }
}
