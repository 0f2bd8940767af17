//! Issue 5, "It must show" point 5: two `mooring serve` processes against one Postgres
//! database never produce two leaders for a broker while its leaders are killed, and the
//! active control plane itself is killed once.
//!
//! What a user runs for the local provider on one machine: both processes share the data
//! directory (the local provider finds and adopts node agents through their pid files under
//! `<data-dir>/nodes`) and the master key in it (sealed secrets must open in both); the
//! database is fresh per run (`mooring_chaos_<random>` on 127.0.0.1:5432, a required peer).
//! Only the holder of the control-plane lease runs the reconcilers (provisioning, failover);
//! both serve the API and the agent API. Agents reach "the control plane" through a small
//! TCP forwarder that takes the first replica accepting a connection, as a load balancer in
//! front of the replicas would (`--agent-control-plane-url`).
//!
//! After the first leader kill the test SIGKILLs the replica holding the lease: the other
//! must take the lease over (printed: how long after the kill), the producer's confirms must
//! keep flowing, and the killed replica is started again as a standby on the same data
//! directory (it must not start a second agent for any node: checked at the end).
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
use tokio::net::{TcpListener, TcpStream};

const USER: (&str, &str) = ("twocp", "twocp-password-1");
const QUEUE: &str = "twocp";
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// The control plane holding the lease is killed before this leader kill.
const CONTROL_PLANE_KILL_BEFORE: usize = 1;
/// How long the standby may take to hold the lease after the holder's SIGKILL (the lease is
/// 2 s by default: about 2.5 s is expected).
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(15);

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

