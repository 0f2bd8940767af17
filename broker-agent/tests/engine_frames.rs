//! Bad input on the AMQP port: one test per kind of malformed frame, and a proptest-driven
//! fuzzer feeding random and mutated frame streams. The engine must answer with the protocol's
//! error (or wait for more bytes), never panic or hang, and keep serving other connections.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use amq_protocol::protocol::{basic, channel, queue, AMQPClass};
use amq_protocol::types::FieldTable;
use proptest::prelude::*;
use support::{frame, method_frame, method_payload, Raw, STEP};

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// Counts panics anywhere in the process (a panicking connection task would otherwise vanish
/// silently inside tokio).
fn count_panics() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

fn declare(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: true,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn publish(rk: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: rk.into(),
        mandatory: false,
        immediate: false,
    }))
}

/// A content header payload: class 60, weight 0, body size, no properties.
fn header(size: u64) -> Vec<u8> {
    let mut v = vec![0, 60, 0, 0];
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v
}

/// Checks that a fresh connection can still declare, publish and get a message.
async fn assert_serves(addr: std::net::SocketAddr) {
    let mut r = Raw::handshake(addr).await;
    r.open_channel(1).await;
    r.send(&method_frame(1, &declare("serves")))
        .await
        .expect("send");
    let (_, m) = r.expect_method().await.expect("declare-ok");
    assert!(
        matches!(m, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
        "{m:?}"
    );
    let mut bytes = method_frame(1, &publish("serves"));
    bytes.extend(frame(2, 1, &header(2)));
    bytes.extend(frame(3, 1, b"ok"));
    bytes.extend(method_frame(
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "serves".into(),
            no_ack: true,
        })),
    ));
    r.send(&bytes).await.expect("send");
    let (_, m) = r.expect_method().await.expect("get-ok");
    assert!(
        matches!(m, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))),
        "{m:?}"
    );
}

async fn close_after(bytes: &[u8]) -> (u16, String, u16, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = support::start(dir.path()).await;
    let addr = engine.local_addrs().amqp;
    let mut r = Raw::handshake(addr).await;
    r.open_channel(1).await;
    r.send(bytes).await.expect("send");
    let close = r.expect_connection_close().await.expect("connection.close");
    assert_serves(addr).await;
    engine.shutdown().await;
    close
}

#[tokio::test]
async fn oversized_frame_is_frame_error() {
    let mut big = method_frame(1, &publish("q"));
    big.extend(frame(2, 1, &header(200_000)));
    big.extend(frame(3, 1, &vec![b'x'; 200_000]));
    let (code, text, _, _) = close_after(&big).await;
    assert_eq!(code, 501);
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");
}

#[tokio::test]
async fn wrong_frame_end_is_frame_error() {
    let mut f = method_frame(1, &declare("q"));
    *f.last_mut().expect("non-empty") = 0x00;
    let (code, text, _, _) = close_after(&f).await;
    assert_eq!(code, 501);
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");
}

#[tokio::test]
async fn unknown_class_and_method_are_refused() {
    for (class, method) in [(99u16, 10u16), (60, 99), (10, 99)] {
        let mut p = class.to_be_bytes().to_vec();
        p.extend_from_slice(&method.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        let (code, _, c, m) = close_after(&frame(1, 1, &p)).await;
        assert_eq!(code, 503, "class {class} method {method}");
        assert_eq!((c, m), (class, method));
    }
}

#[tokio::test]
async fn content_without_method_is_unexpected_frame() {
    for f in [frame(2, 1, &header(3)), frame(3, 1, b"abc")] {
        let (code, text, _, _) = close_after(&f).await;
        assert_eq!(code, 505);
        assert_eq!(
            text,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
        );
    }
}

#[tokio::test]
async fn frames_on_a_never_opened_channel_are_channel_error() {
    let (code, text, c, m) = close_after(&method_frame(7, &declare("q"))).await;
    assert_eq!((code, c, m), (504, 50, 10));
    assert_eq!(text, "CHANNEL_ERROR - expected 'channel.open'");
    let (code, _, _, _) = close_after(&frame(2, 9, &header(1))).await;
    assert_eq!(code, 504);
}

#[tokio::test]
async fn wrong_protocol_header_gets_ours() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = support::start(dir.path()).await;
    let mut r = Raw::connect(engine.local_addrs().amqp).await;
    r.send(b"AMQP\x01\x01\x00\x0a").await.expect("send");
    let mut got = [0u8; 8];
    tokio::time::timeout(
        STEP,
        tokio::io::AsyncReadExt::read_exact(&mut r.stream, &mut got),
    )
    .await
    .expect("in time")
    .expect("read header");
    assert_eq!(&got, b"AMQP\x00\x00\x09\x01");
    engine.shutdown().await;
}

