//! A published message, shared (`Arc`) by every queue it was routed to, and its record encoding
//! in queue logs.
//!
//! The content header is kept as the raw bytes the publisher sent, so that properties and
//! headers reach consumers byte for byte. Only the few properties a feature needs are read
//! from it, by [`PropsView`], without building amq-protocol's property struct.

use std::sync::Arc;

use bytes::Bytes;

/// A message as routed.
#[derive(Debug)]
pub struct Message {
    pub exchange: Arc<str>,
    pub routing_key: Arc<str>,
    /// Raw content-header payload: class id, weight, body size, property flags and properties.
    pub header: Bytes,
    pub body: Bytes,
    pub persistent: bool,
    /// Per-message TTL from the `expiration` property, in milliseconds.
    pub expiration_ms: Option<u64>,
    /// An `expiration` property that is not a non-negative integer (the publish is refused).
    pub bad_expiration: Option<String>,
    /// The `user_id` property (must match the publishing user).
    pub user_id: Option<String>,
    /// The headers may hold `CC` / `BCC` routing keys (sender-selected distribution).
    pub may_have_cc: bool,
}

/// Record kinds: a persistent message, or a transient one written only to page its body out
/// of memory (skipped and acked at recovery).
const RECORD_PERSISTENT: u8 = 1;
const RECORD_TRANSIENT: u8 = 2;
/// A persistent message followed by its absolute expiry (Unix milliseconds, u64), so that a
/// TTL keeps running across a restart.
const RECORD_PERSISTENT_EXPIRING: u8 = 3;

/// A marker saying the message at a location was delivered before (written when it is
/// requeued), so that it comes back with redelivered=true after a restart.
const RECORD_DELIVERED_MARKER: u8 = 4;

/// The marker record for a delivered message at `target`.
pub fn encode_marker(target: crate::engine::storage::Location, b: &mut Vec<u8>) {
    b.push(RECORD_DELIVERED_MARKER);
    b.extend_from_slice(&target.segment.to_be_bytes());
    b.extend_from_slice(&target.offset.to_be_bytes());
    b.extend_from_slice(&target.len.to_be_bytes());
}

/// The target of a marker record, or None if the record is not a marker.
pub fn decode_marker(rec: &[u8]) -> Option<crate::engine::storage::Location> {
    if rec.len() != 13 || rec[0] != RECORD_DELIVERED_MARKER {
        return None;
    }
    let n = |i: usize| u32::from_be_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
    Some(crate::engine::storage::Location {
        segment: n(1),
        offset: n(5),
        len: n(9),
    })
}

/// Splits a record into (kind, expiry in Unix ms, the rest).
fn record_parts(rec: &[u8]) -> Option<(u8, Option<u64>, &[u8])> {
    let (&kind, rest) = rec.split_first()?;
    match kind {
        RECORD_PERSISTENT | RECORD_TRANSIENT => Some((kind, None, rest)),
        RECORD_PERSISTENT_EXPIRING => {
            let exp = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
            Some((kind, Some(exp), &rest[8..]))
        }
        _ => None,
    }
}

impl Message {
    pub fn new(exchange: Arc<str>, routing_key: Arc<str>, header: Bytes, body: Bytes) -> Message {
        let view = PropsView::parse(&header);
        let expiration_ms = view.expiration.as_deref().and_then(parse_expiration);
        let may_have_cc = view.headers.as_ref().is_some_and(|r| {
            let t = &header[r.clone()];
            contains(t, b"\x02CC") || contains(t, b"\x03BCC")
        });
        Message {
            exchange,
            routing_key,
            persistent: view.delivery_mode == Some(2),
            bad_expiration: view.expiration.filter(|_| expiration_ms.is_none()),
            expiration_ms,
            user_id: view.user_id,
            may_have_cc,
            header,
            body,
        }
    }

