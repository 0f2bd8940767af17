//! Shared helpers for the engine's integration tests: an in-process engine on ephemeral ports,
//! and a raw AMQP client that speaks frames directly (for bad-input tests).

#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{channel, connection, gen_class, parse_class, AMQPClass};
use amq_protocol::types::FieldTable;
use mooring_broker_agent::engine::{hash_password, Engine, EngineConfig, UserDef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound for any single wait on the engine.
pub const STEP: Duration = Duration::from_secs(10);

pub fn guest() -> UserDef {
    UserDef {
        name: "guest".into(),
        password_hash: hash_password("guest"),
        tags: vec!["administrator".into()],
        vhosts: vec!["/".into()],
    }
}

pub fn config(dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::new(dir, "127.0.0.1:0".parse().expect("literal address"));
    c.initial_users = vec![guest()];
    c
}

pub async fn start(dir: &Path) -> Engine {
    Engine::start(config(dir)).await.expect("engine starts")
}

pub fn uri(addr: SocketAddr) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

/// One frame as the raw client sees it.
#[derive(Debug)]
pub struct RawFrame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn method(&self) -> Option<AMQPClass> {
        if self.kind != 1 {
            return None;
        }
        parse_class(&self.payload[..]).ok().map(|(_, m)| m)
    }
}

pub fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(0xCE);
    v
}

pub fn method_payload(m: &AMQPClass) -> Vec<u8> {
    gen_class(m)(WriteContext::from(Vec::new()))
        .expect("generating into a Vec")
        .write
}

pub fn method_frame(channel: u16, m: &AMQPClass) -> Vec<u8> {
    frame(1, channel, &method_payload(m))
}

/// A client that writes bytes and reads frames, with deadlines.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next frame, or None if the stream ended (or nothing came within `STEP`).
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            if self.buf.len() >= 7 {
                let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]])
                    as usize;
                if self.buf.len() >= size + 8 {
                    let f = RawFrame {
                        kind: self.buf[0],
                        channel: u16::from_be_bytes([self.buf[1], self.buf[2]]),
                        payload: self.buf[7..7 + size].to_vec(),
                    };
                    self.buf.drain(..size + 8);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 65536];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) => n,
                _ => return None,
            };
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until a method frame on any channel satisfies `f`.
    pub async fn expect_method(&mut self) -> Option<(u16, AMQPClass)> {
        loop {
            let fr = self.read_frame().await?;
            if let Some(m) = fr.method() {
                return Some((fr.channel, m));
            }
        }
    }

    /// Reads frames until connection.close; returns (code, text, class, method).
    pub async fn expect_connection_close(&mut self) -> Option<(u16, String, u16, u16)> {
        loop {
            let (_, m) = self.expect_method().await?;
            if let AMQPClass::Connection(connection::AMQPMethod::Close(c)) = m {
                let ok =
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}));
                let _ = self.send(&method_frame(0, &ok)).await;
                return Some((
                    c.reply_code,
                    c.reply_text.to_string(),
                    c.class_id,
                    c.method_id,
                ));
            }
        }
    }

    /// Protocol header through open-ok, as guest on "/".
    pub async fn handshake(addr: SocketAddr) -> Raw {
        let mut r = Raw::connect(addr).await;
        r.send(b"AMQP\x00\x00\x09\x01").await.expect("send header");
        let (_, m) = r.expect_method().await.expect("start");
        assert!(
            matches!(m, AMQPClass::Connection(connection::AMQPMethod::Start(_))),
            "{m:?}"
        );
        let start_ok =
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            }));
        r.send(&method_frame(0, &start_ok))
            .await
            .expect("send start-ok");
        let (_, m) = r.expect_method().await.expect("tune");
        let AMQPClass::Connection(connection::AMQPMethod::Tune(t)) = m else {
            panic!("expected tune, got {m:?}");
        };
        let tune_ok = AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: t.channel_max,
            frame_max: t.frame_max,
            heartbeat: 0,
        }));
        r.send(&method_frame(0, &tune_ok))
            .await
            .expect("send tune-ok");
        let open = AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        }));
        r.send(&method_frame(0, &open)).await.expect("send open");
        let (_, m) = r.expect_method().await.expect("open-ok");
        assert!(
            matches!(m, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))),
            "{m:?}"
        );
        r
    }

    pub async fn open_channel(&mut self, id: u16) {
        let open = AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
        self.send(&method_frame(id, &open))
            .await
            .expect("send channel.open");
        let (ch, m) = self.expect_method().await.expect("channel.open-ok");
        assert_eq!(ch, id);
        assert!(
            matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))),
            "{m:?}"
        );
    }
}

/// Polls `f` until it returns Some, failing with `what` after `timeout`.
pub async fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls an async `f` until it returns Some, for at most `STEP`.
pub async fn wait_for_async<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out polling");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Handshake that accepts the server's heartbeat proposal of `heartbeat` seconds, then the
/// caller stays silent.
pub async fn silent_handshake(r: &mut Raw, heartbeat: u16) {
    r.send(b"AMQP\x00\x00\x09\x01").await.expect("send header");
    r.expect_method().await.expect("start");
    let start_ok = AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties: FieldTable::default(),
        mechanism: "PLAIN".into(),
        response: "\0guest\0guest".into(),
        locale: "en_US".into(),
    }));
    r.send(&method_frame(0, &start_ok))
        .await
        .expect("send start-ok");
    r.expect_method().await.expect("tune");
    let tune_ok = AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
        channel_max: 16,
        frame_max: 131_072,
        heartbeat,
    }));
    r.send(&method_frame(0, &tune_ok))
        .await
        .expect("send tune-ok");
    let open = AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
        virtual_host: "/".into(),
    }));
    r.send(&method_frame(0, &open)).await.expect("send open");
    r.expect_method().await.expect("open-ok");
}
