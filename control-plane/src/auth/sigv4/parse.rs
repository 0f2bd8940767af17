//! Reading the signature out of a request: the `Authorization` header form
//! and the presigned query-parameter form. Nothing here knows secrets or the
//! clock; it only checks that the parameters are present and well-formed.

use chrono::{DateTime, NaiveDateTime, Utc};

use super::canonical::percent_decode;
use super::{AuthError, RequestParts, ALGORITHM, AMZ_DATE_FORMAT};

/// Where the signature travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureForm {
    Header,
    Presigned,
}

/// The credential scope: `<date>/<region>/<service>/aws4_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub date: String,
    pub region: String,
    pub service: String,
    pub terminator: String,
}

impl Scope {
    /// The scope as it appears in the string to sign.
    pub fn to_scope_string(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.date, self.region, self.service, self.terminator
        )
    }
}

/// The signature parameters of a request, parsed but not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    pub form: SignatureForm,
    pub access_key_id: String,
    pub scope: Scope,
    /// As listed by the client; verified to contain no empty or repeated name.
    pub signed_headers: Vec<String>,
    /// The hex signature as sent; a malformed one simply never matches.
    pub signature: String,
    /// The request timestamp, in `YYYYMMDDTHHMMSSZ` form as used in the string to sign.
    pub amz_date: String,
    pub signed_at: DateTime<Utc>,
    /// `X-Amz-Expires` of a presigned request, in seconds.
    pub expires_secs: Option<u64>,
    /// `X-Amz-Security-Token`, from the header or the query.
    pub session_token: Option<String>,
}

/// The longest lifetime AWS allows a presigned request: seven days.
pub const MAX_EXPIRES_SECS: u64 = 7 * 24 * 3600;

/// The parameters of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationHeader<'a> {
    pub credential: &'a str,
    pub signed_headers: &'a str,
    pub signature: &'a str,
}

fn incomplete(msg: &str) -> AuthError {
    AuthError::Incomplete(msg.to_owned())
}

/// Parses an `Authorization` header value. Parameters are separated by commas
/// with optional whitespace; each of the three must appear exactly once.
pub fn parse_authorization_header(value: &str) -> Result<AuthorizationHeader<'_>, AuthError> {
    let value = value.trim_matches(|c: char| c == ' ' || c == '\t');
    let (algorithm, params) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(incomplete(
            "Unsupported AWS 'algorithm': the Authorization header must start with 'AWS4-HMAC-SHA256'.",
        ));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for param in params.split(',') {
        let param = param.trim_matches(|c: char| c == ' ' || c == '\t');
        if param.is_empty() {
            continue;
        }
        let Some((key, val)) = param.split_once('=') else {
            return Err(incomplete(
                "Invalid key=value pair (missing equal-sign) in Authorization header.",
            ));
        };
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(incomplete(
                    "Authorization header has an unknown parameter; expected Credential, SignedHeaders and Signature.",
                ))
            }
        };
        if slot.replace(val).is_some() {
            return Err(incomplete(
                "Authorization header repeats a parameter; Credential, SignedHeaders and Signature must appear once each.",
            ));
        }
    }
    let mut missing = String::new();
    for (name, slot) in [
        ("Credential", &credential),
        ("Signature", &signature),
        ("SignedHeaders", &signed_headers),
    ] {
        if slot.is_none() {
            missing.push_str(&format!(
                "Authorization header requires '{name}' parameter. "
            ));
        }
    }
    match (credential, signed_headers, signature) {
        (Some(credential), Some(signed_headers), Some(signature)) => Ok(AuthorizationHeader {
            credential,
            signed_headers,
            signature,
        }),
        _ => Err(AuthError::Incomplete(missing.trim_end().to_owned())),
    }
}

/// Splits `AKID/20150830/us-east-1/service/aws4_request`.
pub fn parse_credential(credential: &str) -> Result<(String, Scope), AuthError> {
    let mut parts = credential.split('/');
    let fields: [Option<&str>; 5] = std::array::from_fn(|_| parts.next());
    match (fields, parts.next()) {
        ([Some(akid), Some(date), Some(region), Some(service), Some(terminator)], None)
            if !akid.is_empty() && !date.is_empty() && !region.is_empty() && !service.is_empty() =>
        {
            Ok((
                akid.to_owned(),
                Scope {
                    date: date.to_owned(),
                    region: region.to_owned(),
                    service: service.to_owned(),
                    terminator: terminator.to_owned(),
                },
            ))
        }
        _ => Err(incomplete(
            "Credential must have the form '<access key id>/<YYYYMMDD>/<region>/<service>/aws4_request'.",
        )),
    }
}

