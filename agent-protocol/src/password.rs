//! RabbitMQ's default password hash (`rabbit_password_hashing_sha256`), shared by the control
//! plane (which hashes a user's password once, when it is set) and the engine (which verifies).
//!
//! Format: `base64(salt ++ sha256(salt ++ utf8(password)))` with a 4-byte salt, exactly what
//! `rabbitmqctl export_definitions` writes, so definitions move between RabbitMQ and Mooring.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

const SALT_BYTES: usize = 4;

/// Hashes `password` with the given salt. The caller draws the salt at random.
pub fn rabbit_password_hash(password: &str, salt: [u8; SALT_BYTES]) -> String {
    let mut raw = Vec::with_capacity(SALT_BYTES + 32);
    raw.extend_from_slice(&salt);
    raw.extend_from_slice(&salted_digest(&salt, password));
    STANDARD.encode(raw)
}

/// True when `password` matches `hash`. Malformed hashes match nothing.
pub fn rabbit_password_verify(password: &str, hash: &str) -> bool {
    let Ok(raw) = STANDARD.decode(hash) else {
        return false;
    };
    if raw.len() != SALT_BYTES + 32 {
        return false;
    }
    let (salt, expected) = raw.split_at(SALT_BYTES);
    let actual = salted_digest(salt, password);
    // Constant time: fold every byte difference before looking at the result.
    expected
        .iter()
        .zip(actual.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn salted_digest(salt: &[u8], password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rabbitmq_reference_vector() {
        // From RabbitMQ's documentation on computing password hashes: salt 908DC60A, password
        // "test12".
        let hash = rabbit_password_hash("test12", [0x90, 0x8D, 0xC6, 0x0A]);
        assert_eq!(hash, "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR");
        assert!(rabbit_password_verify("test12", &hash));
        assert!(!rabbit_password_verify("test13", &hash));
    }

    #[test]
    fn malformed_hashes_match_nothing() {
        assert!(!rabbit_password_verify("x", "not base64!"));
        assert!(!rabbit_password_verify("x", "AAAA"));
    }
}
