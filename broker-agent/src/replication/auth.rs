//! The handshake's proofs: HMAC-SHA256 under the broker's shared secret over the peer's nonce,
//! the epoch and the node names, with a label per direction so that one side's proof can
//! never be replayed as the other's. Verification is constant-time (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::wire::{MAC_BYTES, NONCE_BYTES};

type HmacSha256 = Hmac<Sha256>;

/// Which side signs.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Follower,
    Leader,
}

fn mac(
    secret: &str,
    side: Side,
    nonce: &[u8; NONCE_BYTES],
    epoch: u64,
    leader: &str,
    follower: &str,
) -> HmacSha256 {
    let mut m =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    m.update(match side {
        Side::Follower => b"mooring-replication-v1 follower",
        Side::Leader => b"mooring-replication-v1 leader  ",
    });
    m.update(nonce);
    m.update(&epoch.to_le_bytes());
    for name in [leader, follower] {
        m.update(&(name.len() as u64).to_le_bytes());
        m.update(name.as_bytes());
    }
    m
}

/// The proof `side` sends, over the *other* side's nonce.
pub fn sign(
    secret: &str,
    side: Side,
    nonce: &[u8; NONCE_BYTES],
    epoch: u64,
    leader: &str,
    follower: &str,
) -> [u8; MAC_BYTES] {
    mac(secret, side, nonce, epoch, leader, follower)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a proof in constant time.
pub fn verify(
    secret: &str,
    side: Side,
    nonce: &[u8; NONCE_BYTES],
    epoch: u64,
    leader: &str,
    follower: &str,
    proof: &[u8; MAC_BYTES],
) -> bool {
    mac(secret, side, nonce, epoch, leader, follower)
        .verify_slice(proof)
        .is_ok()
}

pub fn nonce() -> [u8; NONCE_BYTES] {
    use rand::RngCore;
    let mut n = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_side_nonce_epoch_and_names() {
        let n = [3u8; NONCE_BYTES];
        let p = sign("s3cret", Side::Follower, &n, 5, "a", "b");
        assert!(verify("s3cret", Side::Follower, &n, 5, "a", "b", &p));
        assert!(!verify("other", Side::Follower, &n, 5, "a", "b", &p));
        assert!(!verify("s3cret", Side::Leader, &n, 5, "a", "b", &p));
        assert!(!verify(
            "s3cret",
            Side::Follower,
            &[4; NONCE_BYTES],
            5,
            "a",
            "b",
            &p
        ));
        assert!(!verify("s3cret", Side::Follower, &n, 6, "a", "b", &p));
        assert!(!verify("s3cret", Side::Follower, &n, 5, "ab", "", &p));
        assert_ne!(nonce(), nonce());
    }
}
