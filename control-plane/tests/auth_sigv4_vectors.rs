//! The AWS SigV4 test suite (copied from the `aws-sigv4` crate, Apache-2.0,
//! see `tests/data/sigv4/LICENSE`) run through Mooring's verifier.
//!
//! For every vector, header form and presigned form: our canonical request and
//! string to sign equal AWS's, the signed request verifies, and each mutation
//! (method, path, query, a header, the body, the date, the credential scope,
//! the signature) is rejected.
//!
//! Vectors not verified as-is, and why:
//! - `*-unnormalized` (`"normalize": false`): S3-style signing over the path
//!   without dot-segment removal. Mooring's services normalise, as AWS's
//!   non-S3 services do; these are run and must verify exactly when the
//!   normalised path equals the raw one, and be rejected otherwise.
//! - `post-sts-header-after`: the session token is added after signing, so
//!   `x-amz-security-token` is present but unsigned. Mooring requires every
//!   `x-amz-*` header to be signed: the header form must be rejected with
//!   HeadersNotSigned, and the query form (whose canonical query omits the
//!   token) with SignatureMismatch.
//! - `double-encode-path`: has no context.json and its signed request carries
//!   a date that differs from its canonical request; only its canonical path
//!   is checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use mooring_control_plane::auth::sigv4::{
    canonical_uri, expected_canonical_request, parse_request, sha256_hex, string_to_sign, verify,
    AuthError, Credential, Payload, RequestParts, VerifyConfig,
};

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sigv4/v4")
}

struct Context {
    akid: String,
    secret: String,
    token: Option<String>,
    region: String,
    service: String,
    time: DateTime<Utc>,
    normalize: bool,
}

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

fn context(dir: &Path) -> Option<Context> {
    let raw = read(dir, "context.json")?;
    let v: serde_json::Value = serde_json::from_str(&raw).expect("context.json parses");
    let s = |p: &str| v.pointer(p).and_then(|x| x.as_str()).map(str::to_owned);
    Some(Context {
        akid: s("/credentials/access_key_id").expect("akid"),
        secret: s("/credentials/secret_access_key").expect("secret"),
        token: s("/credentials/token"),
        region: s("/region").expect("region"),
        service: s("/service").expect("service"),
        time: DateTime::parse_from_rfc3339(&s("/timestamp").expect("timestamp"))
            .expect("timestamp parses")
            .with_timezone(&Utc),
        normalize: v.get("normalize").and_then(|x| x.as_bool()).unwrap_or(true),
    })
}

/// A request read from one of the suite's `*.txt` files.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn parse_http(text: &str) -> Req {
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let request_line = lines.next().expect("request line");
    let request_line = request_line
        .strip_suffix(" HTTP/1.1")
        .unwrap_or(request_line);
    let (method, target) = request_line.split_once(' ').expect("method and target");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            let last = headers.last_mut().expect("continuation follows a header");
            last.1.push('\n');
            last.1.push_str(line);
        } else if let Some((n, v)) = line.split_once(':') {
            headers.push((n.to_owned(), v.to_owned()));
        }
    }
    Req {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body: body.as_bytes().to_vec(),
    }
}

struct Setup {
    cred: Credential,
    akid: String,
    cfg: VerifyConfig,
    now: DateTime<Utc>,
}

fn run(req: &Req, setup: &Setup) -> Result<(), AuthError> {
    let pairs: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let parts = RequestParts {
        method: &req.method,
        path: &req.path,
        query: &req.query,
        headers: &pairs,
        payload: Payload::Bytes(&req.body),
    };
    let lookup = |akid: &str| (akid == setup.akid).then(|| setup.cred.clone());
    verify(&parts, &lookup, &setup.cfg, setup.now).map(|_| ())
}

/// Our canonical request and string to sign for a request.
fn ours(req: &Req) -> (String, String) {
    let pairs: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let parts = RequestParts {
        method: &req.method,
        path: &req.path,
        query: &req.query,
        headers: &pairs,
        payload: Payload::Bytes(&req.body),
    };
    let signed = parse_request(&parts).expect("vector parses");
    let payload = req
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-content-sha256"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| sha256_hex(&req.body));
    let canonical =
        expected_canonical_request(&parts, &signed, &payload).expect("signed headers present");
    let sts = string_to_sign(
        &signed.amz_date,
        &signed.scope.to_scope_string(),
        &canonical,
    );
    (canonical, sts)
}

