//! A SigV4 signer (header form) for `mooring-api-load`, so that the load generator
//! does not compile the control plane. It covers what the load generator sends: paths
//! of unreserved characters and `/` (any other byte is percent-encoded, as AWS's
//! non-S3 services expect, but dot segments are not normalised) and simple queries.
//! The control plane's verifier is the judge: a wrong signature fails every request
//! of the benchmark, and the tests below check the AWS test vectors.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn push_encoded(out: &mut String, bytes: &[u8], keep_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(u8::try_from(h * 16 + l).expect("two hex digits fit a byte"));
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The canonical query: each name and value decoded, encoded strictly, sorted.
fn canonical_query(raw: &str) -> String {
    let mut pairs: Vec<(String, String)> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            let (mut name, mut value) = (String::new(), String::new());
            push_encoded(&mut name, &percent_decode(n), false);
            push_encoded(&mut value, &percent_decode(v), false);
            (name, value)
        })
        .collect();
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Who signs, for which scope, when.
pub struct Signer<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

impl Signer<'_> {
    /// The headers to add to a request (`x-amz-date`, `authorization`); every header in
    /// `headers` (which must include `host`) is signed.
    pub fn sign(
        &self,
        method: &str,
        raw_path: &str,
        raw_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        time: DateTime<Utc>,
    ) -> [(&'static str, String); 2] {
        let amz_date = time.format("%Y%m%dT%H%M%SZ").to_string();
        let mut all: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        all.push(("x-amz-date".to_owned(), amz_date.clone()));
        all.sort();
        let signed_headers = all
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let mut canonical = format!("{method}\n");
        push_encoded(&mut canonical, raw_path.as_bytes(), true);
        canonical.push('\n');
        canonical.push_str(&canonical_query(raw_query));
        canonical.push('\n');
        for (n, v) in &all {
            canonical.push_str(&format!("{n}:{v}\n"));
        }
        canonical.push_str(&format!(
            "\n{signed_headers}\n{}",
            hex::encode(Sha256::digest(body))
        ));
        let date = &amz_date[..8];
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let key = [self.region, self.service, "aws4_request"].iter().fold(
            hmac(
                format!("AWS4{}", self.secret_access_key).as_bytes(),
                date.as_bytes(),
            ),
            |k, part| hmac(&k, part.as_bytes()),
        );
        let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
        [
            ("x-amz-date", amz_date),
            (
                "authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                    self.access_key_id
                ),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    /// The AWS SigV4 test suite's cases, as the control plane keeps them.
    fn vector(name: &str, file: &str) -> String {
        let path = format!(
            "{}/../control-plane/tests/data/sigv4/v4/{name}/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn check(name: &str, method: &str, path: &str, query: &str, body: &[u8]) {
        let signer = Signer {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            region: "us-east-1",
            service: "service",
        };
        let time = Utc
            .with_ymd_and_hms(2015, 8, 30, 12, 36, 0)
            .single()
            .expect("date");
        let [date, authorization] = signer.sign(
            method,
            path,
            query,
            &[("Host", "example.amazonaws.com")],
            body,
            time,
        );
        assert_eq!(date.1, "20150830T123600Z");
        let want = vector(name, "header-signature.txt");
        assert!(
            authorization
                .1
                .ends_with(&format!("Signature={}", want.trim())),
            "{name}: {}",
            authorization.1
        );
    }

    #[test]
    fn signs_the_aws_test_vectors() {
        check("get-vanilla", "GET", "/", "", b"");
        check(
            "get-vanilla-query-order-key-case",
            "GET",
            "/",
            "Param2=value2&Param1=value1",
            b"",
        );
        check(
            "get-unreserved",
            "GET",
            "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            "",
            b"",
        );
        check("post-vanilla", "POST", "/", "", b"");
    }
}
