//! Why a request failed authentication, and how AWS names that failure.
//!
//! The variants carry only what the caller already sent or may know (which
//! parameter is missing, the dates involved). Nothing here reveals whether an
//! access key exists with a different secret, what the server computed, or
//! which part of the canonical request differed.

use chrono::{DateTime, Utc};

/// The wire protocol of the service answering, which decides AWS's error codes:
/// the REST-JSON services (Amazon MQ) and the Query services (IAM, STS) name
/// the same failures differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    RestJson,
    Query,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither an `Authorization` header nor `X-Amz-Algorithm` query parameter.
    #[error("Missing Authentication Token")]
    MissingAuthentication,
    /// The signature parameters are absent or malformed; the reason is ours,
    /// written for the client, and never echoes its input.
    #[error("{0}")]
    Incomplete(String),
    /// The credential scope names another region, service or terminator, or a
    /// date that disagrees with the request's timestamp.
    #[error("{0}")]
    BadScope(String),
    /// `host` is missing from the signed headers.
    #[error("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")]
    HostNotSigned,
    /// An `x-amz-*` header is present but not covered by the signature.
    #[error("There were headers present in the request which were not signed")]
    HeadersNotSigned,
    /// The payload is declared unsigned (or streamed) where we require it signed.
    #[error("The request payload must be signed: 'x-amz-content-sha256' must be the SHA-256 of the body.")]
    UnsignedPayload,
    /// The declared `x-amz-content-sha256` is not the hash of the body received.
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    PayloadHashMismatch,
    /// The access key id is unknown, or its session token is wrong or missing.
    /// One variant for both so a caller cannot tell which.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// Temporary credentials past their expiration. Only answered once the
    /// signature verified, so it tells nothing to someone without the secret.
    #[error("The security token included in the request is expired")]
    ExpiredToken,
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")]
    SignatureMismatch,
    /// Signed too long ago (or, presigned, past its `X-Amz-Expires`).
    #[error("Signature expired: {} is now earlier than {} ({} - {}.)", amz(.signed_at), amz(.limit), amz(.now), .allowance)]
    Expired {
        signed_at: DateTime<Utc>,
        limit: DateTime<Utc>,
        now: DateTime<Utc>,
        /// Human form of the allowance, e.g. "15 min" or "3600 sec".
        allowance: String,
    },
    /// Signed further in the future than the allowed clock skew.
    #[error("Signature not yet current: {} is still later than {} ({} + {}.)", amz(.signed_at), amz(.limit), amz(.now), .allowance)]
    NotYetValid {
        signed_at: DateTime<Utc>,
        limit: DateTime<Utc>,
        now: DateTime<Utc>,
        allowance: String,
    },
}

fn amz(t: &DateTime<Utc>) -> String {
    t.format(super::AMZ_DATE_FORMAT).to_string()
}

impl AuthError {
    /// The error name AWS puts in `x-amzn-ErrorType` (REST-JSON) or `<Code>` (Query).
    pub fn code(&self, protocol: Protocol) -> &'static str {
        use AuthError::*;
        match (self, protocol) {
            (MissingAuthentication, Protocol::RestJson) => "MissingAuthenticationTokenException",
            (MissingAuthentication, Protocol::Query) => "MissingAuthenticationToken",
            (Incomplete(_), Protocol::RestJson) => "IncompleteSignatureException",
            (Incomplete(_), Protocol::Query) => "IncompleteSignature",
            (UnrecognizedClient, Protocol::RestJson) => "UnrecognizedClientException",
            (UnrecognizedClient, Protocol::Query) => "InvalidClientTokenId",
            (ExpiredToken, Protocol::RestJson) => "ExpiredTokenException",
            (ExpiredToken, Protocol::Query) => "ExpiredToken",
            (
                BadScope(_)
                | HostNotSigned
                | HeadersNotSigned
                | UnsignedPayload
                | PayloadHashMismatch
                | SignatureMismatch
                | Expired { .. }
                | NotYetValid { .. },
                Protocol::RestJson,
            ) => "InvalidSignatureException",
            (
                BadScope(_)
                | HostNotSigned
                | HeadersNotSigned
                | UnsignedPayload
                | PayloadHashMismatch
                | SignatureMismatch
                | Expired { .. }
                | NotYetValid { .. },
                Protocol::Query,
            ) => "SignatureDoesNotMatch",
        }
    }

    /// The HTTP status AWS answers with: 400 for a malformed signature in the
    /// Query protocol, 403 for everything else.
    pub fn http_status(&self, protocol: Protocol) -> u16 {
        match (self, protocol) {
            (AuthError::Incomplete(_) | AuthError::ExpiredToken, Protocol::Query) => 400,
            _ => 403,
        }
    }

    /// The message to send to the client (the `Display` form).
    pub fn message(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_protocol() {
        let e = AuthError::SignatureMismatch;
        assert_eq!(e.code(Protocol::RestJson), "InvalidSignatureException");
        assert_eq!(e.code(Protocol::Query), "SignatureDoesNotMatch");
        assert_eq!(
            AuthError::UnrecognizedClient.code(Protocol::Query),
            "InvalidClientTokenId"
        );
        assert_eq!(
            AuthError::ExpiredToken.code(Protocol::RestJson),
            "ExpiredTokenException"
        );
        assert_eq!(
            AuthError::ExpiredToken.code(Protocol::Query),
            "ExpiredToken"
        );
        assert_eq!(
            AuthError::Incomplete("x".into()).http_status(Protocol::Query),
            400
        );
        assert!(e.message().starts_with(
            "The request signature we calculated does not match the signature you provided."
        ));
    }

    #[test]
    fn expired_message_has_aws_shape() {
        let t = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect("test date")
                .with_timezone(&Utc)
        };
        let e = AuthError::Expired {
            signed_at: t("2015-08-30T12:36:00Z"),
            limit: t("2015-08-30T12:41:00Z"),
            now: t("2015-08-30T12:56:00Z"),
            allowance: "15 min".into(),
        };
        assert_eq!(
            e.message(),
            "Signature expired: 20150830T123600Z is now earlier than 20150830T124100Z (20150830T125600Z - 15 min.)"
        );
    }
}
