//! The `minkube` command line: argument parsing, calls to the manager's
//! ControlService and the table/JSON rendering of the answers.
pub mod access;
pub mod args;
pub mod commands;
pub mod detail;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod json;
pub mod logs;
pub mod names;
pub mod node_admin;
pub mod table;
pub mod timefmt;
pub mod trace;
pub mod watch;

use std::io::Write;

use args::{Cli, Command, NodeCommand};
use commands::Session;
pub use error::CliError;

/// Runs one parsed command line and writes its output to stdout. Calls to
/// the manager carry the token and `trace` (the command's span).
pub async fn run(cli: Cli, trace: opentelemetry::Context) -> Result<(), CliError> {
    let mut metadata = minkube::client::CallMetadata::default().with_trace(&trace);
    if let Some(token) = cli.token.as_deref().filter(|t| !t.trim().is_empty()) {
        metadata = metadata.with_bearer(token);
    }
    let tls = match &cli.ca_cert {
        Some(path) => Some(client_tls(path)?),
        None => None,
    };
    let session = Session::connect(&cli.manager, tls.as_ref(), metadata).await?;
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
        Command::Node(c) => node_admin::run(&session, c, out).await?,
        Command::Token(t) => access::token(&session, t, out).await?,
        Command::Whoami => access::whoami(&session, out).await?,
    };
    write_stdout(&text)
}

/// TLS settings that verify the manager against the CA in `path`.
fn client_tls(path: &std::path::Path) -> Result<tonic::transport::ClientTlsConfig, CliError> {
    let pem = std::fs::read_to_string(path).map_err(|e| CliError::File {
        flag: "--ca-cert",
        path: path.display().to_string(),
        error: e.to_string(),
    })?;
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem)))
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
