//! Checking a parsed signature: scope, clock, signed-header rules, payload
//! hash, session token and finally the HMAC itself, compared in constant time.

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::canonical::{canonical_request, sha256_hex, string_to_sign, CanonicalInput};
use super::parse::{parse_request, Scope, SignatureForm, SignedRequest};
use super::{
    AuthError, Credential, Payload, RequestParts, SecretLookup, VerifiedCaller, VerifyConfig,
};

type HmacSha256 = Hmac<Sha256>;

/// The payload token a client may declare instead of the body's hash.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The SigV4 signing key for a secret and scope.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_secret = format!("AWS4{secret}");
    let k_date = hmac(k_secret.as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// The signing key last derived for one secret, kept while requests keep the
/// same scope (date, region, service; the date changes once a day): the four
/// HMACs of the derivation are a third of verification's cost. Belongs to one
/// credential; it is as sensitive as the secret itself.
#[derive(Default)]
pub struct SigningKeyCache {
    last: parking_lot::Mutex<Option<(Scope, [u8; 32])>>,
}

impl std::fmt::Debug for SigningKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKeyCache(<redacted>)")
    }
}

impl SigningKeyCache {
    /// The signing key of `secret` for `scope`.
    pub fn key(&self, secret: &str, scope: &Scope) -> [u8; 32] {
        let mut last = self.last.lock();
        if let Some((cached, key)) = last.as_ref() {
            if cached.date == scope.date
                && cached.region == scope.region
                && cached.service == scope.service
            {
                return *key;
            }
        }
        let key = signing_key(secret, &scope.date, &scope.region, &scope.service);
        *last = Some((scope.clone(), key));
        key
    }
}

/// The signature of a string to sign under a signing key.
pub fn signature(key: &[u8; 32], string_to_sign: &str) -> [u8; 32] {
    hmac(key, string_to_sign.as_bytes())
}

fn check_scope(signed: &SignedRequest, cfg: &VerifyConfig) -> Result<(), AuthError> {
    let scope = &signed.scope;
    if scope.terminator != "aws4_request" {
        return Err(AuthError::BadScope(
            "Credential should be scoped with a valid terminator: 'aws4_request'.".into(),
        ));
    }
    if !signed.amz_date.starts_with(scope.date.as_str()) || scope.date.len() != 8 {
        return Err(AuthError::BadScope(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP.".into(),
        ));
    }
    if scope.region != cfg.region {
        return Err(AuthError::BadScope(
            "Credential should be scoped to a valid region.".into(),
        ));
    }
    if !cfg.services.contains(&scope.service) {
        let expected = cfg.services.first().map(String::as_str).unwrap_or("");
        return Err(AuthError::BadScope(format!(
            "Credential should be scoped to correct service: '{expected}'."
        )));
    }
    Ok(())
}

fn describe(d: Duration) -> String {
    if d.num_seconds() % 60 == 0 {
        format!("{} min", d.num_minutes())
    } else {
        format!("{} sec", d.num_seconds())
    }
}

fn check_time(
    signed: &SignedRequest,
    cfg: &VerifyConfig,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    let t = signed.signed_at;
    if t > now + cfg.max_skew {
        return Err(AuthError::NotYetValid {
            signed_at: t,
            limit: now + cfg.max_skew,
            now,
            allowance: describe(cfg.max_skew),
        });
    }
    // A presigned request lives for its X-Amz-Expires; a header-signed one,
    // and a presigned one without expiry, for the clock skew.
    let lifetime = match (signed.form, signed.expires_secs) {
        (SignatureForm::Presigned, Some(secs)) => {
            Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX))
        }
        _ => cfg.max_skew,
    };
    if t < now - lifetime {
        return Err(AuthError::Expired {
            signed_at: t,
            limit: now - lifetime,
            now,
            allowance: describe(lifetime),
        });
    }
    Ok(())
}

