//! Runs a `Plan`: declares the topology, connects every producer and consumer, lets them
//! run until the duration or the counts are reached, and gathers the report.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{Client, CHANNEL};
use crate::config::{Plan, Stop};
use crate::consumer::{self, ConsumerResult, ConsumerSpec};
use crate::cpu::process_cpu_time;
use crate::publisher::{self, PublisherResult, PublisherSpec};
use crate::report::Report;
use crate::stats::Histogram;
use crate::wire::PublishTemplate;

/// How often the coordinator checks whether the run is over.
const TICK: Duration = Duration::from_millis(10);
/// How long tasks get to wind down after the stop flag.
const GRACE: Duration = Duration::from_secs(5);

enum Outcome {
    Published(PublisherResult),
    Consumed(ConsumerResult),
}

async fn declare(setup: &mut Client, plan: &Plan) -> Result<u64> {
    if plan.fresh {
        delete_topology(setup, plan).await?;
    }
    if let Some((name, kind)) = &plan.exchange {
        setup.declare_exchange(name, kind, plan.durable).await?;
    }
    let mut backlog = 0u64;
    for q in &plan.queues {
        backlog += u64::from(
            setup
                .declare_queue(q, plan.durable, &plan.queue_args)
                .await?,
        );
        if let Some((name, _)) = &plan.exchange {
            setup.bind_queue(q, name, q).await?;
        }
    }
    Ok(backlog)
}

async fn delete_topology(setup: &mut Client, plan: &Plan) -> Result<()> {
    for q in &plan.queues {
        setup.delete_queue(q).await?;
    }
    if let Some((name, _)) = &plan.exchange {
        setup.delete_exchange(name).await?;
    }
    Ok(())
}

/// Runs the whole load; an Err means the run could not start (connect, declare).
pub async fn run(plan: Plan) -> Result<Report> {
    let mut setup = Client::connect(&plan.target)
        .await
        .context("setup connection")?;
    let backlog = declare(&mut setup, &plan).await?;
    let target = if plan.drain {
        Some(plan.cmessages.unwrap_or(backlog))
    } else {
        plan.cmessages
    };

    let stop = Arc::new(AtomicBool::new(false));
    let consumed = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for q in &plan.queues {
        for _ in 0..plan.consumers {
            let mut c = Client::connect(&plan.target)
                .await
                .context("consumer connection")?;
            if plan.prefetch > 0 && !plan.autoack {
                c.qos(plan.prefetch).await?;
            }
            c.consume(q, plan.autoack).await?;
            consumers.push(c);
        }
    }
    let (exchange, routing_key) = match &plan.exchange {
        Some((name, _)) => (name.as_str(), plan.queues[0].as_str()),
        None => ("", plan.queues[0].as_str()),
    };
    let mut producers = Vec::new();
    for _ in 0..plan.producers {
        let mut c = Client::connect(&plan.target)
            .await
            .context("producer connection")?;
        if plan.confirm > 0 {
            c.confirm_select().await?;
        }
        let template = PublishTemplate::new(
            CHANNEL,
            exchange,
            routing_key,
            plan.size,
            plan.persistent,
            c.frame_max,
        )?;
        producers.push((c, template));
    }

    let started = Instant::now();
    let cpu_before = process_cpu_time();
    let limit = match plan.stop {
        Stop::Duration(d) => d,
        Stop::Counts { limit } => limit,
    };
    let window_end = started + limit;
    let mut tasks = JoinSet::new();
    for c in consumers {
        let spec = ConsumerSpec {
            autoack: plan.autoack,
            multi_ack: plan.multi_ack,
            window_end,
            target,
        };
        let (stop, consumed) = (stop.clone(), consumed.clone());
        tasks.spawn(async move { Outcome::Consumed(consumer::run(c, spec, stop, consumed).await) });
    }
    let producers_done = Arc::new(AtomicU64::new(0));
    for (c, template) in producers {
        let spec = PublisherSpec {
            template,
            confirm: plan.confirm,
            pmessages: plan.pmessages,
            rate: plan.rate,
        };
        let (stop, done) = (stop.clone(), producers_done.clone());
        tasks.spawn(async move {
            let r = publisher::run(c, spec, stop).await;
            done.fetch_add(1, Ordering::Relaxed);
            Outcome::Published(r)
        });
    }

    // Coordinate: stop at the end of the window, when the counts are reached, or when a
    // task ended early (an error), whichever comes first.
    let counted = matches!(plan.stop, Stop::Counts { .. });
    let all = tasks.len();
    let mut outcomes = Vec::with_capacity(all);
    loop {
        let now = Instant::now();
        if now >= window_end {
            break;
        }
        let producers_finished = producers_done.load(Ordering::Relaxed) == plan.producers as u64;
        let consumers_finished = target.is_none_or(|t| consumed.load(Ordering::Relaxed) >= t);
        if counted && producers_finished && consumers_finished {
            break;
        }
        match tokio::time::timeout(TICK, tasks.join_next()).await {
            Ok(Some(joined)) => {
                let outcome = joined.context("a load task panicked")?;
                let failed = match &outcome {
                    Outcome::Published(r) => r.error.is_some(),
                    Outcome::Consumed(r) => r.error.is_some(),
                };
                outcomes.push(outcome);
                if failed {
                    break;
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let stopped_at = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let grace = tokio::time::sleep(GRACE);
    tokio::pin!(grace);
    while outcomes.len() < all {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(joined) => outcomes.push(joined.context("a load task panicked")?),
                None => break,
            },
            _ = &mut grace => {
                tasks.abort_all();
                break;
            }
        }
    }
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    let hung = all - outcomes.len();

    let mut errors = Vec::new();
    if hung > 0 {
        errors.push(format!("{hung} load tasks did not stop within {GRACE:?}"));
    }
    if plan.cleanup {
        if let Err(e) = delete_topology(&mut setup, &plan).await {
            errors.push(format!("cleanup: {e:#}"));
        }
    }
    setup.close().await;

    let mut report = Report::default();
    let mut latency = Histogram::default();
    let mut last_publish: Option<Instant> = None;
    let mut last_consume: Option<Instant> = None;
    for outcome in outcomes {
        match outcome {
            Outcome::Published(r) => {
                report.published += r.published;
                report.confirmed += r.confirmed;
                report.nacked += r.nacked;
                last_publish = last_publish.max(r.finished_at);
                errors.extend(r.error.map(|e| format!("producer: {e}")));
            }
            Outcome::Consumed(r) => {
                report.consumed += r.received;
                latency.merge(&r.latency);
                last_consume = last_consume.max(r.last_at);
                errors.extend(r.error.map(|e| format!("consumer: {e}")));
            }
        }
    }
    let elapsed = stopped_at.min(window_end).duration_since(started);
    // A count run's rate is over the time it took; a timed run's over the window.
    let publish_time = match (counted, last_publish) {
        (true, Some(t)) => t.duration_since(started),
        _ => elapsed,
    };
    let consume_time = match (counted, last_consume) {
        (true, Some(t)) => t.duration_since(started),
        _ => elapsed,
    };
    let expected_published = plan.pmessages.map(|n| n * plan.producers as u64);
    report.complete = errors.is_empty()
        && (!counted
            || (expected_published.is_none_or(|n| report.published >= n)
                && target.is_none_or(|t| report.consumed >= t)));
    report.fill(elapsed, publish_time, consume_time, &latency, cpu);
    report.errors = errors;
    Ok(report)
}
