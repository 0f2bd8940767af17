//! SASL mechanisms offered in connection.start: PLAIN and AMQPLAIN.

use amq_protocol::types::parsing::parse_field_table;

use crate::engine::broker::args::as_str;

pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

/// (username, password) from a start-ok response, or None if malformed.
pub fn credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            // [authzid] NUL authcid NUL passwd
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = parts.next()?;
            let pass = parts.next()?;
            if parts.next().is_some() {
                return None;
            }
            Some((
                String::from_utf8(user.to_vec()).ok()?,
                String::from_utf8(pass.to_vec()).ok()?,
            ))
        }
        "AMQPLAIN" => {
            // A field table without its length prefix.
            let mut framed = (response.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(response);
            let (_, table) = parse_field_table(&framed[..]).ok()?;
            let user = table.inner().get("LOGIN").and_then(as_str)?;
            let pass = table.inner().get("PASSWORD").and_then(as_str)?;
            Some((user, pass))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::auth::{Credentials, SASLMechanism};

    #[test]
    fn plain_and_amqplain() {
        assert_eq!(
            credentials("PLAIN", b"\0guest\0pw"),
            Some(("guest".into(), "pw".into()))
        );
        assert_eq!(credentials("PLAIN", b"guest"), None);
        let c = Credentials::new("u".into(), "p".into());
        let resp = c.sasl_auth_string(SASLMechanism::AMQPlain);
        assert_eq!(
            credentials("AMQPLAIN", resp.as_bytes()),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(credentials("EXTERNAL", b""), None);
    }
}