    /// Bytes accounted against memory budgets and `x-max-length-bytes` (the body, as RabbitMQ).
    pub fn size(&self) -> u64 {
        self.body.len() as u64
    }

    /// Appends the log record: `version u8, exchange short str, routing key short str,
    /// header len u32, header, body`. Not cached: a copy per message would double its memory.
    pub fn encode_record(&self, b: &mut Vec<u8>, expires_at_unix_ms: Option<u64>) {
        b.reserve(
            16 + self.exchange.len() + self.routing_key.len() + self.header.len() + self.body.len(),
        );
        match (self.persistent, expires_at_unix_ms) {
            (true, Some(exp)) => {
                b.push(RECORD_PERSISTENT_EXPIRING);
                b.extend_from_slice(&exp.to_be_bytes());
            }
            (true, None) => b.push(RECORD_PERSISTENT),
            (false, _) => b.push(RECORD_TRANSIENT),
        }
        put_short(b, &self.exchange);
        put_short(b, &self.routing_key);
        b.extend_from_slice(&(self.header.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.header);
        b.extend_from_slice(&self.body);
    }

    /// Whether a log record holds a transient message (paged out, not to be recovered).
    pub fn record_is_transient(rec: &[u8]) -> bool {
        rec.first() == Some(&RECORD_TRANSIENT)
    }

    /// The body length of a log record, without decoding it.
    pub fn record_body_len(rec: &[u8]) -> Option<u64> {
        let (_, _, rest) = record_parts(rec)?;
        let (_, rest) = get_short(rest)?;
        let (_, rest) = get_short(rest)?;
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        Some(rest.len().checked_sub(4 + len)? as u64)
    }

    /// Decodes a log record; `None` if it is not one of ours (the caller logs and skips it).
    /// The absolute expiry (Unix ms) stored with a record, if any.
    pub fn record_expiry(rec: &[u8]) -> Option<u64> {
        record_parts(rec)?.1
    }

    pub fn from_record(rec: &[u8]) -> Option<Message> {
        let (_, _, rest) = record_parts(rec)?;
        let (exchange, rest) = get_short(rest)?;
        let (routing_key, rest) = get_short(rest)?;
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let header = rest.get(4..4 + len)?;
        let body = &rest[4 + len..];
        Some(Message::new(
            exchange.into(),
            routing_key.into(),
            Bytes::copy_from_slice(header),
            Bytes::copy_from_slice(body),
        ))
    }

    /// Same content under a new header (dead-lettering rewrites headers) and routing.
    pub fn with_header(&self, header: Bytes, exchange: Arc<str>, routing_key: Arc<str>) -> Message {
        Message::new(exchange, routing_key, header, self.body.clone())
    }
}

/// Wall-clock milliseconds since the Unix epoch (for expiries that outlive the process).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn put_short(b: &mut Vec<u8>, s: &str) {
    let s = &s.as_bytes()[..s.len().min(255)];
    b.push(s.len() as u8);
    b.extend_from_slice(s);
}

fn get_short(b: &[u8]) -> Option<(&str, &[u8])> {
    let len = *b.first()? as usize;
    let s = std::str::from_utf8(b.get(1..1 + len)?).ok()?;
    Some((s, &b[1 + len..]))
}

/// RabbitMQ accepts only a non-negative integer string as `expiration`.
pub fn parse_expiration(s: &str) -> Option<u64> {
    s.parse::<u64>().ok()
}

/// The properties a feature may need, read from a raw content-header payload.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PropsView {
    pub delivery_mode: Option<u8>,
    pub expiration: Option<String>,
    pub user_id: Option<String>,
    /// Byte range of the encoded headers table (after its length prefix) within the header.
    pub headers: Option<std::ops::Range<usize>>,
}

