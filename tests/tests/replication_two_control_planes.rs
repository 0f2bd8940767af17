//! Issue 5, "It must show" point 5: two `mooring serve` processes against one Postgres
//! database never produce two leaders for a broker while its leaders are killed.
//!
//! What a user runs for the local provider on one machine: both processes share the data
//! directory (the local provider finds and adopts node agents through their pid files under
//! `<data-dir>/nodes`, so whichever control plane notices a dead agent restarts it, and the
//! other adopts it) and the master key in it (sealed secrets must open in both); the
//! database is fresh per run (`mooring_chaos_<random>` on 127.0.0.1:5432, a required peer).
//! Both run their failover loops against the same rows: promotions are epoch
//! compare-and-sets, so of two racing passes exactly one may win.
//!
//! Checked all along, every ~100 ms: DescribeBroker through each control plane names at
//! most one LEADER, and at most one node accepts AMQP clients (followers refuse them, so a
//! node that accepts is serving as leader). Checked at the end: every promotion event in
//! `broker_events` has its own epoch, epochs only grow, and the API's events agree with
//! the table. `cargo test` kills 3 leaders; MOORING_LONG=1 (`make test-long`) kills 10.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mooring_tests::chaos::{self, Producer, ProducerLog};
use mooring_tests::control_plane::{
    instances, send_signal, Api, ControlPlane, ServeOptions, TempDatabase,
};
use mooring_tests::wait_for;
use rand::Rng;

const USER: (&str, &str) = ("twocp", "twocp-password-1");
const QUEUE: &str = "twocp";
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);

fn kills() -> usize {
    if std::env::var_os("MOORING_LONG").is_some() {
        10
    } else {
        3
    }
}

fn user() -> (String, String) {
    (USER.0.to_owned(), USER.1.to_owned())
}

/// What the monitor saw that must never be.
#[derive(Debug, Default)]
struct Violations {
    samples: u64,
    two_leaders_in_describe: Vec<String>,
    two_nodes_serving: Vec<String>,
}

