//! `mooring-loadgen`: PerfTest-style load against any AMQP 0-9-1 broker. Exits 0 when the
//! run completed (counts reached, no connection errors), 1 otherwise.

use clap::Parser;
use mooring_bench::config::Args;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let plan = match args.plan() {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("mooring-loadgen: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let connections = plan.producers + plan.consumers * plan.queues.len();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = args.threads.unwrap_or(cores.min(connections)).max(1);
    // One thread needs no cross-thread wake-ups; more let a producer and a consumer run
    // in parallel when the broker is fast.
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mooring-loadgen: starting the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(mooring_bench::run::run(plan)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => eprintln!("mooring-loadgen: encoding the report: {e}"),
                }
            } else {
                println!("{}", report.human());
            }
            if report.complete {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("mooring-loadgen: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
