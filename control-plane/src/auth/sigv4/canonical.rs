//! The canonical request of SigV4, as AWS's non-S3 services build it.
//!
//! The server sees the path and query exactly as they crossed the wire
//! (already percent-encoded once by the client). The signer canonicalised the
//! same bytes, so the rules here are applied to the raw strings:
//! - path: dot segments removed and repeated slashes collapsed, then every
//!   byte except unreserved characters and `/` percent-encoded again (a `%`
//!   becomes `%25`: the "double encoding" of non-S3 services);
//! - query: each name and value percent-decoded (a `+` stays a literal plus,
//!   not a space), re-encoded strictly, and sorted by name then value;
//! - headers: only the signed ones, named in lowercase, each value trimmed with
//!   inner runs of whitespace collapsed to one space, repeated headers joined
//!   with `,` in the order received.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// SHA-256 of the empty string, the payload hash of a request without body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// Percent-encodes every byte except the unreserved set (and `/` when
/// `keep_slash`), appending to `out`.
fn encode_into(out: &mut String, bytes: &[u8], keep_slash: bool) {
    for &b in bytes {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(b & 0xf)]));
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes. A `%` not followed by two hex digits is kept as a
/// literal `%` (it is then re-encoded as `%25`, as the AWS SDKs do), and `+`
/// is a literal plus: SigV4 does not use form decoding.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// RFC 3986 section 5.2.4 dot-segment removal plus collapsing of empty
/// segments, on an absolute path. Keeps a trailing slash when the input ends
/// in a directory form (`/`, `/.`, `/..`).
pub fn normalize_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    let dir_form = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    if out.is_empty() || (dir_form && !out.ends_with('/')) {
        out.push('/');
    }
    out
}

/// The canonical URI: the normalised raw path, encoded once more.
pub fn canonical_uri(raw_path: &str) -> String {
    let normalized = normalize_path(raw_path);
    let mut out = String::with_capacity(normalized.len() + 8);
    encode_into(&mut out, normalized.as_bytes(), true);
    out
}

/// Splits a raw query string into decoded-and-strictly-re-encoded pairs,
/// leaving out parameters named `skip` (the presigned signature itself).
fn encoded_pairs(raw_query: &str, skip: Option<&str>) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for piece in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let name = percent_decode(name);
        if skip.is_some_and(|s| s.as_bytes() == name.as_slice()) {
            continue;
        }
        let mut enc_name = String::with_capacity(name.len());
        encode_into(&mut enc_name, &name, false);
        let mut enc_value = String::with_capacity(value.len());
        encode_into(&mut enc_value, &percent_decode(value), false);
        pairs.push((enc_name, enc_value));
    }
    pairs
}

/// The canonical query string, without the parameter named `skip`.
pub fn canonical_query(raw_query: &str, skip: Option<&str>) -> String {
    let mut pairs = encoded_pairs(raw_query, skip);
    pairs.sort_unstable();
    let mut out = String::with_capacity(raw_query.len() + 16);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// Appends `value` trimmed, with every run of whitespace (including the line
/// breaks of obsolete folded headers) collapsed to one space.
fn push_trimmed_value(out: &mut String, value: &str) {
    let mut words = value.split([' ', '\t', '\r', '\n']);
    let mut first = true;
    for word in words.by_ref() {
        if word.is_empty() {
            continue;
        }
        if !first {
            out.push(' ');
        }
        out.push_str(word);
        first = false;
    }
}

/// The canonical headers block (each line ending in `\n`) for the signed
/// header names, in the order the client listed them. `None` when a signed
/// header is absent from the request: such a signature cannot be reproduced.
pub fn canonical_headers(headers: &[(&str, &str)], signed: &[&str]) -> Option<String> {
    let mut out = String::with_capacity(64 * signed.len());
    for name in signed {
        out.push_str(name);
        out.push(':');
        let mut found = false;
        for (_, value) in headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
            if found {
                out.push(',');
            }
            push_trimmed_value(&mut out, value);
            found = true;
        }
        if !found {
            return None;
        }
        out.push('\n');
    }
    Some(out)
}

/// Everything the canonical request is made of, already canonicalised where
/// that depends on the signature form.
pub struct CanonicalInput<'a> {
    pub method: &'a str,
    pub raw_path: &'a str,
    pub raw_query: &'a str,
    /// Query parameter excluded from the canonical query (`X-Amz-Signature`
    /// in the presigned form).
    pub skip_param: Option<&'a str>,
    pub headers: &'a [(&'a str, &'a str)],
    pub signed_headers: &'a [&'a str],
    /// Lowercase hex SHA-256 of the payload (or the declared payload token).
    pub payload_hash: &'a str,
}

/// The canonical request text; `None` when a signed header is missing.
pub fn canonical_request(input: &CanonicalInput<'_>) -> Option<String> {
    let headers = canonical_headers(input.headers, input.signed_headers)?;
    let mut out = String::with_capacity(256 + headers.len());
    out.push_str(input.method);
    out.push('\n');
    out.push_str(&canonical_uri(input.raw_path));
    out.push('\n');
    out.push_str(&canonical_query(input.raw_query, input.skip_param));
    out.push('\n');
    out.push_str(&headers);
    out.push('\n');
    for (i, name) in input.signed_headers.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(name);
    }
    out.push('\n');
    out.push_str(input.payload_hash);
    Some(out)
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The string to sign: algorithm, timestamp, scope, hash of the canonical request.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let mut out = String::with_capacity(140 + scope.len());
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_normalised_then_encoded_again() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("//example//"), "/example/");
        assert_eq!(canonical_uri("/example1/example2/../.."), "/");
        assert_eq!(canonical_uri("/./"), "/");
        assert_eq!(canonical_uri("/a/./b/../c"), "/a/c");
        assert_eq!(canonical_uri("/../../x"), "/x");
        assert_eq!(
            canonical_uri("/v1/tags/arn%3Aaws%3Amq"),
            "/v1/tags/arn%253Aaws%253Amq"
        );
        assert_eq!(canonical_uri("/example space/"), "/example%20space/");
        assert_eq!(canonical_uri("/ሴ"), "/%E1%88%B4");
    }

    #[test]
    fn query_is_decoded_reencoded_and_sorted() {
        assert_eq!(canonical_query("", None), "");
        assert_eq!(canonical_query("b=2&a=1&a=0", None), "a=0&a=1&b=2");
        // `+` is a literal plus, `%20` a space.
        assert_eq!(canonical_query("q=a+b%20c", None), "q=a%2Bb%20c");
        assert_eq!(canonical_query("flag", None), "flag=");
        assert_eq!(canonical_query("a=%zz&&", None), "a=%25zz");
        assert_eq!(
            canonical_query("X-Amz-Signature=abc&x=1", Some("X-Amz-Signature")),
            "x=1"
        );
        assert_eq!(canonical_query("k=a/b", None), "k=a%2Fb");
    }

    #[test]
    fn percent_decode_handles_truncated_escapes() {
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%"), b"%");
        assert_eq!(percent_decode("%41%42"), b"AB");
        assert_eq!(percent_decode("a%2"), b"a%2");
    }

    #[test]
    fn header_values_are_trimmed_and_joined() {
        let headers = [
            ("Host", "example.com"),
            ("My-Header", "  a   b  "),
            ("my-header", "c\n   d"),
        ];
        assert_eq!(
            canonical_headers(&headers, &["host", "my-header"]).as_deref(),
            Some("host:example.com\nmy-header:a b,c d\n")
        );
        assert_eq!(canonical_headers(&headers, &["host", "missing"]), None);
    }
}
