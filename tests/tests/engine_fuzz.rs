//! A frame-stream fuzzer against a live agent (issue 2, "It must show" point 3).
//!
//! Seeded random and mutated AMQP frame streams go to the engine over TCP, some before the
//! handshake and most after it. For every case the broker must answer within a deadline, with
//! well-formed frames only, closing with an AMQP error code if it closes with a method; it must
//! never hang, crash or stop serving other clients. The seed is printed; set MOORING_FUZZ_SEED
//! to replay a run and MOORING_FUZZ_CASES to run more cases.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mooring_tests::Agent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEFAULT_CASES: usize = 2_000;
/// Cases in flight at once.
const PARALLEL: usize = 8;
/// Bound on the broker's reaction to one case (it has seen EOF from us by then).
const CASE_DEADLINE: Duration = Duration::from_secs(5);
/// Liveness is checked with a real client this often (in cases).
const PROBE_EVERY: usize = 100;
const FRAME_END: u8 = 0xCE;
/// Reply codes a server may close with after bad input (AMQP 0-9-1 and RabbitMQ).
const ERROR_CODES: [u16; 15] = [
    320, 402, 403, 404, 405, 406, 501, 502, 503, 504, 505, 506, 530, 540, 541,
];

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
    out
}

fn method(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    frame(1, channel, &payload)
}

