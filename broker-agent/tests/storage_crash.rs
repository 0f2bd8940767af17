//! Crash safety of the queue log under `kill -9`.
//!
//! The parent re-runs this test binary as a child (the ignored test `crash_child`, selected by
//! an environment variable). The child appends records and acks older ones in a loop, and
//! prints `w ID` for every record only after the flush that wrote it returned, `p ID` before it
//! acks a record, and `a ID` once that ack is flushed. The parent SIGKILLs it at random moments, then recovers the log itself
//! and checks: every printed record is there, byte for byte, in order; every printed ack holds;
//! nothing is returned that the child did not write.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mooring_broker_agent::engine::storage::{Durability, QueueKey, Storage, StorageConfig};
use rand::{Rng, SeedableRng};

const CHILD_DIR_ENV: &str = "MOORING_STORAGE_CRASH_DIR";
const CHILD_START_ENV: &str = "MOORING_STORAGE_CRASH_START";
const KILLS: usize = 30;
/// Small segments so that the child rolls over and deletes fully acked segments constantly.
const SEGMENT_BYTES: u64 = 4096;
/// Records the child leaves unacked forever (ids divisible by this), so that some segments
/// survive with a few live records among acked ones.
const KEEP_EVERY: u64 = 1000;
/// The child acks a record once it is this many ids old.
const ACK_LAG: u64 = 50;
/// How long the parent waits for any line from a child before declaring it stuck.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

fn open(dir: &Path) -> Storage {
    let mut config = StorageConfig::new(dir);
    config.segment_bytes = SEGMENT_BYTES;
    Storage::open(config).expect("open storage")
}

fn key() -> QueueKey {
    QueueKey {
        vhost: "/".into(),
        name: "crash".into(),
    }
}

/// The record for `id`: the id, then filler that depends on it, 8 to 407 bytes in all.
fn payload(id: u64) -> Vec<u8> {
    let len = (id.wrapping_mul(2654435761) % 400) as usize;
    let mut out = id.to_le_bytes().to_vec();
    out.extend((0..len).map(|i| (id as usize).wrapping_mul(31).wrapping_add(i) as u8));
    out
}

fn id_of(record: &[u8]) -> u64 {
    u64::from_le_bytes(record[..8].try_into().expect("records start with their id"))
}

/// The child's body. Runs only when the parent sets the environment.
#[test]
#[ignore = "run by storage_survives_kill_9 as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let mut next_id: u64 = std::env::var(CHILD_START_ENV)
        .expect("start id")
        .parse()
        .expect("number");
    let storage = open(Path::new(&dir));
    let mut log = storage
        .open_queue_log(&key(), Durability::Written)
        .expect("open log");
    let mut live = VecDeque::new();
    log.scan(&mut |loc, record| live.push_back((id_of(record), loc)))
        .expect("scan");
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut out = std::io::stdout().lock();
    // Bounded: the parent kills the child long before this ends.
    for _ in 0..1_000_000 {
        let batch: Vec<u64> = (0..rng.gen_range(1..=20)).map(|i| next_id + i).collect();
        next_id += batch.len() as u64;
        for id in &batch {
            live.push_back((*id, log.append(&payload(*id)).expect("append")));
        }
        log.flush().expect("flush");
        for id in &batch {
            writeln!(out, "w {id}").expect("stdout");
        }
        out.flush().expect("stdout");

        // Announce the acks before making them: an ack may reach the disk before the child
        // dies without its `a` line, and the parent must know that record may be gone.
        let mut acking = Vec::new();
        while let Some(&(id, loc)) = live.front() {
            if id + ACK_LAG >= next_id {
                break;
            }
            live.pop_front();
            if id % KEEP_EVERY != 0 {
                acking.push((id, loc));
                writeln!(out, "p {id}").expect("stdout");
            }
        }
        out.flush().expect("stdout");
        for (_, loc) in &acking {
            log.ack(*loc).expect("ack");
        }
        log.flush().expect("flush acks");
        for (id, _) in &acking {
            writeln!(out, "a {id}").expect("stdout");
        }
        out.flush().expect("stdout");
    }
}

#[test]
fn storage_survives_kill_9() {
    let data = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary path");
    let mut rng = rand::rngs::StdRng::from_entropy();
    // Records the child reported written and did not start to ack: present after every crash.
    let mut must_live: BTreeSet<u64> = BTreeSet::new();
    // Records the child reported acked: must never come back.
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut next_id = 0u64;
    let mut total_lines = 0usize;

    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, data.path())
            .env(CHILD_START_ENV, next_id.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill after a random number of reports: the child runs on between our reads, so the
        // kill lands anywhere in its loop (mid-append, mid-flush, between flush and print).
        let kill_after = rng.gen_range(1..3000);
        let mut lines = Vec::new();
        while lines.len() < kill_after {
            match rx.recv_timeout(LINE_TIMEOUT) {
                Ok(line) => lines.push(line),
                Err(e) => panic!(
                    "round {round}: child stopped reporting ({e}); status {:?}",
                    child.try_wait()
                ),
            }
        }
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap child");
        reader.join().expect("reader thread");
        // Lines printed before death are still in the pipe: they count too.
        lines.extend(rx.try_iter());
        total_lines += lines.len();
        for line in &lines {
            let (kind, id) = line.split_once(' ').unwrap_or(("", ""));
            let Ok(id) = id.parse::<u64>() else { continue };
            match kind {
                "w" => {
                    must_live.insert(id);
                }
                "p" => {
                    must_live.remove(&id);
                }
                "a" => {
                    acked.insert(id);
                }
                _ => {}
            }
        }

        let storage = open(data.path());
        let log = storage
            .open_queue_log(&key(), Durability::Written)
            .expect("recover log");
        let mut seen = Vec::new();
        log.scan(&mut |_, record| {
            let id = id_of(record);
            assert_eq!(
                record,
                &payload(id)[..],
                "round {round}: record {id} corrupted"
            );
            seen.push(id);
        })
        .expect("scan");
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "round {round}: records out of order"
        );
        let seen_set: BTreeSet<u64> = seen.iter().copied().collect();
        let lost: Vec<_> = must_live.difference(&seen_set).take(10).collect();

        assert!(
            lost.is_empty(),
            "round {round}: flushed records lost: {lost:?}"
        );
        let resurrected: Vec<_> = acked.intersection(&seen_set).take(10).collect();
        assert!(
            resurrected.is_empty(),
            "round {round}: acked records came back: {resurrected:?}"
        );
        assert_eq!(log.live().0, seen.len() as u64);
        // Whatever survived is durable from now on, printed or not.
        must_live = seen_set;
        let printed_max = must_live.iter().chain(&acked).max().copied();
        next_id = printed_max.map_or(next_id, |m| m + 1).max(next_id);
        drop(log);
        drop(storage);
    }
    eprintln!(
        "{KILLS} kills, {total_lines} reports, {} acks held, {} records live, next id {next_id}",
        acked.len(),
        must_live.len()
    );
    assert!(
        total_lines > KILLS,
        "the children did some work: {total_lines} reports"
    );
    assert!(!acked.is_empty(), "the children acked records");
}
