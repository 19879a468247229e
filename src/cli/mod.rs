//! The `minkube` command line: argument parsing, calls to the manager's
//! ControlService and the table/JSON rendering of the answers.
pub mod args;
pub mod commands;
pub mod detail;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod json;
pub mod logs;
pub mod names;
pub mod table;
pub mod timefmt;
pub mod trace;
pub mod watch;

use std::io::Write;

use args::{Cli, Command, NodeCommand};
use commands::Session;
pub use error::CliError;

/// Runs one parsed command line and writes its output to stdout. Calls to
/// the manager carry `trace`.
pub async fn run(cli: Cli, trace: minkube::trace::TraceHeaders) -> Result<(), CliError> {
    let session = Session::connect(&cli.manager, trace).await?;
    let out = cli.output;
    let text = match &cli.command {
        Command::Run(a) => commands::run(&session, a, out).await?,
        Command::Ps(a) => commands::ps(&session, a, out).await?,
        Command::Get { id, watch: true } => {
            watch::get(&session, id, out).await?;
            String::new()
        }
        Command::Get { id, watch: false } => commands::get(&session, id, out).await?,
        Command::Events(a) => {
            watch::events(&session, a, out).await?;
            String::new()
        }
        Command::Logs(a) => {
            logs::logs(&session, a, out).await?;
            String::new()
        }
        Command::Stop { id } => commands::stop(&session, id, out).await?,
        Command::Nodes => commands::nodes(&session, out).await?,
        Command::Node(NodeCommand::Get { node }) => commands::node_get(&session, node, out).await?,
    };
    write_stdout(&text)
}

/// Writes to stdout; a closed pipe (e.g. `minkube ps | head`) is not an error.
fn write_stdout(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::Output(e.to_string()))
        }
        _ => Ok(()),
    }
}
