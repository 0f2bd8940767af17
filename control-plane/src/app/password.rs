//! Broker user passwords, stored the way RabbitMQ stores them
//! (`rabbit_password_hashing_sha256`): base64(salt ++ SHA-256(salt ++ password)) with a
//! random 4-byte salt. The engine verifies against this with the same shared code
//! (`mooring_agent_protocol`); the plaintext is never kept.

use rand::RngCore as _;

/// Hashes `password` with a fresh random salt.
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    mooring_agent_protocol::rabbit_password_hash(password, salt)
}

/// Whether `password` matches `stored` (in constant time).
pub fn verify(password: &str, stored: &str) -> bool {
    mooring_agent_protocol::rabbit_password_verify(password, stored)
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn is_rabbitmqs_format() {
        // RabbitMQ: base64(<<Salt/binary, (crypto:hash(sha256, <<Salt/binary, Pw/binary>>))/binary>>)
        let stored = hash("test12-long-enough");
        let raw = STANDARD.decode(&stored).expect("base64");
        assert_eq!(raw.len(), 4 + 32);
        let (salt, digest) = raw.split_at(4);
        assert_eq!(
            digest,
            &Sha256::digest([salt, b"test12-long-enough"].concat())[..]
        );
    }

    #[test]
    fn salted_hashes_differ_and_verify() {
        let a = hash("correct horse battery");
        let b = hash("correct horse battery");
        assert_ne!(a, b, "salts must differ");
        assert!(verify("correct horse battery", &a));
        assert!(!verify("wrong horse battery", &a));
        assert!(!a.contains("horse"));
    }
}
