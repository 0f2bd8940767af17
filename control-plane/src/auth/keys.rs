//! Secrets at rest: access-key secrets are sealed under a master key before they
//! reach the store, and opened only to verify a signature.
//!
//! The construction uses only the workspace's `hmac`/`sha2` (no AEAD crate): a
//! random 16-byte nonce, a keystream of HMAC-SHA256(enc_key, nonce || counter)
//! blocks XORed with the plaintext, and an HMAC-SHA256(mac_key, nonce ||
//! ciphertext) tag checked in constant time before anything is decrypted
//! (encrypt-then-MAC). The two keys are derived from the master key with
//! distinct labels, so the MAC key never doubles as the encryption key.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 32;
/// Length of a master key in bytes; stored as 64 hex characters.
pub const MASTER_KEY_LEN: usize = 32;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Why a sealed secret could not be opened: the text is malformed, or it was
/// sealed under another master key (or altered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsealError {
    #[error("sealed secret is not well formed")]
    Malformed,
    #[error("sealed secret does not authenticate under this master key")]
    BadTag,
}

/// The key every stored secret is sealed under.
#[derive(Clone)]
pub struct MasterKey {
    enc: [u8; 32],
    mac: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    // The key never reaches a log line through Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn from_bytes(raw: &[u8; MASTER_KEY_LEN]) -> Self {
        MasterKey {
            enc: hmac(raw, &[b"mooring secret encryption"]),
            mac: hmac(raw, &[b"mooring secret authentication"]),
        }
    }

    /// Parses the file form: 64 hex characters, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text.trim()).ok()?;
        let raw: [u8; MASTER_KEY_LEN] = bytes.try_into().ok()?;
        Some(Self::from_bytes(&raw))
    }

    /// A fresh random key, returned with its file form.
    pub fn generate() -> (Self, String) {
        let mut raw = [0u8; MASTER_KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        (Self::from_bytes(&raw), hex::encode(raw))
    }

    fn keystream_xor(&self, nonce: &[u8], data: &mut [u8]) {
        for (counter, chunk) in data.chunks_mut(32).enumerate() {
            let counter = u32::try_from(counter).expect("secrets are far shorter than 128 GiB");
            let block = hmac(&self.enc, &[nonce, &counter.to_be_bytes()]);
            for (byte, k) in chunk.iter_mut().zip(block) {
                *byte ^= k;
            }
        }
    }

    /// Seals a secret: hex of nonce || ciphertext || tag.
    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut body = plaintext.as_bytes().to_vec();
        self.keystream_xor(&nonce, &mut body);
        let tag = hmac(&self.mac, &[&nonce, &body]);
        let mut out = nonce.to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        hex::encode(out)
    }

    /// Opens a secret sealed by [`MasterKey::seal`] under the same key.
    pub fn open(&self, sealed: &str) -> Result<String, UnsealError> {
        let raw = hex::decode(sealed).map_err(|_| UnsealError::Malformed)?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(UnsealError::Malformed);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let expected = hmac(&self.mac, &[nonce, body]);
        if !bool::from(expected.ct_eq(tag)) {
            return Err(UnsealError::BadTag);
        }
        let mut plain = body.to_vec();
        self.keystream_xor(nonce, &mut plain);
        String::from_utf8(plain).map_err(|_| UnsealError::Malformed)
    }
}

const KEY_ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn random_string(prefix: &str, alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    for _ in 0..len {
        // Both alphabets have a power-of-two size, so masking is unbiased.
        let i = (rng.next_u32() as usize) & (alphabet.len() - 1);
        out.push(char::from(alphabet[i]));
    }
    out
}

/// A new long-term access key id, AWS style (`AKIA` + 16 characters).
pub fn new_access_key_id() -> String {
    random_string("AKIA", KEY_ID_ALPHABET, 16)
}

/// A new secret access key: 40 characters, as AWS issues them.
pub fn new_secret_access_key() -> String {
    random_string("", SECRET_ALPHABET, 40)
}

/// A new unique id for an IAM entity, AWS style (`AIDA` for users, `AGPA`
/// for groups, `AROA` for roles, `ANPA` for managed policies).
pub fn new_entity_id(prefix: &str) -> String {
    random_string(prefix, KEY_ID_ALPHABET, 17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_hides_the_secret() {
        let (key, _) = MasterKey::generate();
        let secret = new_secret_access_key();
        let sealed = key.seal(&secret);
        assert!(!sealed.contains(&hex::encode(secret.as_bytes())));
        assert_eq!(key.open(&sealed), Ok(secret.clone()));
        // Random nonces: sealing twice never gives the same text.
        assert_ne!(key.seal(&secret), sealed);
    }

    #[test]
    fn another_key_or_a_flipped_bit_is_refused() {
        let (key, _) = MasterKey::generate();
        let (other, _) = MasterKey::generate();
        let sealed = key.seal("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        assert_eq!(other.open(&sealed), Err(UnsealError::BadTag));
        let mut raw = hex::decode(&sealed).expect("hex");
        raw[NONCE_LEN] ^= 1;
        assert_eq!(key.open(&hex::encode(raw)), Err(UnsealError::BadTag));
        assert_eq!(key.open("zz"), Err(UnsealError::Malformed));
        assert_eq!(key.open(&sealed[..20]), Err(UnsealError::Malformed));
    }

    #[test]
    fn the_file_form_round_trips() {
        let (key, text) = MasterKey::generate();
        let again = MasterKey::from_hex(&format!("{text}\n")).expect("parses");
        assert_eq!(again.open(&key.seal("s")), Ok("s".to_owned()));
        assert!(MasterKey::from_hex("abcd").is_none());
    }

    #[test]
    fn generated_ids_have_aws_shapes() {
        let id = new_access_key_id();
        assert!(id.starts_with("AKIA") && id.len() == 20, "{id}");
        assert_eq!(new_secret_access_key().len(), 40);
        assert_ne!(new_access_key_id(), id);
    }
}
