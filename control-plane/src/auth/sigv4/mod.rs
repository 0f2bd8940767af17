//! AWS Signature Version 4 verification, as AWS's non-S3 services do it.
//!
//! Pure: the caller supplies the request as received, a way to find secrets,
//! the configuration and the current time. See [`verify`] for the one-shot
//! form and [`parse_request`] + [`verify_parsed`] for callers that fetch the
//! secret asynchronously in between.

mod canonical;
mod error;
mod parse;
mod sign;
mod verify;

use chrono::{DateTime, Duration, Utc};

pub use canonical::{
    canonical_headers, canonical_query, canonical_request, canonical_uri, normalize_path,
    sha256_hex, string_to_sign, CanonicalInput, EMPTY_SHA256,
};
pub use error::{AuthError, Protocol};
pub use parse::{
    parse_amz_date, parse_authorization_header, parse_credential, parse_request,
    parse_signed_headers, AuthorizationHeader, Scope, SignatureForm, SignedRequest,
    MAX_EXPIRES_SECS,
};
pub use sign::{sign_request, SigningParams};
pub use verify::{
    expected_canonical_request, signature, signing_key, verify, verify_parsed,
    verify_parsed_cached, SigningKeyCache, UNSIGNED_PAYLOAD,
};

/// The only algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// `X-Amz-Date`'s "basic ISO 8601" form.
pub const AMZ_DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";
/// How far a request's timestamp may be from the server's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(15);

/// The body of the request, or its SHA-256 when the HTTP layer hashed it
/// while reading.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    Bytes(&'a [u8]),
    Sha256([u8; 32]),
}

/// A request as it arrived, before any decoding.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The path exactly as on the wire (still percent-encoded), without the query.
    pub path: &'a str,
    /// The raw query string, without the `?`; empty when there is none.
    pub query: &'a str,
    /// Every header in the order received, repeated names included. Must
    /// contain `host` (for HTTP/2, the `:authority`); see [`header_pairs`].
    pub headers: &'a [(&'a str, &'a str)],
    pub payload: Payload<'a>,
}

/// Borrows an `http::HeaderMap` as the header list of [`RequestParts`],
/// adding `host` from the URI authority when the map has none (HTTP/2).
/// A value that is not UTF-8 is replaced by U+FFFD: it can then never match
/// a signature, but still counts as present for the signed-header rules.
pub fn header_pairs<'a>(
    map: &'a http::HeaderMap,
    authority: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut out: Vec<(&str, &str)> = map
        .iter()
        .map(|(name, value)| (name.as_str(), value.to_str().unwrap_or("\u{FFFD}")))
        .collect();
    if let (false, Some(authority)) = (map.contains_key(http::header::HOST), authority) {
        out.push(("host", authority));
    }
    out
}

/// A secret access key, and the session token that must accompany it when
/// the key is temporary.
#[derive(Clone)]
pub struct Credential {
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credential {
    // Secrets never reach a log line through Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Finds the credential of an access key id; `None` when there is no such key.
pub trait SecretLookup {
    fn lookup(&self, access_key_id: &str) -> Option<Credential>;
}

impl<F> SecretLookup for F
where
    F: Fn(&str) -> Option<Credential>,
{
    fn lookup(&self, access_key_id: &str) -> Option<Credential> {
        self(access_key_id)
    }
}

/// What the endpoint accepts.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// The region requests must be scoped to.
    pub region: String,
    /// The service names accepted in the scope (`mq`; `iam` and `sts` on the
    /// IAM endpoint). The first one is named in errors.
    pub services: Vec<String>,
    pub max_skew: Duration,
    /// Whether `x-amz-content-sha256: UNSIGNED-PAYLOAD` is accepted. Off by
    /// default: the Amazon MQ API carries its parameters in the body.
    pub allow_unsigned_payload: bool,
}

impl VerifyConfig {
    pub fn new(region: impl Into<String>, services: &[&str]) -> Self {
        Self {
            region: region.into(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            max_skew: MAX_CLOCK_SKEW,
            allow_unsigned_payload: false,
        }
    }
}

/// Who signed a request that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCaller {
    pub access_key_id: String,
    /// Passed through for the caller's records; already checked against the
    /// credential's own token.
    pub session_token: Option<String>,
    pub region: String,
    pub service: String,
    pub signed_at: DateTime<Utc>,
    pub form: SignatureForm,
}

#[cfg(test)]
mod tests;