fn check_signed_headers(signed: &SignedRequest, parts: &RequestParts<'_>) -> Result<(), AuthError> {
    if !signed.signed_headers.iter().any(|h| h == "host") {
        return Err(AuthError::HostNotSigned);
    }
    // Every x-amz-* header steers the service, so each must be covered.
    let unsigned = parts.headers.iter().any(|(name, _)| {
        name.len() > 6
            && name.as_bytes()[..6].eq_ignore_ascii_case(b"x-amz-")
            && !signed
                .signed_headers
                .iter()
                .any(|s| s.eq_ignore_ascii_case(name))
    });
    if unsigned {
        return Err(AuthError::HeadersNotSigned);
    }
    Ok(())
}

/// The payload hash that goes into the canonical request.
fn payload_hash(parts: &RequestParts<'_>, cfg: &VerifyConfig) -> Result<String, AuthError> {
    let actual = match parts.payload {
        Payload::Bytes(body) => sha256_hex(body),
        Payload::Sha256(hash) => hex::encode(hash),
    };
    let mut declared = parts
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-amz-content-sha256"))
        .map(|(_, v)| v.trim());
    let first = declared.next();
    if declared.next().is_some() {
        return Err(AuthError::Incomplete(
            "The request must carry at most one 'x-amz-content-sha256' header.".into(),
        ));
    }
    match first {
        None => Ok(actual),
        Some(UNSIGNED_PAYLOAD) if cfg.allow_unsigned_payload => Ok(UNSIGNED_PAYLOAD.to_owned()),
        Some(v) if v.starts_with("UNSIGNED-PAYLOAD") || v.starts_with("STREAMING-") => {
            Err(AuthError::UnsignedPayload)
        }
        // The signer put the declared value in its canonical request verbatim.
        Some(v) if v.len() == actual.len() && v.eq_ignore_ascii_case(&actual) => Ok(v.to_owned()),
        Some(_) => Err(AuthError::PayloadHashMismatch),
    }
}

fn check_session_token(cred: &Credential, signed: &SignedRequest) -> Result<(), AuthError> {
    let ok = match (&cred.session_token, &signed.session_token) {
        (None, None) => true,
        (Some(expected), Some(given)) => bool::from(expected.as_bytes().ct_eq(given.as_bytes())),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(AuthError::UnrecognizedClient)
    }
}

/// The canonical request the client must have signed, or `None` when one of
/// the headers it claims to have signed is absent.
pub fn expected_canonical_request(
    parts: &RequestParts<'_>,
    signed: &SignedRequest,
    payload_hash: &str,
) -> Option<String> {
    let signed_headers: Vec<&str> = signed.signed_headers.iter().map(String::as_str).collect();
    canonical_request(&CanonicalInput {
        method: parts.method,
        raw_path: parts.path,
        raw_query: parts.query,
        skip_param: match signed.form {
            SignatureForm::Presigned => Some("X-Amz-Signature"),
            SignatureForm::Header => None,
        },
        headers: parts.headers,
        signed_headers: &signed_headers,
        payload_hash,
    })
}

fn check_signature(
    parts: &RequestParts<'_>,
    signed: &SignedRequest,
    payload_hash: &str,
    secret: &str,
    keys: Option<&SigningKeyCache>,
) -> Result<(), AuthError> {
    let canonical = expected_canonical_request(parts, signed, payload_hash)
        .ok_or(AuthError::SignatureMismatch)?;
    let sts = string_to_sign(
        &signed.amz_date,
        &signed.scope.to_scope_string(),
        &canonical,
    );
    let scope = &signed.scope;
    let key = match keys {
        Some(cache) => cache.key(secret, scope),
        None => signing_key(secret, &scope.date, &scope.region, &scope.service),
    };
    let expected = signature(&key, &sts);
    let mut provided = [0u8; 32];
    if hex::decode_to_slice(&signed.signature, &mut provided).is_err() {
        return Err(AuthError::SignatureMismatch);
    }
    if bool::from(expected.ct_eq(&provided)) {
        Ok(())
    } else {
        Err(AuthError::SignatureMismatch)
    }
}

