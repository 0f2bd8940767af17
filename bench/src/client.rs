//! A minimal AMQP 0-9-1 client connection: the handshake (PLAIN), one channel, and the
//! synchronous methods the load generator needs before it starts streaming. Every wait
//! has a deadline, and a broker's connection.close or channel.close becomes an error
//! carrying its reply code and text.

use std::time::Duration;

use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, ChannelId, FieldTable};
use anyhow::{bail, Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::config::Target;
use crate::wire::{encode_method, FrameReader, FRAME_METHOD};

/// How long any single handshake step or synchronous method may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(15);
/// The one channel each connection uses.
pub const CHANNEL: ChannelId = 1;
/// What we ask for when the broker leaves frame_max open (0).
const DEFAULT_FRAME_MAX: u32 = 131_072;

/// An open connection with channel 1 open.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    reader: FrameReader,
    pub frame_max: u32,
    out: Vec<u8>,
}

/// Turns a broker's close method into an error, or passes anything else through.
pub fn close_error(method: &AMQPClass) -> Option<anyhow::Error> {
    match method {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Some(anyhow::anyhow!(
            "broker closed the connection: {} {}",
            c.reply_code,
            c.reply_text
        )),
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => Some(anyhow::anyhow!(
            "broker closed the channel: {} {}",
            c.reply_code,
            c.reply_text
        )),
        _ => None,
    }
}

/// connection.close with 200 "done", the polite end of a run.
pub fn close_method() -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: 200,
        reply_text: "done".into(),
        class_id: 0,
        method_id: 0,
    }))
}

fn client_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "connection.blocked",
        "authentication_failure_close",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString("mooring-loadgen".into()),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props
}

impl Client {
    /// Connects, authenticates with PLAIN, opens the vhost and channel 1.
    pub async fn connect(target: &Target) -> Result<Self> {
        let addr = format!("{}:{}", target.host, target.port);
        let stream = tokio::time::timeout(RPC_TIMEOUT, TcpStream::connect(&addr))
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let mut client = Self {
            stream,
            reader: FrameReader::default(),
            frame_max: DEFAULT_FRAME_MAX,
            out: Vec::new(),
        };
        tokio::time::timeout(RPC_TIMEOUT * 2, client.handshake(target))
            .await
            .with_context(|| format!("handshake with {addr}: timed out"))?
            .with_context(|| format!("handshake with {addr}"))?;
        Ok(client)
    }

