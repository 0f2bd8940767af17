//! Broker user passwords, stored the way RabbitMQ stores them
//! (`rabbit_password_hashing_sha256`): base64(salt ++ SHA-256(salt ++ password)) with
//! a random 4-byte salt. The engine verifies against this; the plaintext is never kept.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

const SALT_LEN: usize = 4;

pub fn hash(password: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::thread_rng().fill_bytes(&mut salt);
    hash_with_salt(password, salt)
}

fn hash_with_salt(password: &str, salt: [u8; SALT_LEN]) -> String {
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(password.as_bytes())
        .finalize();
    let mut out = Vec::with_capacity(SALT_LEN + digest.len());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&digest);
    STANDARD.encode(out)
}

/// Whether `password` matches `stored` (in constant time).
pub fn verify(password: &str, stored: &str) -> bool {
    let Ok(bytes) = STANDARD.decode(stored) else {
        return false;
    };
    if bytes.len() != SALT_LEN + 32 {
        return false;
    }
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&bytes[..SALT_LEN]);
    let expected = hash_with_salt(password, salt);
    expected.as_bytes().ct_eq(stored.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rabbitmq_for_a_known_salt() {
        // RabbitMQ: base64(<<Salt/binary, (crypto:hash(sha256, <<Salt/binary, Pw/binary>>))/binary>>)
        let salt = [0x90, 0x8d, 0xc6, 0x0a];
        let expected = {
            let d = Sha256::digest([&salt[..], b"test12"].concat());
            STANDARD.encode([&salt[..], &d[..]].concat())
        };
        assert_eq!(hash_with_salt("test12", salt), expected);
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