fn shortstr(s: &str) -> Vec<u8> {
    let mut out = vec![s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

fn longstr(b: &[u8]) -> Vec<u8> {
    let mut out = (b.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

/// The client half of the handshake, sent in one go (servers read it in order).
fn handshake() -> Vec<u8> {
    let mut out = b"AMQP\x00\x00\x09\x01".to_vec();
    let mut start_ok = 0u32.to_be_bytes().to_vec(); // empty client-properties table
    start_ok.extend(shortstr("PLAIN"));
    start_ok.extend(longstr(b"\0guest\0guest"));
    start_ok.extend(shortstr("en_US"));
    out.extend(method(0, 10, 11, &start_ok));
    let mut tune_ok = 2047u16.to_be_bytes().to_vec();
    tune_ok.extend_from_slice(&131_072u32.to_be_bytes());
    tune_ok.extend_from_slice(&0u16.to_be_bytes());
    out.extend(method(0, 10, 31, &tune_ok));
    let mut open = shortstr("/");
    open.extend(shortstr(""));
    open.push(0);
    out.extend(method(0, 10, 40, &open));
    out
}

fn publish(channel: u16, queue: &str, body: &[u8]) -> Vec<u8> {
    let mut args = 0u16.to_be_bytes().to_vec();
    args.extend(shortstr(""));
    args.extend(shortstr(queue));
    args.push(0);
    let mut out = method(channel, 60, 40, &args);
    let mut header = 60u16.to_be_bytes().to_vec();
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&(body.len() as u64).to_be_bytes());
    header.extend_from_slice(&0x1000u16.to_be_bytes()); // delivery-mode present
    header.push(2);
    out.extend(frame(2, channel, &header));
    out.extend(frame(3, channel, body));
    out
}

/// A valid conversation after the handshake, built from random steps.
fn valid_stream(rng: &mut StdRng) -> Vec<u8> {
    let mut out = method(1, 20, 10, &shortstr(""));
    let queue = format!("fuzz.{}", rng.gen_range(0..4));
    for _ in 0..rng.gen_range(1..8) {
        match rng.gen_range(0..9) {
            0 => {
                let mut args = 0u16.to_be_bytes().to_vec();
                args.extend(shortstr(&queue));
                args.push(rng.gen_range(0..16)); // passive/durable/exclusive/auto-delete bits
                args.extend_from_slice(&0u32.to_be_bytes());
                out.extend(method(1, 50, 10, &args));
            }
            1 => {
                let body: Vec<u8> = (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect();
                out.extend(publish(1, &queue, &body));
            }
            2 => {
                let mut args = 0u16.to_be_bytes().to_vec();
                args.extend(shortstr(&queue));
                args.push(rng.gen_range(0..2));
                out.extend(method(1, 60, 70, &args)); // basic.get
            }
            3 => {
                let mut args = rng.gen_range(0u64..4).to_be_bytes().to_vec();
                args.push(rng.gen_range(0..2));
                out.extend(method(1, 60, 80, &args)); // basic.ack
            }
            4 => out.extend(method(1, 85, 10, &[0])), // confirm.select
            5 => out.extend(method(1, 90, 10, &[])),  // tx.select
            6 => out.extend(frame(8, 0, &[])),        // heartbeat
            7 => {
                let mut args = 0u16.to_be_bytes().to_vec();
                args.extend(shortstr(&queue));
                args.extend(shortstr(""));
                args.push(rng.gen_range(0..16));
                args.extend_from_slice(&0u32.to_be_bytes());
                out.extend(method(1, 60, 20, &args)); // basic.consume
            }
            _ => {
                let mut args = 0u16.to_be_bytes().to_vec();
                args.extend(shortstr(&format!("fuzz.x.{}", rng.gen_range(0..3))));
                args.extend(shortstr(
                    ["direct", "fanout", "topic", "headers"][rng.gen_range(0..4)],
                ));
                args.push(rng.gen_range(0..32));
                args.extend_from_slice(&0u32.to_be_bytes());
                out.extend(method(1, 40, 10, &args)); // exchange.declare
            }
        }
    }
    out
}

/// Damages a stream: flipped and inserted bytes, cut ranges, duplicated spans.
fn mutate(rng: &mut StdRng, mut data: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.gen_range(1..5) {
        if data.is_empty() {
            data.push(rng.gen());
        }
        let i = rng.gen_range(0..data.len());
        match rng.gen_range(0..5) {
            0 => data[i] = rng.gen(),
            1 => data[i] ^= 1 << rng.gen_range(0..8),
            2 => {
                let extra: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
                data.splice(i..i, extra);
            }
            3 => {
                let end = (i + rng.gen_range(1..32)).min(data.len());
                data.drain(i..end);
            }
            _ => {
                let end = (i + rng.gen_range(1..64)).min(data.len());
                let span = data[i..end].to_vec();
                data.splice(i..i, span);
            }
        }
    }
    data
}

/// One case: the bytes to send, and whether the handshake goes first.
fn case(rng: &mut StdRng) -> (bool, Vec<u8>) {
    match rng.gen_range(0..10) {
        // random bytes instead of, or right after, the protocol header
        0 => {
            let junk: Vec<u8> = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
            (false, junk)
        }
        1 => (false, mutate(rng, handshake())),
        _ => {
            let valid = valid_stream(rng);
            (true, mutate(rng, valid))
        }
    }
}

/// Reads frames until EOF, checking that each is well formed and that a connection.close
/// carries an error code. Returns how many frames came.
async fn read_until_eof(stream: &mut TcpStream, expect_header: bool) -> Result<usize> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // A reset after the server closed with unread input is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut rest = &buf[..];
    // A server refusing the protocol header answers with its own header first.
    if rest.starts_with(b"AMQP") {
        ensure!(
            rest.len() >= 8 && &rest[..8] == b"AMQP\x00\x00\x09\x01",
            "bad header {rest:?}"
        );
        rest = &rest[8..];
    } else if expect_header && rest.is_empty() {
        return Ok(0);
    }
    let mut frames = 0;
    while !rest.is_empty() {
        ensure!(
            rest.len() >= 8,
            "truncated frame header from the server: {rest:?}"
        );
        let size = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
        ensure!(rest.len() >= 8 + size, "truncated frame from the server");
        ensure!(
            rest[7 + size] == FRAME_END,
            "server frame without frame-end"
        );
        let (kind, payload) = (rest[0], &rest[7..7 + size]);
        if kind == 1 && payload.len() >= 6 && payload[..4] == [0, 10, 0, 50] {
            let code = u16::from_be_bytes([payload[4], payload[5]]);
            ensure!(
                ERROR_CODES.contains(&code),
                "connection.close with code {code}"
            );
        }
        rest = &rest[8 + size..];
        frames += 1;
    }
    Ok(frames)
}

async fn run_case(addr: std::net::SocketAddr, with_handshake: bool, data: Vec<u8>) -> Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut out = if with_handshake {
        handshake()
    } else {
        Vec::new()
    };
    out.extend(data);
    // The server may close mid-write; what matters is how it reacts, checked below.
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    tokio::time::timeout(CASE_DEADLINE, read_until_eof(&mut stream, with_handshake))
        .await
        .context("the broker neither closed nor finished within the deadline")??;
    Ok(())
}

/// A real client can still publish and get a message.
async fn probe(uri: &str) -> Result<()> {
    let conn = tokio::time::timeout(
        CASE_DEADLINE,
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .context("connect timed out")??;
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.basic_publish(
        "".into(),
        q.name().clone(),
        BasicPublishOptions::default(),
        b"probe",
        BasicProperties::default(),
    )
    .await?
    .await?;
    let got = ch
        .basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
        .await?
        .context("probe message missing")?;
    ensure!(got.delivery.data == b"probe");
    conn.close(200, "probe done".into()).await?;
    Ok(())
}

/// Deletes the queues and exchanges the fuzz streams may have declared.
async fn remove_fuzz_names(uri: &str) -> Result<()> {
    let conn = Connection::connect(uri, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    for i in 0..4 {
        ch.queue_delete(format!("fuzz.{i}").into(), Default::default())
            .await?;
    }
    for i in 0..3 {
        ch.exchange_delete(format!("fuzz.x.{i}").into(), Default::default())
            .await?;
    }
    conn.close(200, "cleaned".into()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_frame_streams() -> Result<()> {
    let seed = std::env::var("MOORING_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let cases = std::env::var("MOORING_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    println!("MOORING_FUZZ_SEED={seed} cases={cases}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir()?;
    // MOORING_BROKER=rabbitmq checks the checker against the reference broker.
    let (agent, addr, uri) = if std::env::var("MOORING_BROKER").as_deref() == Ok("rabbitmq") {
        let addr: std::net::SocketAddr = "127.0.0.1:5672".parse()?;
        (
            None,
            addr,
            "amqp://guest:guest@127.0.0.1:5672/%2f".to_string(),
        )
    } else {
        let agent = Agent::start(&dir.path().join("data"), &[]).await?;
        let (addr, uri) = (agent.ports()?.amqp, agent.amqp_uri()?);
        (Some(agent), addr, uri)
    };
    let log = |agent: &Option<Agent>| agent.as_ref().map(Agent::log_tail).unwrap_or_default();

    // A client connected before the fuzzing must be served all along, not only new ones.
    let bystander = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let bystander_ch = bystander.create_channel().await?;
    let mut done = 0;
    while done < cases {
        let batch: Vec<_> = (0..PARALLEL.min(cases - done))
            .map(|_| case(&mut rng))
            .collect();
        let handles: Vec<_> = batch
            .iter()
            .cloned()
            .map(|(hs, data)| tokio::spawn(run_case(addr, hs, data)))
            .collect();
        for (handle, (hs, data)) in handles.into_iter().zip(batch) {
            if let Err(e) = handle.await.context("case panicked")? {
                bail!(
                    "seed {seed}, case {done}: {e:#}\nhandshake first: {hs}\nsent: {data:?}\nagent log:\n{}",
                    log(&agent)
                );
            }
            done += 1;
        }
        if done % PROBE_EVERY < PARALLEL {
            probe(&uri).await.with_context(|| {
                format!(
                    "probe after {done} cases (seed {seed}); log:\n{}",
                    log(&agent)
                )
            })?;
        }
    }
    probe(&uri).await.context("final probe")?;
    let q = bystander_ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("the connection opened before the fuzzing was not served")?;
    ensure!(q.name().as_str().starts_with("amq.gen-"));
    bystander.close(200, "done".into()).await?;
    if agent.is_none() {
        remove_fuzz_names(&uri).await?; // keep the shared RabbitMQ clean
    }
    if let Some(agent) = &agent {
        ensure!(
            !agent.log().contains("panicked"),
            "the agent logged a panic:\n{}",
            agent.log_tail()
        );
    }
    Ok(())
}
