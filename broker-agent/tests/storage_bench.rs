//! Storage micro-benchmark, run by hand (it prints numbers; nothing here is worth a CI run):
//!
//! `CARGO_TARGET_DIR=/var/tmp/mooring-target cargo test -p mooring-broker-agent --release --test storage_bench -- --ignored --nocapture`

use std::sync::Arc;
use std::time::{Duration, Instant};

use mooring_broker_agent::engine::storage::{Durability, QueueKey, Storage, StorageConfig};
use parking_lot::Mutex;

/// Records per flush, like a publisher batch the engine writes per read of its socket.
const BATCH: usize = 100;

fn key(name: &str) -> QueueKey {
    QueueKey {
        vhost: "/".into(),
        name: name.into(),
    }
}

#[test]
#[ignore = "benchmark: run by hand with --release"]
fn bench_storage() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let storage = Storage::open(StorageConfig::new(dir.path())).expect("open storage");
    let mut log = storage
        .open_queue_log(&key("bench"), Durability::Written)
        .expect("open");
    for size in [16usize, 1024, 4096] {
        let record = vec![0x5a; size];
        let batches = (128 << 20) / ((size + 8) * BATCH);
        let mut locs = Vec::with_capacity(batches * BATCH);
        let (mut in_append, mut in_flush) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..batches {
            let start = Instant::now();
            for _ in 0..BATCH {
                locs.push(log.append(&record).expect("append"));
            }
            let appended = Instant::now();
            log.flush().expect("flush");
            in_append += appended - start;
            in_flush += appended.elapsed();
        }
        let start = Instant::now();
        for batch in locs.chunks(BATCH) {
            for loc in batch {
                log.ack(*loc).expect("ack");
            }
            log.flush().expect("flush acks");
        }
        let acking = start.elapsed();
        let n = locs.len() as f64;
        println!(
            "{size:>5} B: append {:>5.0} ns/record; flush of {BATCH} records {:>6.1} us; \
             ack+flush {:>4.0} ns/record; {:.0}k records/s written",
            in_append.as_nanos() as f64 / n,
            in_flush.as_micros() as f64 / batches as f64,
            acking.as_nanos() as f64 / n,
            n / (in_append + in_flush).as_secs_f64() / 1000.0,
        );
    }
    let stats = storage.stats();
    println!(
        "after full acks: {} segments, {} bytes on disk",
        stats.segments, stats.bytes_on_disk
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut synced = storage
        .open_queue_log(&key("synced"), Durability::Synced)
        .expect("open");
    let record = vec![0x5a; 1024];
    let rounds = 200;
    let start = Instant::now();
    for _ in 0..rounds {
        synced.append(&record).expect("append");
        runtime
            .block_on(synced.commit().expect("commit").wait())
            .expect("fsync");
    }
    println!(
        "one 1 KiB append + fdatasync round trip: {:.2} ms",
        start.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds)
    );

    // Group commit: many publishers, each waiting for its own confirm, on a few queues.
    for (queues, publishers) in [(1usize, 100usize), (4, 400)] {
        let logs: Vec<_> = (0..queues)
            .map(|i| {
                let log = storage.open_queue_log(&key(&format!("g{i}")), Durability::Synced);
                Arc::new(Mutex::new(log.expect("open")))
            })
            .collect();
        let fsyncs_before = storage.stats().fsyncs_total;
        let run_for = Duration::from_secs(3);
        let start = Instant::now();
        let confirmed: u64 = runtime.block_on(async {
            let tasks: Vec<_> = (0..publishers)
                .map(|p| {
                    let log = Arc::clone(&logs[p % queues]);
                    tokio::spawn(async move {
                        let record = vec![0x5a; 1024];
                        let mut confirmed = 0u64;
                        while start.elapsed() < run_for {
                            let waiter = {
                                let mut log = log.lock();
                                log.append(&record).expect("append");
                                log.commit().expect("commit")
                            };
                            waiter.wait().await.expect("fsync");
                            confirmed += 1;
                        }
                        confirmed
                    })
                })
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.expect("task");
            }
            total
        });
        let fsyncs = storage.stats().fsyncs_total - fsyncs_before;
        println!(
            "group commit, {publishers} publishers on {queues} synced queue(s), 1 KiB: \
             {:.0} confirms/s, {fsyncs} fsyncs for {confirmed} confirms",
            confirmed as f64 / start.elapsed().as_secs_f64(),
        );
    }
}
