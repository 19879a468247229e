//! `minkube`: the command-line client of a minkube cluster.
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: cli::args::Cli) -> anyhow::Result<()> {
    // Multi-threaded (one worker) so the span exporter can still send after
    // the command's future is done.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    let trace = {
        let _rt = rt.enter();
        cli::trace::CommandTrace::start(args.command.name(), args.trace)
    };
    if args.trace {
        if let Some(id) = trace.trace_id() {
            // stderr: stdout stays the command's output (ids, JSON).
            eprintln!("trace id: {id}");
        }
    }
    let result = rt.block_on(cli::run(args, trace.context().clone()));
    trace.finish(result.as_ref().err().map(ToString::to_string));
    result?;
    Ok(())
}
