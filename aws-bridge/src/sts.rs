//! Forwarding a client's signed `sts:GetCallerIdentity` request to STS, verbatim, and
//! reading the identity from STS's answer. STS checks the signature; whoever signed
//! the request is who STS says. The caller ([`get_caller_identity`]'s user) must have
//! checked that the request is a GetCallerIdentity to the configured endpoint.

use std::time::Duration;

use crate::xml::element_text;

/// The longest STS answer read; a GetCallerIdentity answer is a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Headers that describe one hop, not the request: never forwarded. `content-length`
/// is recomputed by the client from the body, which is forwarded byte for byte.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Who signed a request, as STS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// `arn:aws:iam::123456789012:user/alice`, `arn:aws:sts::123456789012:assumed-role/R/s`, …
    pub arn: String,
    pub account: String,
    pub user_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StsError {
    /// No answer: connection refused, DNS, TLS, timeout.
    #[error("the STS endpoint could not be reached: {0}")]
    Unreachable(String),
    /// STS answered with an error: the signature, the key or the date was refused.
    #[error("STS refused the request ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// STS answered 2xx with something that is not a GetCallerIdentity result.
    #[error("STS's answer could not be read: {0}")]
    BadAnswer(String),
}

/// An HTTP client for the forward: bounded in time, and never following a redirect
/// (a redirect would send the signed request somewhere that was not checked).
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client with only timeouts and a redirect policy always builds")
}