/// Splits the `SignedHeaders` list; refuses empty or repeated names.
pub fn parse_signed_headers(list: &str) -> Result<Vec<String>, AuthError> {
    let names: Vec<String> = list.split(';').map(str::to_owned).collect();
    if names.iter().any(String::is_empty) {
        return Err(incomplete(
            "SignedHeaders must be a ';'-separated list of header names.",
        ));
    }
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(incomplete("SignedHeaders must not repeat a header name."));
        }
    }
    Ok(names)
}

/// Parses a `YYYYMMDDTHHMMSSZ` timestamp.
pub fn parse_amz_date(s: &str) -> Result<DateTime<Utc>, AuthError> {
    // chrono accepts short fields; the fixed length keeps the form exact.
    if s.len() != 16 {
        return Err(incomplete(
            "Date must be in ISO-8601 'basic format' (YYYYMMDD'T'HHMMSS'Z').",
        ));
    }
    NaiveDateTime::parse_from_str(s, AMZ_DATE_FORMAT)
        .map(|t| t.and_utc())
        .map_err(|_| incomplete("Date must be in ISO-8601 'basic format' (YYYYMMDD'T'HHMMSS'Z')."))
}

fn single_header<'a>(parts: &RequestParts<'a>, name: &str) -> Result<Option<&'a str>, AuthError> {
    let mut found = None;
    for (n, v) in parts.headers {
        if n.eq_ignore_ascii_case(name) {
            if found.is_some() {
                return Err(AuthError::Incomplete(format!(
                    "The request must carry at most one '{name}' header."
                )));
            }
            found = Some(*v);
        }
    }
    Ok(found)
}

/// Reads the signature parameters of a request in either form.
pub fn parse_request(parts: &RequestParts<'_>) -> Result<SignedRequest, AuthError> {
    let authorization = single_header(parts, "authorization")?;
    let presigned = parts
        .query
        .split('&')
        .any(|p| p.split('=').next() == Some("X-Amz-Algorithm"));
    match (authorization, presigned) {
        (Some(_), true) => Err(incomplete(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the Authorization header should be specified.",
        )),
        (None, false) => Err(AuthError::MissingAuthentication),
        (Some(value), false) => parse_header_form(parts, value),
        (None, true) => parse_presigned_form(parts.query),
    }
}

fn parse_header_form(parts: &RequestParts<'_>, value: &str) -> Result<SignedRequest, AuthError> {
    let header = parse_authorization_header(value)?;
    let (access_key_id, scope) = parse_credential(header.credential)?;
    let signed_headers = parse_signed_headers(header.signed_headers)?;
    let (amz_date, signed_at) = match single_header(parts, "x-amz-date")? {
        Some(d) => (d.trim().to_owned(), parse_amz_date(d.trim())?),
        None => match single_header(parts, "date")? {
            Some(d) => {
                let t = DateTime::parse_from_rfc2822(d.trim())
                    .map_err(|_| incomplete("The 'Date' header must be an RFC 7231 date."))?
                    .with_timezone(&Utc);
                (t.format(AMZ_DATE_FORMAT).to_string(), t)
            }
            None => {
                return Err(incomplete(
                    "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
                ))
            }
        },
    };
    let session_token = single_header(parts, "x-amz-security-token")?.map(str::to_owned);
    Ok(SignedRequest {
        form: SignatureForm::Header,
        access_key_id,
        scope,
        signed_headers,
        signature: header.signature.to_owned(),
        amz_date,
        signed_at,
        expires_secs: None,
        session_token,
    })
}

/// The `X-Amz-*` parameters of a presigned query.
#[derive(Default)]
struct PresignedParams {
    algorithm: Option<String>,
    credential: Option<String>,
    date: Option<String>,
    signed_headers: Option<String>,
    signature: Option<String>,
    expires: Option<String>,
    security_token: Option<String>,
}

