//! minkube-manager binary: parse flags, start, serve until SIGTERM/SIGINT.
use minkube_common::config_file::ConfigCommand;
use minkube_common::signals::StopSignals;
use minkube_manager::config::Command;
use minkube_manager::{Args, Manager};

/// mimalloc instead of glibc malloc: many small, short-lived allocations
/// per message, from several threads.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let loaded = minkube_common::config_file::load::<Args>().unwrap_or_else(|e| e.exit());
    match &loaded.args.command {
        Some(Command::Init { san }) => {
            let args = &loaded.args;
            let done = minkube_manager::init::init(&args.data_dir, san)?;
            print!("{}", done.instructions(&args.data_dir));
            return Ok(());
        }
        Some(Command::Config {
            what: ConfigCommand::Print,
        }) => {
            print!("{}", loaded.render());
            return Ok(());
        }
        None => {}
    }
    let args = loaded.args;
    let rt = minkube_common::runtime::multi_thread("minkube-manager")?;
    // The span exporter's channel lives on this runtime.
    let telemetry = {
        let _rt = rt.enter();
        minkube_common::telemetry::init(args.log_format, "minkube-manager")
    };
    if let Err(e) = minkube_manager::memory::disable_huge_pages() {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off for the manager; the system's setting applies (latency tails may be longer)");
    }
    let result = rt.block_on(run(args));
    // The runtime's workers still run, so the last spans can be sent.
    telemetry.shutdown();
    result
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    let metrics = match minkube_common::admin::install_metrics() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "metrics disabled");
            None
        }
    };
    let manager = Manager::start(args).await?;
    if let Some(addr) = manager.admin_addr() {
        println!("minkube-manager admin on {addr}");
    }
    if let Some(addr) = manager.local_addr() {
        // Scripts and tests read the gRPC port from this line.
        println!("minkube-manager listening on {addr}");
        tracing::info!(%addr, "serving");
    }
    manager
        .serve(metrics, async move {
            let first = signals.recv().await;
            tracing::info!(signal = %first, "shutting down (signal again to exit at once)");
            signals.exit_on_next();
        })
        .await?;
    Ok(())
}
