//! `maxResults` and opaque `nextToken`s. A token is the last key of the previous page
//! (keyset paging: stable while rows are added or removed), base64url-encoded.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::error::ApiError;

/// Parses `maxResults` (1-100) with `default` when absent.
pub fn max_results(raw: Option<&str>, default: i64) -> Result<i64, ApiError> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.parse::<i64>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            "maxResults",
            "The maxResults must be an integer between 1 and 100.",
        )),
    }
}

pub fn encode_token(last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_key)
}

/// The key a `nextToken` carries; garbage is a BadRequestException.
pub fn decode_token(token: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(token) = token else { return Ok(None) };
    let invalid = || ApiError::bad_request("nextToken", "The nextToken is invalid.");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    String::from_utf8(bytes).map(Some).map_err(|_| invalid())
}

/// Splits `limit + 1` fetched rows into a page and the token for the next one.
pub fn page<T>(
    mut rows: Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        let token = rows.last().map(|last| encode_token(&key(last)));
        (rows, token)
    } else {
        (rows, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_results_bounds() {
        assert_eq!(max_results(None, 20).ok(), Some(20));
        assert_eq!(max_results(Some("100"), 20).ok(), Some(100));
        assert!(max_results(Some("0"), 20).is_err());
        assert!(max_results(Some("101"), 20).is_err());
        assert!(max_results(Some("x"), 20).is_err());
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let t = encode_token("b-123");
        assert_eq!(decode_token(Some(&t)).ok(), Some(Some("b-123".to_owned())));
        assert!(decode_token(Some("%%%")).is_err());
    }

    #[test]
    fn page_emits_a_token_only_when_more_rows_exist() {
        let (rows, token) = page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(rows, vec![1, 2]);
        assert_eq!(
            decode_token(token.as_deref()).ok(),
            Some(Some("2".to_owned()))
        );
        let (rows, token) = page(vec![1, 2], 2, |n| n.to_string());
        assert_eq!((rows, token), (vec![1, 2], None));
    }
}