fn parse_presigned_form(query: &str) -> Result<SignedRequest, AuthError> {
    let mut p = PresignedParams::default();
    for piece in query.split('&').filter(|s| !s.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let slot = match name {
            "X-Amz-Algorithm" => &mut p.algorithm,
            "X-Amz-Credential" => &mut p.credential,
            "X-Amz-Date" => &mut p.date,
            "X-Amz-SignedHeaders" => &mut p.signed_headers,
            "X-Amz-Signature" => &mut p.signature,
            "X-Amz-Expires" => &mut p.expires,
            "X-Amz-Security-Token" => &mut p.security_token,
            _ => continue,
        };
        let decoded = String::from_utf8(percent_decode(value))
            .map_err(|_| incomplete("AWS query-string parameters must be UTF-8."))?;
        if slot.replace(decoded).is_some() {
            return Err(incomplete(
                "AWS query-string parameters must not be repeated. Re-examine the query-string parameters.",
            ));
        }
    }
    let mut missing = String::new();
    for (name, slot) in [
        ("X-Amz-Algorithm", &p.algorithm),
        ("X-Amz-Credential", &p.credential),
        ("X-Amz-Signature", &p.signature),
        ("X-Amz-SignedHeaders", &p.signed_headers),
        ("X-Amz-Date", &p.date),
    ] {
        if slot.is_none() {
            missing.push_str(&format!(
                "AWS query-string parameters must include '{name}'. "
            ));
        }
    }
    let (Some(algorithm), Some(credential), Some(signature), Some(signed_headers), Some(date)) = (
        p.algorithm,
        p.credential,
        p.signature,
        p.signed_headers,
        p.date,
    ) else {
        missing.push_str("Re-examine the query-string parameters.");
        return Err(AuthError::Incomplete(missing));
    };
    if algorithm != ALGORITHM {
        return Err(incomplete(
            "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\".",
        ));
    }
    let (access_key_id, scope) = parse_credential(&credential)?;
    let signed_headers = parse_signed_headers(&signed_headers)?;
    let signed_at = parse_amz_date(&date)?;
    let expires_secs = match p.expires {
        None => None,
        Some(e) => {
            let secs: u64 = e
                .parse()
                .map_err(|_| incomplete("X-Amz-Expires should be a number."))?;
            if secs == 0 || secs > MAX_EXPIRES_SECS {
                return Err(incomplete(
                    "X-Amz-Expires must be between 1 and 604800 seconds (seven days).",
                ));
            }
            Some(secs)
        }
    };
    Ok(SignedRequest {
        form: SignatureForm::Presigned,
        access_key_id,
        scope,
        signed_headers,
        signature,
        amz_date: date,
        signed_at,
        expires_secs,
        session_token: p.security_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_header_with_and_without_spaces() {
        let h = parse_authorization_header(
            "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/mq/aws4_request,SignedHeaders=host;x-amz-date,  Signature=ab",
        )
        .expect("valid header");
        assert_eq!(h.credential, "AK/20150830/us-east-1/mq/aws4_request");
        assert_eq!(h.signed_headers, "host;x-amz-date");
        assert_eq!(h.signature, "ab");
    }

    #[test]
    fn incomplete_headers_name_what_is_missing() {
        let err = parse_authorization_header("AWS4-HMAC-SHA256 Credential=a/b/c/d/e")
            .expect_err("incomplete");
        let AuthError::Incomplete(msg) = err else {
            panic!("wrong error {err:?}")
        };
        assert!(msg.contains("'Signature'") && msg.contains("'SignedHeaders'"));
        assert!(!msg.contains("'Credential'"));
        for bad in [
            "",
            "AWS4-HMAC-SHA512 Credential=a, SignedHeaders=host, Signature=x",
            "AWS4-HMAC-SHA256 Credential=a, Credential=b, SignedHeaders=host, Signature=x",
            "AWS4-HMAC-SHA256 Credential, SignedHeaders=host, Signature=x",
            "AWS4-HMAC-SHA256 Foo=1, Credential=a, SignedHeaders=host, Signature=x",
        ] {
            assert!(
                matches!(
                    parse_authorization_header(bad),
                    Err(AuthError::Incomplete(_))
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn credential_needs_five_parts() {
        let (akid, scope) = parse_credential("AK/20150830/us-east-1/mq/aws4_request").expect("ok");
        assert_eq!(akid, "AK");
        assert_eq!(
            scope.to_scope_string(),
            "20150830/us-east-1/mq/aws4_request"
        );
        for bad in [
            "",
            "AK/20150830/us-east-1/mq",
            "AK/a/b/c/d/e",
            "/20150830/r/s/aws4_request",
        ] {
            assert!(parse_credential(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn amz_date_is_exact() {
        assert!(parse_amz_date("20150830T123600Z").is_ok());
        for bad in [
            "2015083T123600Z",
            "20150830T123600",
            "20150830T126000Z",
            "2015-08-30T12:36:00Z",
        ] {
            assert!(parse_amz_date(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn signed_headers_refuse_repeats_and_blanks() {
        assert_eq!(
            parse_signed_headers("host;x-amz-date").expect("ok"),
            vec!["host".to_owned(), "x-amz-date".to_owned()]
        );
        assert!(parse_signed_headers("host;;x").is_err());
        assert!(parse_signed_headers("host;host").is_err());
        assert!(parse_signed_headers("").is_err());
    }

    #[test]
    fn both_forms_at_once_are_refused() {
        let headers = [(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=host, Signature=x",
        )];
        let parts = RequestParts {
            method: "GET",
            path: "/",
            query: "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            headers: &headers,
            payload: crate::auth::sigv4::Payload::Bytes(b""),
        };
        assert!(matches!(
            parse_request(&parts),
            Err(AuthError::Incomplete(_))
        ));
        let parts = RequestParts {
            method: "GET",
            path: "/",
            query: "",
            headers: &[],
            payload: crate::auth::sigv4::Payload::Bytes(b""),
        };
        assert_eq!(parse_request(&parts), Err(AuthError::MissingAuthentication));
    }
}