fn set_header(req: &mut Req, name: &str, f: impl Fn(&str) -> String) -> bool {
    let mut changed = false;
    for (n, v) in &mut req.headers {
        if n.eq_ignore_ascii_case(name) {
            *v = f(v);
            changed = true;
        }
    }
    changed
}

fn bump_date(d: &str) -> String {
    // 20150830T123600Z -> one second later (the suite never signs at :59).
    let (head, tail) = d.split_at(13);
    let secs: u32 = tail[..2].parse().expect("seconds");
    format!("{head}{:02}Z", (secs + 1) % 60)
}

/// Every way of tampering with a signed request; each must be rejected.
fn mutations(req: &Req, presigned: bool) -> Vec<(&'static str, Req, Option<String>)> {
    let mut out = Vec::new();
    let mut m = req.clone();
    m.method = if req.method == "GET" {
        "POST".into()
    } else {
        "GET".into()
    };
    out.push(("method", m, None));
    let mut m = req.clone();
    m.path.push('x');
    out.push(("path", m, None));
    let mut m = req.clone();
    m.query = if m.query.is_empty() {
        "mutated=1".into()
    } else {
        format!("{}&mutated=1", m.query)
    };
    out.push(("query", m, None));
    let mut m = req.clone();
    assert!(
        set_header(&mut m, "host", |v| format!("evil.{v}")),
        "vector has a host"
    );
    out.push(("header", m, None));
    let mut m = req.clone();
    m.body.push(b'x');
    out.push(("body", m, None));
    let mut m = req.clone();
    if presigned {
        let date = m
            .query
            .split('&')
            .find_map(|p| p.strip_prefix("X-Amz-Date="))
            .expect("presigned date")
            .to_owned();
        m.query = m.query.replace(
            &format!("X-Amz-Date={date}"),
            &format!("X-Amz-Date={}", bump_date(&date)),
        );
    } else {
        assert!(
            set_header(&mut m, "x-amz-date", bump_date),
            "vector has x-amz-date"
        );
    }
    out.push(("date", m, None));
    // The scope changes in the request and in what the server accepts, so only
    // the signature can catch it.
    let mut m = req.clone();
    let region = if presigned {
        let q = m.query.clone();
        let start = q.find("X-Amz-Credential=").expect("credential");
        let cred = &q[start..];
        let region = cred.split("%2F").nth(2).expect("region").to_owned();
        m.query = q.replacen(&format!("%2F{region}%2F"), "%2Fzz-mutated-1%2F", 1);
        region
    } else {
        let auth = m
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            .expect("authorization")
            .1
            .clone();
        let region = auth.split('/').nth(2).expect("region").to_owned();
        set_header(&mut m, "authorization", |v| {
            v.replacen(&format!("/{region}/"), "/zz-mutated-1/", 1)
        });
        region
    };
    let _ = region;
    out.push(("scope", m, Some("zz-mutated-1".to_owned())));
    let mut m = req.clone();
    let flip = |s: &str| {
        let (head, last) = s.split_at(s.len() - 1);
        format!("{head}{}", if last == "0" { "1" } else { "0" })
    };
    if presigned {
        let q = m.query.clone();
        let sig = q
            .split('&')
            .find_map(|p| p.strip_prefix("X-Amz-Signature="))
            .expect("sig");
        m.query = q.replace(sig, &flip(sig));
    } else {
        set_header(&mut m, "authorization", |v| flip(v.trim_end()));
    }
    out.push(("signature", m, None));
    out
}

fn check_vector(name: &str, req: &Req, setup: &Setup, presigned: bool, failures: &mut Vec<String>) {
    if let Err(e) = run(req, setup) {
        failures.push(format!("{name}: does not verify: {e:?}"));
        return;
    }
    for (what, m, region) in mutations(req, presigned) {
        let mut s = Setup {
            cred: setup.cred.clone(),
            akid: setup.akid.clone(),
            cfg: setup.cfg.clone(),
            now: setup.now,
        };
        if let Some(r) = region {
            s.cfg.region = r;
        }
        match run(&m, &s) {
            Ok(()) => failures.push(format!("{name}: {what} mutation accepted")),
            Err(e) if what == "scope" && e != AuthError::SignatureMismatch => failures.push(
                format!("{name}: scope mutation rejected for the wrong reason: {e:?}"),
            ),
            Err(_) => {}
        }
    }
}

