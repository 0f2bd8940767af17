//! Connection negotiation: protocol header, start/start-ok (authentication), tune/tune-ok,
//! open/open-ok.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{connection, parse_class, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use tokio::io::AsyncRead;

use super::auth;
use super::error::AmqpError;
use super::frame::{write_method, FRAME_METHOD};
use super::io::{FrameReader, ReadEnd};
use crate::engine::broker::consumer::ConnLink;
use crate::engine::broker::vhost::VHost;
use crate::engine::broker::Broker;
use crate::engine::users::UserDef;

/// RabbitMQ's default handshake_timeout.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames during the handshake may be at most this large (the spec's minimum frame_max).
const HANDSHAKE_FRAME_MAX: u32 = 131_072;
/// The spec's smallest frame_max.
const MIN_FRAME_MAX: u32 = 4096;
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// What the handshake settled.
pub struct Session {
    pub user: UserDef,
    pub vhost: Arc<VHost>,
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat_secs: u16,
    /// The client understands connection.blocked / unblocked.
    pub blocked_capable: bool,
    pub client_properties: FieldTable,
    pub mechanism: String,
}

/// Why the handshake ended without a session.
pub enum HandshakeEnd {
    /// The peer is gone or too slow; just drop the socket.
    Drop,
    /// Send connection.close with this error, then drop.
    Close(AmqpError),
    /// Wrong protocol header: we already replied with ours.
    BadHeader,
}

impl From<ReadEnd> for HandshakeEnd {
    fn from(e: ReadEnd) -> Self {
        match e {
            ReadEnd::Protocol(err) => HandshakeEnd::Close(err),
            ReadEnd::Io(e) => {
                tracing::debug!(error = %e, "read failed during the handshake");
                HandshakeEnd::Drop
            }
            ReadEnd::Eof | ReadEnd::Timeout => HandshakeEnd::Drop,
        }
    }
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut p = FieldTable::default();
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
    p.insert("product".into(), s("Mooring"));
    p.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
    p.insert("platform".into(), s("Rust"));
    p.insert("cluster_name".into(), s("mooring"));
    p.insert("copyright".into(), s("Mooring contributors"));
    p.insert(
        "information".into(),
        s("Licensed under the Apache License 2.0"),
    );
    p
}

/// Reads the next method frame on channel 0 during the handshake.
async fn expect_method<R: AsyncRead + Unpin>(
    rd: &mut FrameReader<R>,
) -> Result<AMQPClass, HandshakeEnd> {
    loop {
        let f = rd.next_frame(HANDSHAKE_TIMEOUT).await?;
        match f.kind {
            super::frame::FRAME_HEARTBEAT => continue,
            FRAME_METHOD if f.channel == 0 => {
                return parse_class(&f.payload[..]).map(|(_, m)| m).map_err(|_| {
                    HandshakeEnd::Close(AmqpError::syntax_error("malformed method frame"))
                });
            }
            _ => {
                return Err(HandshakeEnd::Close(AmqpError::command_invalid(
                    "expected a connection method during the handshake",
                )))
            }
        }
    }
}

fn send(link: &ConnLink, m: AMQPClass) {
    link.send(|out| write_method(out, 0, &m));
}

