//! Storage micro-benchmark, run by hand (it prints numbers; nothing here is worth a CI run):
//!
//! `CARGO_TARGET_DIR=/var/tmp/mooring-target cargo test -p mooring-broker-agent --release --test storage_bench -- --ignored --nocapture`

use std::sync::Arc;
use std::time::{Duration, Instant};

use mooring_broker_agent::engine::storage::{Durability, QueueKey, Storage, StorageConfig};
use parking_lot::Mutex;

/// Records per flush, like a publisher batch the engine writes per read of its socket.
const BATCH: usize = 100;

/// CPU time of the calling thread in nanoseconds (first field of schedstat): unlike wall time,
/// it is not inflated by other processes on a busy machine.
fn thread_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    stat.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat starts with CPU nanoseconds")
}

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
        let n = batches * BATCH;
        // Phase 1: appends alone (the buffer is written out only every few MiB).
        let mut locs = Vec::with_capacity(n);
        let start = thread_cpu_ns();
        for _ in 0..n {
            locs.push(log.append(&record).expect("append"));
        }
        log.flush().expect("flush");
        let append_only = thread_cpu_ns() - start;
        for loc in &locs {
            log.ack(*loc).expect("ack");
        }
        log.flush().expect("flush acks");
        locs.clear();
        // Phase 2: as the engine does it, one flush per batch of records.
        let wall = Instant::now();
        let start = thread_cpu_ns();
        for _ in 0..batches {
            for _ in 0..BATCH {
                locs.push(log.append(&record).expect("append"));
            }
            log.flush().expect("flush");
        }
        let batched = thread_cpu_ns() - start;
        let wall = wall.elapsed();
        // Phase 3: acks, one flush per batch.
        let start = thread_cpu_ns();
        for batch in locs.chunks(BATCH) {
            for loc in batch {
                log.ack(*loc).expect("ack");
            }
            log.flush().expect("flush acks");
        }
        let acking = thread_cpu_ns() - start;
        println!(
            "{size:>5} B (CPU): append {:>4.0} ns/record; append+flush per {BATCH} {:>5.0} ns/record \
             ({:.1} us per flush); ack+flush {:>3.0} ns/record; wall {:.0}k records/s",
            append_only as f64 / n as f64,
            batched as f64 / n as f64,
            batched.saturating_sub(append_only) as f64 / 1000.0 / batches as f64,
            acking as f64 / n as f64,
            n as f64 / wall.as_secs_f64() / 1000.0,
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