/// A valid stream: open a channel, declare, publish two messages, get one, close the channel.
fn valid_stream() -> Vec<u8> {
    let mut v = method_frame(
        1,
        &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    v.extend(method_frame(1, &declare("fuzz")));
    for body in [&b"hello"[..], &b""[..]] {
        v.extend(method_frame(1, &publish("fuzz")));
        v.extend(frame(2, 1, &header(body.len() as u64)));
        if !body.is_empty() {
            v.extend(frame(3, 1, body));
        }
    }
    v.extend(method_frame(
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "fuzz".into(),
            no_ack: false,
        })),
    ));
    v.extend(frame(
        1,
        1,
        &method_payload(&AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 1,
            multiple: false,
        }))),
    ));
    v
}

#[derive(Debug, Clone)]
enum Input {
    /// Random bytes after a full handshake.
    Random(Vec<u8>),
    /// The valid stream with bytes overwritten, then cut at some point.
    Mutated { edits: Vec<(usize, u8)>, cut: usize },
    /// The valid stream with a region repeated (out-of-order frames).
    Spliced { from: usize, len: usize, at: usize },
}

fn input() -> impl Strategy<Value = Input> {
    let n = valid_stream().len();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(Input::Random),
        (proptest::collection::vec((0..n, any::<u8>()), 1..8), 0..=n)
            .prop_map(|(edits, cut)| Input::Mutated { edits, cut }),
        (0..n, 1..64usize, 0..n).prop_map(|(from, len, at)| Input::Spliced { from, len, at }),
    ]
}

fn render(i: &Input) -> Vec<u8> {
    let mut v = valid_stream();
    match i {
        Input::Random(b) => b.clone(),
        Input::Mutated { edits, cut } => {
            for (at, b) in edits {
                v[*at] = *b;
            }
            v.truncate(*cut);
            v
        }
        Input::Spliced { from, len, at } => {
            let end = (*from + *len).min(v.len());
            let piece = v[*from..end].to_vec();
            v.splice(*at..*at, piece);
            v
        }
    }
}

#[test]
fn fuzzed_frame_streams_never_panic_or_wedge_the_engine() {
    count_panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = rt.block_on(support::start(dir.path()));
    let addr = engine.local_addrs().amqp;
    let cfg = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(cfg, |(i in input())| {
        let bytes = render(&i);
        rt.block_on(async {
            let mut r = Raw::handshake(addr).await;
            let _ = r.send(&bytes).await;
            // The engine either answers (possibly closing) or waits for more bytes; reading for
            // a short while must end either way.
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while r.read_frame().await.is_some() {}
            })
            .await;
            drop(r);
            assert_serves(addr).await;
        });
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    });
    // Every fuzzed connection is cleaned up once its socket is gone.
    let broker = engine.broker().clone();
    rt.block_on(support::wait_for(
        STEP,
        "all fuzz connections to be released",
        || broker.conns.lock().is_empty().then_some(()),
    ));
    rt.block_on(engine.shutdown());
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}
