//! Dead-lettering: the rewritten content header carrying RabbitMQ's `x-death` history.

use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use bytes::Bytes;

use super::args::as_str;
use super::message::Message;
use super::queue::DeathReason;

/// Builds the content header of a dead-lettered copy of `msg`, as RabbitMQ writes it: an entry
/// for (queue, reason) at the head of `x-death` (count incremented if it was there), the
/// `x-first-death-*` headers set once, and for expired messages with a per-message TTL the
/// `expiration` property moved to `original-expiration`.
pub fn dead_letter_header(msg: &Message, queue: &str, reason: DeathReason) -> Option<Bytes> {
    let props_bytes = msg.header.get(12..)?;
    let (_, props) = parse_properties(props_bytes).ok()?;
    let mut headers = props.headers().clone().unwrap_or_default();
    let expiration = props.expiration().clone();

    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = |t: &FieldTable| {
        t.inner().get("queue").and_then(as_str).as_deref() == Some(queue)
            && t.inner().get("reason").and_then(as_str).as_deref() == Some(reason.as_str())
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let existing = deaths
        .iter()
        .position(|d| matches!(d, AMQPValue::FieldTable(t) if same(t)));
    let entry = match existing {
        Some(i) => {
            let mut t = match deaths.remove(i) {
                AMQPValue::FieldTable(t) => t,
                _ => FieldTable::default(),
            };
            let count = t
                .inner()
                .get("count")
                .and_then(super::args::as_int)
                .unwrap_or(0);
            t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t
        }
        None => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), long_str(reason.as_str()));
            t.insert("queue".into(), long_str(queue));
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t.insert("exchange".into(), long_str(&msg.exchange));
            let mut keys = vec![long_str(&msg.routing_key)];
            if let Some(AMQPValue::FieldArray(cc)) = headers.inner().get("CC") {
                keys.extend(
                    cc.as_slice()
                        .iter()
                        .filter_map(as_str)
                        .map(|k| long_str(&k)),
                );
            }
            t.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(keys)),
            );
            if reason == DeathReason::Expired {
                if let Some(e) = &expiration {
                    t.insert("original-expiration".into(), long_str(e.as_str()));
                }
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    for (k, v) in [
        ("x-first-death-reason", reason.as_str()),
        ("x-first-death-queue", queue),
        ("x-first-death-exchange", &msg.exchange),
    ] {
        if !headers.contains_key(k) {
            headers.insert(k.into(), long_str(v));
        }
    }

    encode_header(
        &props,
        headers,
        reason == DeathReason::Expired,
        msg.body.len() as u64,
    )
}

/// A content header with `props` but the given headers table (and without `expiration` if
/// `drop_expiration`).
pub fn encode_header(
    props: &AMQPProperties,
    headers: FieldTable,
    drop_expiration: bool,
    body_len: u64,
) -> Option<Bytes> {
    let props = rebuild(props, headers, drop_expiration);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&60u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&body_len.to_be_bytes());
    let ctx = gen_properties(&props)(WriteContext::from(out)).ok()?;
    Some(Bytes::from(ctx.write))
}

/// Whether an earlier death of this message at `queue`, for a reason other than a client's
/// rejection, means routing it there again would cycle forever (RabbitMQ drops such cycles).
pub fn would_cycle(header: &[u8], queue: &str) -> bool {
    let Some(props_bytes) = header.get(12..) else {
        return false;
    };
    let Ok((_, props)) = parse_properties(props_bytes) else {
        return false;
    };
    let Some(AMQPValue::FieldArray(deaths)) = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned())
    else {
        return false;
    };
    let mut seen_queue = false;
    for d in deaths.as_slice() {
        if let AMQPValue::FieldTable(t) = d {
            if t.inner().get("reason").and_then(as_str).as_deref() == Some("rejected") {
                return false;
            }
            seen_queue |= t.inner().get("queue").and_then(as_str).as_deref() == Some(queue);
        }
    }
    seen_queue
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn rebuild(p: &AMQPProperties, headers: FieldTable, drop_expiration: bool) -> AMQPProperties {
    let mut n = AMQPProperties::default().with_headers(headers);
    let s = |v: &Option<ShortString>| v.clone();
    if let Some(v) = s(p.content_type()) {
        n = n.with_content_type(v);
    }
    if let Some(v) = s(p.content_encoding()) {
        n = n.with_content_encoding(v);
    }
    if let Some(v) = *p.delivery_mode() {
        n = n.with_delivery_mode(v);
    }
    if let Some(v) = *p.priority() {
        n = n.with_priority(v);
    }
    if let Some(v) = s(p.correlation_id()) {
        n = n.with_correlation_id(v);
    }
    if let Some(v) = s(p.reply_to()) {
        n = n.with_reply_to(v);
    }
    if !drop_expiration {
        if let Some(v) = s(p.expiration()) {
            n = n.with_expiration(v);
        }
    }
    if let Some(v) = s(p.message_id()) {
        n = n.with_message_id(v);
    }
    if let Some(v) = *p.timestamp() {
        n = n.with_timestamp(v);
    }
    if let Some(v) = s(p.kind()) {
        n = n.with_type(v);
    }
    if let Some(v) = s(p.user_id()) {
        n = n.with_user_id(v);
    }
    if let Some(v) = s(p.app_id()) {
        n = n.with_app_id(v);
    }
    if let Some(v) = s(p.cluster_id()) {
        n = n.with_cluster_id(v);
    }
    n
}
