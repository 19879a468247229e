//! `minkube-agent`: parses flags, sets up logging and signals, runs the agent.
use std::future::Future;

use anyhow::Context;
use minkube_common::signals::StopSignals;
use tracing::{info, warn};

/// Completes on the first SIGTERM/SIGINT; a second one exits at once.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut signals = StopSignals::install()?;
    Ok(async move {
        let first = signals.recv().await;
        info!(signal = %first, "shutting down; containers keep running (signal again to exit at once)");
        signals.exit_on_next();
    })
}

fn main() {
    let loaded =
        minkube_common::config_file::load::<minkube_agent::Args>().unwrap_or_else(|e| e.exit());
    if let Some(minkube_agent::config::Command::Config { .. }) = &loaded.args.command {
        print!("{}", loaded.render());
        return;
    }
    let args = loaded.args;
    let result = minkube_common::runtime::multi_thread("minkube-agent")
        .context("cannot start the async runtime")
        .and_then(|rt| {
            // The span exporter's channel lives on this runtime.
            let telemetry = {
                let _rt = rt.enter();
                minkube_common::telemetry::init(args.log_format, "minkube-agent")
            };
            let result = rt.block_on(async move {
                let shutdown = shutdown_signal().context("cannot install signal handlers")?;
                let admin = match minkube_common::admin::install_metrics() {
                    Ok(metrics) => {
                        let listener =
                            minkube_common::admin::bind(&args.admin_host, args.admin_port).await?;
                        if let Ok(addr) = listener.local_addr() {
                            println!("minkube-agent admin on {addr}");
                        }
                        Some(minkube_agent::AdminEndpoint { listener, metrics })
                    }
                    Err(e) => {
                        warn!(error = %e, "metrics disabled");
                        None
                    }
                };
                minkube_agent::run(args, admin, shutdown).await?;
                Ok(())
            });
            // The runtime's workers still run, so the last spans can be sent.
            telemetry.shutdown();
            result
        });
    if let Err(e) = result {
        eprintln!("error: {}", minkube_agent::runtime::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}
