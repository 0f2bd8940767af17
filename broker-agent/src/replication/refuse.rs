//! A follower's AMQP listener: every client is answered with connection.close naming the
//! leader, so that client libraries given a list of hosts move on to the next one.
//!
//! The close is sent after connection.start/start-ok (before that, clients have no way to read
//! a reason: pika and lapin report a close received in place of connection.tune with its reply
//! text). Nothing the client sends is trusted beyond the frame sizes it declares.

use std::time::Duration;

use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::engine::amqp::frame;

/// How long one refused client may take; it cannot hold the listener longer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest handshake frame read from a client we are about to refuse.
const MAX_FRAME: usize = 64 * 1024;
/// AMQP reply code 530.
const NOT_ALLOWED: u16 = 530;

/// The reply text clients show, e.g. `NOT_ALLOWED - this node (b-x-2) is a follower; the
/// leader is b-x-1 at 127.0.0.1:5673`.
pub fn reason(me: &str, leader: Option<(&str, &str)>) -> String {
    match leader {
        Some((node, addr)) => {
            format!("NOT_ALLOWED - this node ({me}) is a follower; the leader is {node} at {addr}")
        }
        None => {
            format!("NOT_ALLOWED - this node ({me}) is a follower; the leader is not known yet")
        }
    }
}

/// Serves refusals until `stop` turns true (or its sender is dropped). The reason is read for
/// each client, so a change of leader shows at once.
pub async fn serve(
    listener: TcpListener,
    reason: watch::Receiver<String>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = super::stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let text = reason.borrow().clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(CLIENT_TIMEOUT, refuse(stream, &text)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an AMQP client to refuse failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn refuse(mut stream: TcpStream, text: &str) -> std::io::Result<()> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await?;
    if &header[..4] != b"AMQP" {
        // Not AMQP: answer with the protocol header we speak, as the spec asks, and hang up.
        stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        return Ok(());
    }
    let mut out = Vec::new();
    frame::write_method(
        &mut out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        })),
    );
    stream.write_all(&out).await?;
    // The client's start-ok; its contents do not matter.
    read_frame(&mut stream).await?;
    out.clear();
    frame::write_method(
        &mut out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: NOT_ALLOWED,
            reply_text: text.into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    stream.write_all(&out).await?;
    // Give the client a moment to read the reason (its close-ok is not needed).
    let _ = tokio::time::timeout(Duration::from_secs(1), read_frame(&mut stream)).await;
    Ok(())
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut head = [0u8; frame::FRAME_HEADER_LEN];
    stream.read_exact(&mut head).await?;
    let size = u32::from_be_bytes(head[3..7].try_into().expect("4 bytes")) as usize;
    if size > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut rest = vec![0u8; size + 1];
    stream.read_exact(&mut rest).await?;
    Ok(())
}

fn server_properties() -> FieldTable {
    let mut p = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
    p.insert("product".into(), s("Mooring"));
    p.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lapin_client_reads_the_leader_from_the_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let text = reason("b-x-2", Some(("b-x-1", "127.0.0.1:5673")));
        let (_reason_tx, reason_rx) = watch::channel(text.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, reason_rx, stop_rx));
        let err = lapin::Connection::connect(
            &format!("amqp://guest:guest@{addr}/%2f"),
            lapin::ConnectionProperties::default(),
        )
        .await
        .expect_err("a follower refuses");
        let shown = err.to_string();
        assert!(
            shown.contains("b-x-1")
                && shown.contains("127.0.0.1:5673")
                && shown.contains("follower"),
            "lapin shows {shown:?}"
        );
        stop_tx.send_replace(true);
        server.await.expect("server task");
    }
}