impl PropsView {
    /// Walks the property list up to `user_id`; stops quietly on malformed input (the
    /// publish was already validated by `validate_header`).
    pub fn parse(header: &[u8]) -> PropsView {
        let mut v = PropsView::default();
        let Some(flags) = header.get(12..14) else {
            return v;
        };
        let flags = u16::from_be_bytes([flags[0], flags[1]]);
        let mut at = 14usize;
        let short = |at: &mut usize| -> Option<std::ops::Range<usize>> {
            let len = *header.get(*at)? as usize;
            let r = *at + 1..*at + 1 + len;
            header.get(r.clone())?;
            *at = r.end;
            Some(r)
        };
        // content-type, content-encoding
        for bit in [15, 14] {
            if flags & (1 << bit) != 0 && short(&mut at).is_none() {
                return v;
            }
        }
        if flags & (1 << 13) != 0 {
            let Some(len) = header.get(at..at + 4) else {
                return v;
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let r = at + 4..at + 4 + len;
            if header.get(r.clone()).is_none() {
                return v;
            }
            at = r.end;
            v.headers = Some(r);
        }
        if flags & (1 << 12) != 0 {
            let Some(&m) = header.get(at) else { return v };
            v.delivery_mode = Some(m);
            at += 1;
        }
        if flags & (1 << 11) != 0 {
            at += 1; // priority
        }
        // correlation-id, reply-to
        for bit in [10, 9] {
            if flags & (1 << bit) != 0 && short(&mut at).is_none() {
                return v;
            }
        }
        if flags & (1 << 8) != 0 {
            let Some(r) = short(&mut at) else { return v };
            v.expiration = std::str::from_utf8(&header[r]).ok().map(str::to_owned);
        }
        if flags & (1 << 4) == 0 {
            return v;
        }
        if flags & (1 << 7) != 0 && short(&mut at).is_none() {
            return v; // message-id
        }
        if flags & (1 << 6) != 0 {
            at += 8; // timestamp
        }
        if flags & (1 << 5) != 0 && short(&mut at).is_none() {
            return v; // type
        }
        if let Some(r) = short(&mut at) {
            v.user_id = std::str::from_utf8(&header[r]).ok().map(str::to_owned);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::WriteContext;
    use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
    use amq_protocol::types::{AMQPValue, FieldTable};

    pub fn header_for(props: &AMQPProperties, body_len: u64) -> Bytes {
        let mut v = Vec::new();
        v.extend_from_slice(&60u16.to_be_bytes());
        v.extend_from_slice(&0u16.to_be_bytes());
        v.extend_from_slice(&body_len.to_be_bytes());
        let ctx = gen_properties(props)(WriteContext::from(v)).expect("vec");
        Bytes::from(ctx.write)
    }

    #[test]
    fn reads_mode_expiration_and_headers() {
        let mut t = FieldTable::default();
        t.insert("k".into(), AMQPValue::LongString("v".into()));
        let props = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(t)
            .with_delivery_mode(2)
            .with_reply_to("r".into())
            .with_expiration("1500".into())
            .with_message_id("m".into())
            .with_timestamp(7)
            .with_user_id("bob".into());
        let h = header_for(&props, 3);
        let v = PropsView::parse(&h);
        assert_eq!(v.delivery_mode, Some(2));
        assert_eq!(v.expiration.as_deref(), Some("1500"));
        assert!(v.headers.is_some());
        assert_eq!(v.user_id.as_deref(), Some("bob"));
        let m = Message::new("ex".into(), "rk".into(), h, Bytes::from_static(b"abc"));
        assert!(m.persistent);
        assert_eq!(m.expiration_ms, Some(1500));
        let mut rec = Vec::new();
        m.encode_record(&mut rec, Some(12345));
        assert_eq!(Message::record_expiry(&rec), Some(12345));
        assert_eq!(Message::record_body_len(&rec), Some(3));
        let back = Message::from_record(&rec).expect("decodes");
        assert_eq!(back.header, m.header);
        assert_eq!(back.body, m.body);
        assert_eq!(&*back.routing_key, "rk");
        assert_eq!(&*back.exchange, "ex");
    }
}