#[test]
fn aws_sigv4_suite_verifies_and_every_mutation_is_rejected() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(suite_dir())
        .expect("suite directory")
        .map(|e| e.expect("dir entry").path())
        .collect();
    dirs.sort();
    let mut failures = Vec::new();
    let mut verified = BTreeMap::new();
    for dir in &dirs {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_owned();
        let Some(ctx) = context(dir) else { continue };
        let setup = Setup {
            cred: Credential {
                secret_access_key: ctx.secret.clone(),
                session_token: ctx.token.clone(),
            },
            akid: ctx.akid.clone(),
            cfg: VerifyConfig::new(&ctx.region, &[&ctx.service]),
            now: ctx.time,
        };
        for (form, presigned) in [("header", false), ("query", true)] {
            let req = parse_http(
                &read(dir, &format!("{form}-signed-request.txt")).expect("signed request"),
            );
            let expected_cr =
                read(dir, &format!("{form}-canonical-request.txt")).expect("canonical");
            let expected_sts = read(dir, &format!("{form}-string-to-sign.txt")).expect("sts");
            let (cr, sts) = ours(&req);
            if name == "post-sts-header-after" {
                let want = if presigned {
                    AuthError::SignatureMismatch
                } else {
                    AuthError::HeadersNotSigned
                };
                if run(&req, &setup) != Err(want.clone()) {
                    failures.push(format!("{name} {form}: expected {want:?}"));
                }
                continue;
            }
            if !ctx.normalize {
                let same = cr == expected_cr;
                if run(&req, &setup).is_ok() != same {
                    failures.push(format!(
                        "{name} {form}: unnormalized vector verified={} but canonical equal={same}",
                        !same
                    ));
                }
                continue;
            }
            if cr != expected_cr {
                failures.push(format!(
                    "{name} {form}: canonical request differs:\n{cr}\n--- expected\n{expected_cr}"
                ));
                continue;
            }
            if sts != expected_sts {
                failures.push(format!("{name} {form}: string to sign differs"));
                continue;
            }
            check_vector(
                &format!("{name} {form}"),
                &req,
                &setup,
                presigned,
                &mut failures,
            );
            *verified.entry(form).or_insert(0) += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The suite has 29 normalised v4 cases besides post-sts-header-after.
    assert!(
        verified.get("header").copied().unwrap_or(0) >= 29,
        "{verified:?}"
    );
    assert!(
        verified.get("query").copied().unwrap_or(0) >= 29,
        "{verified:?}"
    );
}

#[test]
fn double_url_encode_vector_verifies() {
    // No context.json: the vector is signed with the suite's usual example
    // key for lambda in us-east-2 at its own X-Amz-Date.
    let dir = suite_dir().join("double-url-encode");
    let req = parse_http(&read(&dir, "header-signed-request.txt").expect("request"));
    let (cr, _) = ours(&req);
    assert_eq!(
        cr,
        read(&dir, "header-canonical-request.txt").expect("canonical")
    );
    let setup = Setup {
        cred: Credential {
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        },
        akid: "AKIDEXAMPLE".into(),
        cfg: VerifyConfig::new("us-east-2", &["lambda"]),
        now: DateTime::parse_from_rfc3339("2021-05-11T15:40:45Z")
            .expect("date")
            .with_timezone(&Utc),
    };
    let mut failures = Vec::new();
    check_vector("double-url-encode", &req, &setup, false, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn double_encode_path_vector_canonical_path() {
    let dir = suite_dir().join("double-encode-path");
    let req = parse_http(&read(&dir, "request.txt").expect("request"));
    let expected = read(&dir, "header-canonical-request.txt").expect("canonical");
    assert_eq!(
        canonical_uri(&req.path),
        expected.lines().nth(1).expect("path line")
    );
}
