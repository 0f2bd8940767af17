//! A minimal header-form signer, the mirror of the verifier: for tests, the
//! benchmark, and for Mooring when it calls an AWS endpoint itself. It shares
//! the canonicalisation code, so the AWS test vectors, not this signer, are
//! what proves that code right.

use chrono::{DateTime, Utc};

use super::canonical::{canonical_request, sha256_hex, string_to_sign, CanonicalInput};
use super::verify::{signature, signing_key};
use super::{ALGORITHM, AMZ_DATE_FORMAT};

/// Who signs, and for which scope.
pub struct SigningParams<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
    pub region: &'a str,
    pub service: &'a str,
    pub time: DateTime<Utc>,
}

/// Signs a request in header form. `headers` must already contain `host`;
/// returns the headers to add: `x-amz-date`, `x-amz-security-token` when a
/// token is given, and `authorization`. Every header passed in is signed.
pub fn sign_request(
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    params: &SigningParams<'_>,
) -> Vec<(String, String)> {
    let amz_date = params.time.format(AMZ_DATE_FORMAT).to_string();
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_owned()))
        .collect();
    all.push(("x-amz-date".into(), amz_date.clone()));
    if let Some(token) = params.session_token {
        all.push(("x-amz-security-token".into(), token.to_owned()));
    }
    let mut names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let pairs: Vec<(&str, &str)> = all.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let payload_hash = sha256_hex(body);
    let canonical = canonical_request(&CanonicalInput {
        method,
        raw_path,
        raw_query,
        skip_param: None,
        headers: &pairs,
        signed_headers: &names,
        payload_hash: &payload_hash,
    })
    .expect("every signed header comes from the request itself");
    let date = &amz_date[..8];
    let scope = format!("{date}/{}/{}/aws4_request", params.region, params.service);
    let sts = string_to_sign(&amz_date, &scope, &canonical);
    let key = signing_key(
        params.secret_access_key,
        date,
        params.region,
        params.service,
    );
    let sig = hex::encode(signature(&key, &sts));
    let authorization = format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={sig}",
        params.access_key_id,
        names.join(";")
    );
    let mut out = vec![("x-amz-date".to_owned(), amz_date)];
    if let Some(token) = params.session_token {
        out.push(("x-amz-security-token".to_owned(), token.to_owned()));
    }
    out.push(("authorization".to_owned(), authorization));
    out
}