pub async fn negotiate<R: AsyncRead + Unpin>(
    rd: &mut FrameReader<R>,
    link: &ConnLink,
    broker: &Broker,
    peer: SocketAddr,
) -> Result<Session, HandshakeEnd> {
    let header = rd
        .read_exact_raw(8, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|_| HandshakeEnd::Drop)?;
    if header != PROTOCOL_HEADER {
        link.send(|out| out.extend_from_slice(PROTOCOL_HEADER));
        return Err(HandshakeEnd::BadHeader);
    }
    rd.frame_max = HANDSHAKE_FRAME_MAX;
    send(
        link,
        AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: auth::MECHANISMS.into(),
            locales: "en_US".into(),
        })),
    );
    let AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)) =
        expect_method(rd).await?
    else {
        return Err(HandshakeEnd::Close(AmqpError::command_invalid(
            "expected connection.start-ok",
        )));
    };
    let mechanism = start_ok.mechanism.as_str().to_owned();
    let refused = || {
        HandshakeEnd::Close(AmqpError::access_refused(format!(
            "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
        )))
    };
    let Some((username, password)) = auth::credentials(&mechanism, start_ok.response.as_bytes())
    else {
        return Err(refused());
    };
    let user = broker
        .users
        .read()
        .authenticate(&username, &password)
        .cloned();
    let Some(user) = user else {
        tracing::info!(%peer, user = %username, "authentication failed");
        return Err(refused());
    };
    if broker.loopback_users.contains(&user.name) && !peer.ip().is_loopback() {
        tracing::info!(%peer, user = %username, "loopback-only user refused from a remote address");
        return Err(refused());
    }
    let blocked_capable = match start_ok.client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => {
            matches!(
                t.inner().get("connection.blocked"),
                Some(AMQPValue::Boolean(true))
            )
        }
        _ => false,
    };

    let limits = broker.limits.read().clone();
    let heartbeat = broker.config.heartbeat.as_secs().min(u64::from(u16::MAX)) as u16;
    send(
        link,
        AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: limits.max_channels_per_connection,
            frame_max: limits.frame_max,
            heartbeat,
        })),
    );
    let AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)) = expect_method(rd).await?
    else {
        return Err(HandshakeEnd::Close(AmqpError::command_invalid(
            "expected connection.tune-ok",
        )));
    };
    let refuse = |what: &str, n: u32, bound: &str, limit: u32| {
        HandshakeEnd::Close(
            AmqpError::not_allowed(format!(
                "failed to negotiate connection parameters: negotiated {what} = {n} is {bound} the {} allowed value ({limit})",
                if bound == "higher than" { "maximum" } else { "minimum" }
            ))
            .on(10, 31),
        )
    };
    let frame_max = match tune_ok.frame_max {
        0 => limits.frame_max,
        n if n > limits.frame_max => {
            return Err(refuse("frame_max", n, "higher than", limits.frame_max))
        }
        n if n < MIN_FRAME_MAX => return Err(refuse("frame_max", n, "lower than", MIN_FRAME_MAX)),
        n => n,
    };
    let channel_max = match tune_ok.channel_max {
        0 => limits.max_channels_per_connection,
        n if n > limits.max_channels_per_connection => {
            return Err(refuse(
                "channel_max",
                u32::from(n),
                "higher than",
                u32::from(limits.max_channels_per_connection),
            ))
        }
        n => n,
    };
    rd.frame_max = frame_max;

    let AMQPClass::Connection(connection::AMQPMethod::Open(open)) = expect_method(rd).await? else {
        return Err(HandshakeEnd::Close(AmqpError::command_invalid(
            "expected connection.open",
        )));
    };
    let vhost_name = open.virtual_host.as_str();
    let Some(vhost) = broker.vhost(vhost_name) else {
        return Err(HandshakeEnd::Close(
            AmqpError::not_allowed(format!("vhost {vhost_name} not found")).on(10, 40),
        ));
    };
    if !user.vhosts.iter().any(|v| v == vhost_name) {
        return Err(HandshakeEnd::Close(
            AmqpError::not_allowed(format!(
                "access to vhost '{vhost_name}' refused for user '{}'",
                user.name
            ))
            .on(10, 40),
        ));
    }
    if let Some(max) = limits.max_connections {
        if broker.conns.lock().len() as u64 >= u64::from(max) {
            return Err(HandshakeEnd::Close(
                AmqpError::not_allowed(format!(
                    "access to vhost '{vhost_name}' refused for user '{}': connection limit ({max}) is reached",
                    user.name
                ))
                .on(10, 40),
            ));
        }
    }
    send(
        link,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    );
    Ok(Session {
        user,
        vhost,
        channel_max,
        frame_max,
        heartbeat_secs: tune_ok.heartbeat,
        blocked_capable,
        client_properties: start_ok.client_properties,
        mechanism,
    })
}