/// Polls both control planes and every node until `stop`.
async fn monitor(
    apis: Vec<Api>,
    broker_id: String,
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Violations>>,
) {
    let user = user();
    while !stop.load(Ordering::Relaxed) {
        for (i, api) in apis.iter().enumerate() {
            if let Ok(d) = api.describe(&broker_id).await {
                if let Ok(list) = instances(&d) {
                    let leaders: Vec<&str> = list
                        .iter()
                        .filter(|n| n.role == "LEADER")
                        .map(|n| n.node_id.as_str())
                        .collect();
                    if leaders.len() > 1 {
                        seen.lock()
                            .expect("lock")
                            .two_leaders_in_describe
                            .push(format!("control plane {i}: {leaders:?}"));
                    }
                }
            }
        }
        // Probe every node at once, so that "two serving" means at the same moment.
        let probes = endpoints.iter().map(|e| {
            let user = user.clone();
            async move {
                match chaos::connect(e, &user).await {
                    Ok(conn) => {
                        let _ = conn.close(200, "probe".into()).await;
                        Some(e.clone())
                    }
                    Err(_) => None,
                }
            }
        });
        let serving: Vec<String> = futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        {
            let mut v = seen.lock().expect("lock");
            v.samples += 1;
            if serving.len() > 1 {
                v.two_nodes_serving.push(format!("{serving:?}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_on_one_postgres_never_make_two_leaders() -> Result<()> {
    let db = TempDatabase::create()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("cp");
    let a = ControlPlane::start(
        &data,
        ServeOptions {
            database_url: Some(db.url.clone()),
            log_name: Some("mooring-a.log".into()),
            ..Default::default()
        },
    )
    .await?;
    let mut b = ControlPlane::start(
        &data,
        ServeOptions {
            database_url: Some(db.url.clone()),
            master_key_file: Some(data.join("master.key")),
            log_name: Some("mooring-b.log".into()),
            ..Default::default()
        },
    )
    .await?;
    // `a` kills the agents when the test ends.
    b.share_agents();
    assert_ne!(a.addr, b.addr, "two distinct API listeners");
    // The admin key bootstrapped by the first works on the second: one database.
    let api_a = a.api()?;
    let api_b = b.api_with(&data)?;

    let broker_id = api_a
        .create_broker("twocp", "CLUSTER_MULTI_AZ", USER)
        .await?;
    let mut nodes = api_b
        .wait_healthy(&broker_id, 3, mooring_tests::control_plane::CREATE_TIMEOUT)
        .await
        .with_context(|| a.log_tail())?;
    nodes.sort_by(|x, y| x.node_id.cmp(&y.node_id));
    let endpoints: Vec<String> = nodes.iter().map(|n| n.amqp.clone()).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(ProducerLog::default()));
    let producer = tokio::spawn(
        Producer {
            id: "twocp-p0".into(),
            endpoints: endpoints.clone(),
            user: user(),
            queue: QUEUE.into(),
            log: log.clone(),
            stop: stop.clone(),
        }
        .run(),
    );
    let violations = Arc::new(Mutex::new(Violations::default()));
    let watcher = tokio::spawn(monitor(
        vec![api_a.clone(), api_b.clone()],
        broker_id.clone(),
        endpoints.clone(),
        stop.clone(),
        violations.clone(),
    ));

    let apis = [&api_a, &api_b];
    let run = async {
        for k in 0..kills() {
            // Alternate which control plane the test asks: both must agree.
            let api = apis[k % 2];
            let healthy = api.wait_healthy(&broker_id, 3, RECOVERY_TIMEOUT).await?;
            let leader = healthy
                .iter()
                .find(|n| n.role == "LEADER")
                .context("no leader")?
                .clone();
            tokio::time::sleep(Duration::from_millis(
                rand::thread_rng().gen_range(100..1000),
            ))
            .await;
            let pid = a.agent_pid(&leader.node_id)?;
            let killed = Instant::now();
            send_signal(pid, "KILL")?;
            let (id, old) = (&broker_id, &leader.node_id);
            let new_leader = wait_for(RECOVERY_TIMEOUT, "a new leader", || async move {
                let d = apis[(k + 1) % 2].describe(id).await?;
                Ok(instances(&d)?
                    .into_iter()
                    .find(|n| n.role == "LEADER" && n.node_id != *old))
            })
            .await?;
            println!(
                "kill {}: leader {} -> {} seen after {:?}",
                k + 1,
                leader.node_id,
                new_leader.node_id,
                killed.elapsed()
            );
        }
        api_a.wait_healthy(&broker_id, 3, RECOVERY_TIMEOUT).await
    };
    let result = run.await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(30), producer).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), watcher).await;
    result.with_context(|| format!("a:\n{}\nb:\n{}", a.log_tail(), b.log_tail()))?;

    // Both control planes did work: each ran failover passes against the shared rows.
    {
        let v = violations.lock().expect("lock");
        println!(
            "two control planes: {} monitor samples, {} confirmed",
            v.samples,
            log.lock().expect("lock").confirmed.len()
        );
        if !v.two_leaders_in_describe.is_empty() || !v.two_nodes_serving.is_empty() {
            bail!(
                "two leaders seen: in DescribeBroker {:?}; nodes serving at once {:?}",
                v.two_leaders_in_describe,
                v.two_nodes_serving
            );
        }
        if v.samples < 10 {
            bail!("the monitor took only {} samples", v.samples);
        }
    }

    // The epoch history: one promotion per epoch, in increasing order.
    let rows = db.query(&format!(
        "SELECT kind, epoch, coalesce(to_node, '') FROM broker_events \
         WHERE broker_id = '{broker_id}' AND kind IN ('failover', 'switchover') ORDER BY id"
    ))?;
    let promotions: Vec<(String, u64, String)> = rows
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Ok((
                f[0].to_owned(),
                f[1].parse().with_context(|| format!("epoch in {l}"))?,
                f[2].to_owned(),
            ))
        })
        .collect::<Result<_>>()?;
    println!("promotions: {promotions:?}");
    if promotions.len() < kills() {
        bail!(
            "{} kills but {} promotions recorded: {promotions:?}",
            kills(),
            promotions.len()
        );
    }
    let epochs: Vec<u64> = promotions.iter().map(|p| p.1).collect();
    let distinct: BTreeSet<u64> = epochs.iter().copied().collect();
    if distinct.len() != epochs.len() || epochs.windows(2).any(|w| w[0] >= w[1]) {
        bail!("an epoch was promoted twice or went backwards: {promotions:?}");
    }
    let current = db.query(&format!(
        "SELECT epoch FROM broker_replication WHERE broker_id = '{broker_id}'"
    ))?;
    let current: u64 = current.trim().parse().context("current epoch")?;
    if Some(&current) != epochs.last() {
        bail!("current epoch {current} is not the last promotion's {epochs:?}");
    }
    // The API reports the same history through either control plane.
    for api in apis {
        let events = api.events(&broker_id).await?;
        let api_epochs: Vec<u64> = events
            .iter()
            .filter(|e| e["kind"] == "failover" || e["kind"] == "switchover")
            .filter_map(|e| e["epoch"].as_u64())
            .collect();
        if api_epochs != epochs {
            bail!("events API {api_epochs:?} != table {epochs:?}");
        }
    }
    // Nothing confirmed was lost either.
    let drained = chaos::drain(
        &api_a
            .wait_healthy(&broker_id, 3, RECOVERY_TIMEOUT)
            .await?
            .into_iter()
            .find(|n| n.role == "LEADER")
            .context("no leader")?
            .amqp,
        &user(),
        QUEUE,
    )
    .await?;
    let log = log.lock().expect("lock");
    let verdict = chaos::verify(
        &log.confirmed,
        drained
            .get("twocp-p0")
            .map(Vec::as_slice)
            .unwrap_or_default(),
    );
    println!("two control planes: {verdict:?}");
    if verdict.confirmed == 0 || !verdict.lost.is_empty() || !verdict.out_of_order.is_empty() {
        bail!("two control planes: {verdict:?}");
    }
    Ok(())
}
