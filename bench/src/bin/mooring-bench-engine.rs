//! `mooring-bench-engine`: mooring-agent against RabbitMQ, side by side (`make bench-engine`).
//! Exits 0 when every measurement succeeded. Brokers are stopped on the way out, also on
//! an error or SIGINT/SIGTERM (their handles stop them when dropped).

use clap::Parser;
use mooring_bench::engine::{run, Args};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mooring-bench-engine: starting the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        }
    });
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("mooring-bench-engine: some measurements failed (see ERROR above)");
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("mooring-bench-engine: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