/// The checks that need no secret: scope and clock.
fn precheck(
    signed: &SignedRequest,
    cfg: &VerifyConfig,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    check_scope(signed, cfg)?;
    check_time(signed, cfg, now)
}

/// The checks that need the credential, after [`precheck`].
fn check_with_credential(
    parts: &RequestParts<'_>,
    signed: &SignedRequest,
    credential: Option<&Credential>,
    keys: Option<&SigningKeyCache>,
    cfg: &VerifyConfig,
) -> Result<VerifiedCaller, AuthError> {
    check_signed_headers(signed, parts)?;
    let payload_hash = payload_hash(parts, cfg)?;
    let credential = credential.ok_or(AuthError::UnrecognizedClient)?;
    check_session_token(credential, signed)?;
    check_signature(
        parts,
        signed,
        &payload_hash,
        &credential.secret_access_key,
        keys,
    )?;
    Ok(VerifiedCaller {
        access_key_id: signed.access_key_id.clone(),
        session_token: signed.session_token.clone(),
        region: signed.scope.region.clone(),
        service: signed.scope.service.clone(),
        signed_at: signed.signed_at,
        form: signed.form,
    })
}

/// Verifies an already parsed request against the credential found for its
/// access key id (`None`: no such key). For callers that look the secret up
/// asynchronously between [`parse_request`] and this.
pub fn verify_parsed(
    parts: &RequestParts<'_>,
    signed: &SignedRequest,
    credential: Option<&Credential>,
    cfg: &VerifyConfig,
    now: DateTime<Utc>,
) -> Result<VerifiedCaller, AuthError> {
    precheck(signed, cfg, now)?;
    check_with_credential(parts, signed, credential, None, cfg)
}

/// [`verify_parsed`] with the credential's [`SigningKeyCache`], for callers that
/// keep credentials between requests.
pub fn verify_parsed_cached(
    parts: &RequestParts<'_>,
    signed: &SignedRequest,
    credential: Option<(&Credential, &SigningKeyCache)>,
    cfg: &VerifyConfig,
    now: DateTime<Utc>,
) -> Result<VerifiedCaller, AuthError> {
    precheck(signed, cfg, now)?;
    let (credential, keys) = credential.unzip();
    check_with_credential(parts, signed, credential, keys, cfg)
}

/// Verifies a SigV4-signed request, header or presigned form.
pub fn verify(
    parts: &RequestParts<'_>,
    secrets: &dyn SecretLookup,
    cfg: &VerifyConfig,
    now: DateTime<Utc>,
) -> Result<VerifiedCaller, AuthError> {
    let signed = parse_request(parts)?;
    // Requests that can never verify cost no lookup.
    precheck(&signed, cfg, now)?;
    let credential = secrets.lookup(&signed.access_key_id);
    check_with_credential(parts, &signed, credential.as_ref(), None, cfg)
}

#[cfg(test)]
mod key_cache_tests {
    use super::*;

    fn scope(date: &str, service: &str) -> Scope {
        Scope {
            date: date.to_owned(),
            region: "us-east-1".to_owned(),
            service: service.to_owned(),
            terminator: "aws4_request".to_owned(),
        }
    }

    #[test]
    fn cached_keys_are_the_derived_ones_for_each_scope() {
        let cache = SigningKeyCache::default();
        for (date, service) in [
            ("20261128", "mq"),
            ("20261128", "mq"),
            ("20261129", "mq"),
            ("20261129", "iam"),
            ("20261128", "mq"),
        ] {
            assert_eq!(
                cache.key("secret", &scope(date, service)),
                signing_key("secret", date, "us-east-1", service),
                "{date} {service}"
            );
        }
        assert!(!format!("{cache:?}").contains("secret"));
    }
}