/// Sends `body` with `headers` (as the client signed them) by POST to `url`, and
/// reads the identity from the answer.
pub async fn get_caller_identity(
    client: &reqwest::Client,
    url: reqwest::Url,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<CallerIdentity, StsError> {
    let mut request = client.post(url);
    for (name, value) in headers {
        if HOP_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        request = request.header(name.as_str(), value.as_str());
    }
    let mut response = request
        .body(body)
        .send()
        .await
        .map_err(|e| StsError::Unreachable(error_chain(&e)))?;
    let status = response.status();
    let mut answer = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| StsError::Unreachable(error_chain(&e)))?
    {
        if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(StsError::BadAnswer(format!(
                "longer than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        answer.extend_from_slice(&chunk);
    }
    let answer = String::from_utf8_lossy(&answer);
    if !status.is_success() {
        let (code, message) = parse_error(&answer);
        return Err(StsError::Rejected {
            status: status.as_u16(),
            code,
            message,
        });
    }
    parse_identity(&answer)
}

/// Reads `GetCallerIdentityResult`'s three members.
pub fn parse_identity(answer: &str) -> Result<CallerIdentity, StsError> {
    let result = answer
        .find("<GetCallerIdentityResult>")
        .map(|i| &answer[i..])
        .ok_or_else(|| StsError::BadAnswer("no GetCallerIdentityResult element".to_owned()))?;
    let member = |name: &str| {
        element_text(result, name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| StsError::BadAnswer(format!("no {name} in GetCallerIdentityResult")))
    };
    Ok(CallerIdentity {
        arn: member("Arn")?,
        account: member("Account")?,
        user_id: member("UserId")?,
    })
}

/// The code and message of an AWS Query error document; placeholders when the
/// answer is not one (a proxy's HTML page, say).
pub fn parse_error(answer: &str) -> (String, String) {
    let code = element_text(answer, "Code").unwrap_or_else(|| "Unknown".to_owned());
    let message = element_text(answer, "Message").unwrap_or_else(|| {
        let mut snippet: String = answer.chars().take(200).collect();
        if snippet.trim().is_empty() {
            snippet = "(empty answer)".to_owned();
        }
        snippet
    });
    (code, message)
}

/// An error with its causes, `a: b: c`, as reqwest's own display hides them.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:sts::123456789012:assumed-role/Readers/alice</Arn>
    <UserId>AROAEXAMPLE:alice</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>x</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"#;

    #[test]
    fn reads_the_identity() {
        let id = parse_identity(ANSWER).expect("a well-formed answer");
        assert_eq!(
            id.arn,
            "arn:aws:sts::123456789012:assumed-role/Readers/alice"
        );
        assert_eq!(id.account, "123456789012");
        assert_eq!(id.user_id, "AROAEXAMPLE:alice");
    }

    #[test]
    fn refuses_answers_without_the_result() {
        assert!(matches!(
            parse_identity("<Other><Arn>arn:aws:iam::1:user/x</Arn></Other>"),
            Err(StsError::BadAnswer(_))
        ));
        let no_account = ANSWER.replace("<Account>123456789012</Account>", "");
        assert!(matches!(
            parse_identity(&no_account),
            Err(StsError::BadAnswer(m)) if m.contains("Account")
        ));
    }

    #[test]
    fn reads_error_documents() {
        let doc = "<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code>\
                   <Message>The request signature we calculated does not match</Message></Error></ErrorResponse>";
        let (code, message) = parse_error(doc);
        assert_eq!(code, "SignatureDoesNotMatch");
        assert!(message.starts_with("The request signature"));
        assert_eq!(parse_error("").1, "(empty answer)");
    }

    /// A one-shot HTTP server: answers `status` with `body` and hands back the raw
    /// request it read (headers and body).
    async fn one_shot(
        status: &'static str,
        body: &'static str,
    ) -> (reqwest::Url, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = reqwest::Url::parse(&format!("http://{}/", listener.local_addr().expect("addr")))
            .expect("url");
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            // Read until the headers and the announced body are in.
            loop {
                let n = socket.read(&mut buf).await.expect("read");
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if raw.len() >= end + 4 + length || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&raw).to_string()
        });
        (url, task)
    }

    #[tokio::test]
    async fn the_request_is_forwarded_verbatim_and_the_identity_read() {
        let (url, seen) = one_shot("200 OK", ANSWER).await;
        let headers = vec![
            ("X-Mooring-Server-ID".to_owned(), "server-1".to_owned()),
            (
                "Authorization".to_owned(),
                "AWS4-HMAC-SHA256 Credential=x".to_owned(),
            ),
            // Hop-by-hop: must not be forwarded (a stale length would corrupt the body).
            ("Content-Length".to_owned(), "999".to_owned()),
            ("Connection".to_owned(), "upgrade".to_owned()),
        ];
        let body = b"Action=GetCallerIdentity&Version=2011-06-15".to_vec();
        let id = get_caller_identity(&client(Duration::from_secs(5)), url, &headers, body)
            .await
            .expect("identity");
        assert_eq!(id.account, "123456789012");
        let raw = seen.await.expect("server task").to_ascii_lowercase();
        assert!(raw.starts_with("post / http/1.1\r\n"), "{raw}");
        assert!(raw.contains("x-mooring-server-id: server-1\r\n"), "{raw}");
        assert!(
            raw.contains("authorization: aws4-hmac-sha256 credential=x\r\n"),
            "{raw}"
        );
        assert!(raw.contains("content-length: 43\r\n"), "{raw}");
        assert!(!raw.contains("999") && !raw.contains("upgrade"), "{raw}");
        assert!(
            raw.ends_with("\r\n\r\naction=getcalleridentity&version=2011-06-15"),
            "{raw}"
        );
    }

    #[tokio::test]
    async fn sts_refusals_keep_their_code() {
        let (url, _seen) = one_shot(
            "403 Forbidden",
            "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error></ErrorResponse>",
        )
        .await;
        let err = get_caller_identity(&client(Duration::from_secs(5)), url, &[], Vec::new())
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, StsError::Rejected { status: 403, code, .. } if code == "SignatureDoesNotMatch"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (url, _seen) = one_shot(
            "307 Temporary Redirect\r\nlocation: http://169.254.169.254/",
            "",
        )
        .await;
        let err = get_caller_identity(&client(Duration::from_secs(5)), url, &[], Vec::new())
            .await
            .expect_err("a redirect is an error, not a second request");
        assert!(
            matches!(err, StsError::Rejected { status: 307, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_endpoint_that_is_down_is_unreachable() {
        // Bind then drop: the port is (almost surely) closed for the next moment.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let url = reqwest::Url::parse(&format!("http://{addr}/")).expect("url");
        let err = get_caller_identity(&client(Duration::from_secs(5)), url, &[], Vec::new())
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, StsError::Unreachable(_)), "{err:?}");
    }
}