    async fn handshake(&mut self, target: &Target) -> Result<()> {
        self.stream
            .write_all(b"AMQP\x00\x00\x09\x01")
            .await
            .context("sending the protocol header")?;
        match self.recv_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(start)) => {
                let mechanisms = start.mechanisms.to_string();
                if !mechanisms.split(' ').any(|m| m == "PLAIN") {
                    bail!("broker does not offer PLAIN (offers {mechanisms:?})");
                }
            }
            other => bail!("expected connection.start, got {other:?}"),
        }
        let response = format!("\0{}\0{}", target.user, target.password);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client_properties(),
                mechanism: "PLAIN".into(),
                response: response.into(),
                locale: "en_US".into(),
            })),
        )
        .await?;
        let tune = match self.recv_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => tune,
            other => bail!("expected connection.tune, got {other:?}"),
        };
        self.frame_max = match tune.frame_max {
            0 => DEFAULT_FRAME_MAX,
            n => n.min(DEFAULT_FRAME_MAX),
        };
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 1,
                frame_max: self.frame_max,
                // Runs are short and both sides are busy: heartbeats would only add noise.
                heartbeat: 0,
            })),
        )
        .await?;
        self.call(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: target.vhost.as_str().into(),
            })),
        )
        .await?;
        self.call(
            CHANNEL,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await?;
        Ok(())
    }

    async fn send(&mut self, channel: ChannelId, method: AMQPClass) -> Result<()> {
        self.out.clear();
        encode_method(&mut self.out, channel, method)?;
        self.stream
            .write_all(&self.out)
            .await
            .context("writing to the broker")
    }

    /// Waits for the next method on `channel` (skipping heartbeats), failing on a close.
    async fn recv_method(&mut self, channel: ChannelId) -> Result<AMQPClass> {
        let deadline = tokio::time::Instant::now() + RPC_TIMEOUT;
        loop {
            while let Some(frame) = self.reader.next_frame()? {
                if frame.kind != FRAME_METHOD {
                    continue;
                }
                let method = frame.method()?;
                if let Some(err) = close_error(&method) {
                    return Err(err);
                }
                if frame.channel == channel {
                    return Ok(method);
                }
            }
            let more = tokio::time::timeout_at(deadline, self.reader.fill(&mut self.stream))
                .await
                .context("waiting for the broker's reply: timed out")??;
            if !more {
                bail!("broker closed the connection");
            }
        }
    }

    /// Sends a synchronous method and returns the broker's reply.
    pub async fn call(&mut self, channel: ChannelId, method: AMQPClass) -> Result<AMQPClass> {
        self.send(channel, method).await?;
        self.recv_method(channel).await
    }

    pub async fn declare_exchange(&mut self, name: &str, kind: &str, durable: bool) -> Result<()> {
        self.call(
            CHANNEL,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: name.into(),
                kind: kind.into(),
                durable,
                ..Default::default()
            })),
        )
        .await
        .with_context(|| format!("declaring exchange {name}"))?;
        Ok(())
    }

    pub async fn delete_exchange(&mut self, name: &str) -> Result<()> {
        self.call(
            CHANNEL,
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: name.into(),
                ..Default::default()
            })),
        )
        .await
        .with_context(|| format!("deleting exchange {name}"))?;
        Ok(())
    }

    /// Declares a queue and returns how many messages it holds.
    pub async fn declare_queue(
        &mut self,
        name: &str,
        durable: bool,
        arguments: &FieldTable,
    ) -> Result<u32> {
        let reply = self
            .call(
                CHANNEL,
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: name.into(),
                    durable,
                    arguments: arguments.clone(),
                    ..Default::default()
                })),
            )
            .await
            .with_context(|| format!("declaring queue {name}"))?;
        match reply {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => bail!("expected queue.declare-ok, got {other:?}"),
        }
    }

    pub async fn delete_queue(&mut self, name: &str) -> Result<()> {
        self.call(
            CHANNEL,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: name.into(),
                ..Default::default()
            })),
        )
        .await
        .with_context(|| format!("deleting queue {name}"))?;
        Ok(())
    }

    pub async fn bind_queue(&mut self, queue: &str, exchange: &str, key: &str) -> Result<()> {
        self.call(
            CHANNEL,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: queue.into(),
                exchange: exchange.into(),
                routing_key: key.into(),
                ..Default::default()
            })),
        )
        .await
        .with_context(|| format!("binding queue {queue} to {exchange}"))?;
        Ok(())
    }

    pub async fn confirm_select(&mut self) -> Result<()> {
        self.call(
            CHANNEL,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )
        .await
        .context("confirm.select")?;
        Ok(())
    }

    pub async fn qos(&mut self, prefetch_count: u16) -> Result<()> {
        self.call(
            CHANNEL,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count,
                global: false,
            })),
        )
        .await
        .context("basic.qos")?;
        Ok(())
    }

    pub async fn consume(&mut self, queue: &str, no_ack: bool) -> Result<()> {
        self.call(
            CHANNEL,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.into(),
                no_ack,
                ..Default::default()
            })),
        )
        .await
        .with_context(|| format!("basic.consume on {queue}"))?;
        Ok(())
    }

    /// Closes politely; errors are ignored since the run's result is already known.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.call(0, close_method())).await;
    }

    /// Hands the socket and any bytes already read to a streaming loop.
    pub fn into_parts(self) -> (OwnedReadHalf, OwnedWriteHalf, FrameReader) {
        let (r, w) = self.stream.into_split();
        (r, w, self.reader)
    }
}
