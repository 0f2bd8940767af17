//! Queue and exchange arguments: parsing RabbitMQ's `x-` arguments and checking that a
//! re-declaration is equivalent.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::engine::amqp::error::AmqpError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
    /// Like reject-publish, and the refused message is dead-lettered (reason maxlen).
    RejectPublishDlx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    /// Accepted with quorum's durability: confirms wait for fsync.
    Quorum,
}

/// The parsed `x-` arguments of a queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArgs {
    pub message_ttl_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub single_active_consumer: bool,
    pub queue_type: QueueType,
}

/// An integer argument of any AMQP integer type.
pub fn as_int(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => i64::from(*x),
        AMQPValue::ShortShortUInt(x) => i64::from(*x),
        AMQPValue::ShortInt(x) => i64::from(*x),
        AMQPValue::ShortUInt(x) => i64::from(*x),
        AMQPValue::LongInt(x) => i64::from(*x),
        AMQPValue::LongUInt(x) => i64::from(*x),
        AMQPValue::LongLongInt(x) => *x,
        AMQPValue::Timestamp(x) => i64::try_from(*x).ok()?,
        _ => return None,
    })
}

pub fn as_str(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub fn as_bool(v: &AMQPValue) -> Option<bool> {
    match v {
        AMQPValue::Boolean(b) => Some(*b),
        _ => None,
    }
}

/// Renders a value the way RabbitMQ's error texts show it.
pub fn describe(v: &AMQPValue) -> (String, &'static str) {
    match v {
        AMQPValue::Boolean(b) => (b.to_string(), "bool"),
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            (as_str(v).unwrap_or_default(), "longstr")
        }
        AMQPValue::LongLongInt(x) => (x.to_string(), "long"),
        other => match as_int(other) {
            Some(i) => (i.to_string(), "signedint"),
            None => (format!("{other:?}"), "table"),
        },
    }
}