/// Polls every live control plane and every node until `stop`.
async fn monitor(
    apis: Arc<Mutex<Vec<Api>>>,
    broker_id: String,
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Violations>>,
) {
    let user = user();
    while !stop.load(Ordering::Relaxed) {
        let apis = apis.lock().expect("lock").clone();
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
                            .push(format!(
                                "control plane {i}: {leaders:?} at {}",
                                chrono::Utc::now().format("%H:%M:%S%.3f")
                            ));
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
                v.two_nodes_serving.push(format!(
                    "{serving:?} at {}",
                    chrono::Utc::now().format("%H:%M:%S%.3f")
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a load balancer in front of the replicas does for the agents: each connection goes to
/// the first of `targets` that accepts it (a dead replica's port refuses at once).
async fn forwarder(
    targets: Arc<Mutex<Vec<String>>>,
) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let targets = targets.lock().expect("lock").clone();
            tokio::spawn(async move {
                for target in targets {
                    let connect = TcpStream::connect(&target);
                    if let Ok(Ok(mut outbound)) =
                        tokio::time::timeout(Duration::from_secs(1), connect).await
                    {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, task))
}

fn log_tails(cps: &[ControlPlane]) -> String {
    cps.iter()
        .enumerate()
        .map(|(i, cp)| format!("control plane {i}:\n{}", cp.log_tail()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The indexes of the live replicas that hold the lease, as their `/healthz` say.
async fn holders(cps: &[ControlPlane], alive: &[bool]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, cp) in cps.iter().enumerate() {
        if alive[i] && cp.holds_lease().await.unwrap_or(false) {
            out.push(i);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_on_one_postgres_never_make_two_leaders() -> Result<()> {
    let db = TempDatabase::create()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("cp");
    let targets: Arc<Mutex<Vec<String>>> = Arc::default();
    let (front, front_task) = forwarder(targets.clone()).await?;
    let options = |log: &str, shared_key: bool| ServeOptions {
        database_url: Some(db.url.clone()),
        master_key_file: shared_key.then(|| data.join("master.key")),
        log_name: Some(log.to_owned()),
        extra_args: vec![
            "--agent-control-plane-url".to_owned(),
            format!("http://{front}"),
        ],
    };
    // cps[0] kills the agents when the test ends (dropped last of all, even when killed).
    let mut cps = vec![ControlPlane::start(&data, options("mooring-a.log", false)).await?];
    targets.lock().expect("lock").push(cps[0].addr.clone());
    let mut b = ControlPlane::start(&data, options("mooring-b.log", true)).await?;
    b.share_agents();
    targets.lock().expect("lock").push(b.addr.clone());
    cps.push(b);
    let mut alive = vec![true, true];
    assert_ne!(cps[0].addr, cps[1].addr, "two distinct API listeners");
    // The admin key bootstrapped by the first works on the second: one database.
    let apis: Arc<Mutex<Vec<Api>>> =
        Arc::new(Mutex::new(vec![cps[0].api()?, cps[1].api_with(&data)?]));
    let live_apis = || apis.lock().expect("lock").clone();
    let first = wait_for(Duration::from_secs(30), "exactly one lease holder", || {
        let (cps, alive) = (&cps, &alive);
        async move {
            let h = holders(cps, alive).await;
            Ok((h.len() == 1).then(|| h[0]))
        }
    })
    .await?;
    println!("control plane {first} holds the lease");

    let broker_id = live_apis()[0]
        .create_broker("twocp", "CLUSTER_MULTI_AZ", USER)
        .await?;
    let mut nodes = live_apis()[1]
        .wait_healthy(&broker_id, 3, mooring_tests::control_plane::CREATE_TIMEOUT)
        .await
        .with_context(|| log_tails(&cps))?;
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
        apis.clone(),
        broker_id.clone(),
        endpoints.clone(),
        stop.clone(),
        violations.clone(),
    ));

    let run = async {
        for k in 0..kills() {
            if k == CONTROL_PLANE_KILL_BEFORE {
                kill_the_lease_holder(&mut cps, &mut alive, &apis, &targets, &log, &options)
                    .await?;
            }
            // Alternate which control plane the test asks: all must agree.
            let apis_now = live_apis();
            let api = &apis_now[k % apis_now.len()];
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
            let pid = cps[0].agent_pid(&leader.node_id)?;
            let killed = Instant::now();
            send_signal(pid, "KILL")?;
            let (id, old) = (&broker_id, &leader.node_id);
            let other = &apis_now[(k + 1) % apis_now.len()];
            let new_leader = wait_for(RECOVERY_TIMEOUT, "a new leader", || async move {
                let d = other.describe(id).await?;
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
        live_apis()[0]
            .wait_healthy(&broker_id, 3, RECOVERY_TIMEOUT)
            .await
    };
    let result = run.await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(30), producer).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), watcher).await;
    let logs = || {
        let mut text = log_tails(&cps);
        for node in &nodes {
            let id = &node.node_id;
            text.push_str(&format!(
                "\n--- {id} ({}):\n{}",
                node.amqp,
                cps[0].agent_log_tail(id)
            ));
        }
        text
    };
    result.with_context(logs)?;

    {
        let v = violations.lock().expect("lock");
        println!(
            "two control planes: {} monitor samples, {} confirmed",
            v.samples,
            log.lock().expect("lock").confirmed.len()
        );
        if !v.two_leaders_in_describe.is_empty() || !v.two_nodes_serving.is_empty() {
            bail!(
                "two leaders seen: in DescribeBroker {:?}; nodes serving at once {:?}\n{}",
                v.two_leaders_in_describe,
                v.two_nodes_serving,
                logs()
            );
        }
        if v.samples < 10 {
            bail!("the monitor took only {} samples", v.samples);
        }
    }
    // One lease holder among the live replicas, and one agent per node: neither the
    // takeover nor the restarted replica started a duplicate.
    let h = holders(&cps, &alive).await;
    if h.len() != 1 {
        bail!("{} lease holders at the end: {h:?}", h.len());
    }
    for node in &nodes {
        cps[0]
            .agent_pid(&node.node_id)
            .with_context(|| format!("node {}", node.node_id))?;
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
    // The API reports the same history through every live control plane.
    for api in &live_apis() {
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
        &live_apis()[0]
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
    front_task.abort();
    Ok(())
}

/// SIGKILLs the replica holding the lease; waits for another to hold it and for the
/// producer's confirms to go on; starts the killed one again (a standby now).
async fn kill_the_lease_holder(
    cps: &mut Vec<ControlPlane>,
    alive: &mut Vec<bool>,
    apis: &Arc<Mutex<Vec<Api>>>,
    targets: &Arc<Mutex<Vec<String>>>,
    log: &Arc<Mutex<ProducerLog>>,
    options: &impl Fn(&str, bool) -> ServeOptions,
) -> Result<()> {
    let holder = match holders(cps, alive).await.as_slice() {
        [one] => *one,
        many => bail!("lease holders before the kill: {many:?}"),
    };
    let dead_addr = cps[holder].addr.clone();
    let killed = Instant::now();
    cps[holder].kill();
    alive[holder] = false;
    apis.lock()
        .expect("lock")
        .retain(|api| !api.base_url().ends_with(&dead_addr));
    let new_holder = wait_for(TAKEOVER_TIMEOUT, "a standby to take the lease", || {
        let (cps, alive) = (&*cps, &*alive);
        async move {
            let h = holders(cps, alive).await;
            Ok(h.first().copied())
        }
    })
    .await
    .with_context(|| log_tails(cps))?;
    let takeover = killed.elapsed();
    let confirmed_then = log.lock().expect("lock").confirmed.len();
    wait_for(
        RECOVERY_TIMEOUT,
        "confirms after the takeover",
        || async move {
            Ok((log.lock().expect("lock").confirmed.len() >= confirmed_then + 20).then_some(()))
        },
    )
    .await?;
    // The longest wait for a confirm from the kill until now: agents kept heartbeating
    // through the forwarder, so leaders kept their leases and the producer hardly noticed.
    let gap = {
        let log = log.lock().expect("lock");
        let mut last = killed;
        let mut gap = Duration::ZERO;
        for c in log.confirms.iter().filter(|c| c.at > killed) {
            gap = gap.max(c.at.duration_since(last));
            last = c.at;
        }
        gap
    };
    println!(
        "control plane {holder} killed: {new_holder} holds the lease after {takeover:?}; \
         longest wait for a confirm since the kill {gap:?}"
    );
    let mut restarted =
        ControlPlane::start(cps[0].data_dir(), options("mooring-restarted.log", true)).await?;
    restarted.share_agents();
    targets.lock().expect("lock").push(restarted.addr.clone());
    apis.lock()
        .expect("lock")
        .push(restarted.api_with(cps[0].data_dir())?);
    cps.push(restarted);
    alive.push(true);
    Ok(())
}