impl QueueArgs {
    pub fn parse(args: &FieldTable, queue: &str, vhost: &str) -> Result<QueueArgs, AmqpError> {
        let invalid = |name: &str, why: String| {
            AmqpError::precondition_failed(format!(
                "invalid arg '{name}' for queue '{queue}' in vhost '{vhost}': {why}"
            ))
        };
        let non_negative = |name: &str, v: &AMQPValue| -> Result<u64, AmqpError> {
            let i = as_int(v).ok_or_else(|| {
                let (val, ty) = describe(v);
                invalid(name, format!("{{unacceptable_type,{ty}}} {val}"))
            })?;
            u64::try_from(i).map_err(|_| invalid(name, format!("{{value_negative,{i}}}")))
        };
        let mut q = QueueArgs::default();
        for (k, v) in args.inner() {
            match k.as_str() {
                "x-message-ttl" => {
                    let ttl = non_negative(k.as_str(), v)?;
                    // RabbitMQ's bound: TTLs are 32-bit milliseconds.
                    if ttl > u64::from(u32::MAX) {
                        return Err(invalid(k.as_str(), format!("{{value_too_large,{ttl}}}")));
                    }
                    q.message_ttl_ms = Some(ttl);
                }
                "x-queue-mode" => match as_str(v).as_deref() {
                    // Classic queues v2 page to disk anyway: both modes behave the same here.
                    Some("default") | Some("lazy") => {}
                    _ => {
                        let (val, _) = describe(v);
                        return Err(invalid(
                            k.as_str(),
                            format!("\"unsupported queue mode '{val}'\""),
                        ));
                    }
                },
                "x-expires" => {
                    let e = non_negative(k.as_str(), v)?;
                    if e == 0 {
                        return Err(invalid(k.as_str(), "{value_zero,0}".into()));
                    }
                    q.expires_ms = Some(e);
                }
                "x-max-length" => q.max_length = Some(non_negative(k.as_str(), v)?),
                "x-max-length-bytes" => q.max_length_bytes = Some(non_negative(k.as_str(), v)?),
                "x-overflow" => {
                    q.overflow = match as_str(v).as_deref() {
                        Some("drop-head") => Overflow::DropHead,
                        Some("reject-publish") => Overflow::RejectPublish,
                        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                        _ => {
                            let (val, _) = describe(v);
                            return Err(invalid(
                                k.as_str(),
                                format!("{{unacceptable_value,<<\"{val}\">>}}"),
                            ));
                        }
                    }
                }
                "x-dead-letter-exchange" => {
                    q.dead_letter_exchange = Some(as_str(v).ok_or_else(|| {
                        invalid(k.as_str(), "{unacceptable_type,not_a_string}".into())
                    })?)
                }
                "x-dead-letter-routing-key" => {
                    q.dead_letter_routing_key = Some(as_str(v).ok_or_else(|| {
                        invalid(k.as_str(), "{unacceptable_type,not_a_string}".into())
                    })?)
                }
                "x-single-active-consumer" => {
                    q.single_active_consumer = as_bool(v).ok_or_else(|| {
                        invalid(k.as_str(), "{unacceptable_type,not_a_bool}".into())
                    })?
                }
                "x-queue-type" => {
                    q.queue_type = match as_str(v).as_deref() {
                        Some("classic") => QueueType::Classic,
                        Some("quorum") => QueueType::Quorum,
                        _ => {
                            let (val, _) = describe(v);
                            return Err(invalid(
                                k.as_str(),
                                format!("{{unacceptable_value,<<\"{val}\">>}}"),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        if q.dead_letter_routing_key.is_some() && q.dead_letter_exchange.is_none() {
            return Err(AmqpError::precondition_failed(format!(
                "invalid arg 'x-dead-letter-routing-key' for queue '{queue}' in vhost '{vhost}': \
                 Key x-dead-letter-exchange should be specified when x-dead-letter-routing-key is set"
            )));
        }
        Ok(q)
    }
}

/// Arguments whose values must match on re-declaration (RabbitMQ's equivalence check).
const CHECKED_ARGS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-single-active-consumer",
    "x-queue-type",
];

/// Checks a re-declaration's arguments against the current ones.
pub fn check_equivalent_args(
    current: &FieldTable,
    received: &FieldTable,
    what: &str,
) -> Result<(), AmqpError> {
    for key in CHECKED_ARGS {
        let cur = current.inner().get(*key);
        let rec = received.inner().get(*key);
        let same = match (cur, rec) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a == b
                    || (as_int(a).is_some() && as_int(a) == as_int(b))
                    || (as_str(a).is_some() && as_str(a) == as_str(b))
            }
            // A queue declared without x-queue-type is classic.
            (None, Some(v)) | (Some(v), None) if *key == "x-queue-type" => {
                as_str(v).as_deref() == Some("classic")
            }
            _ => false,
        };
        if !same {
            let show = |v: Option<&AMQPValue>| match v {
                Some(v) => {
                    let (val, ty) = describe(v);
                    format!("the value '{val}' of type '{ty}'")
                }
                None => "none".to_owned(),
            };
            return Err(AmqpError::precondition_failed(format!(
                "inequivalent arg '{key}' for {what}: received {} but current is {}",
                show(rec),
                show(cur)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn parses_and_rejects() {
        let t = table(&[
            ("x-message-ttl", AMQPValue::LongInt(1000)),
            ("x-overflow", AMQPValue::LongString("reject-publish".into())),
            ("x-queue-type", AMQPValue::LongString("quorum".into())),
        ]);
        let a = QueueArgs::parse(&t, "q", "/").expect("valid");
        assert_eq!(a.message_ttl_ms, Some(1000));
        assert_eq!(a.overflow, Overflow::RejectPublish);
        assert_eq!(a.queue_type, QueueType::Quorum);
        let bad = table(&[("x-message-ttl", AMQPValue::LongInt(-1))]);
        let e = QueueArgs::parse(&bad, "q", "/").expect_err("negative");
        assert_eq!(e.code, 406);
    }

    #[test]
    fn equivalence_ignores_int_width() {
        let a = table(&[("x-max-length", AMQPValue::LongInt(5))]);
        let b = table(&[("x-max-length", AMQPValue::LongLongInt(5))]);
        assert!(check_equivalent_args(&a, &b, "queue 'q' in vhost '/'").is_ok());
        let c = table(&[("x-max-length", AMQPValue::LongInt(6))]);
        let e = check_equivalent_args(&a, &c, "queue 'q' in vhost '/'").expect_err("differs");
        assert!(e
            .text
            .starts_with("PRECONDITION_FAILED - inequivalent arg 'x-max-length'"));
        assert!(check_equivalent_args(&a, &FieldTable::default(), "q").is_err());
    }
}
