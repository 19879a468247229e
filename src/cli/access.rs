//! `minkube token ...` and `minkube whoami`: the AccessService.
use minkube::pb::{
    CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, Role, RotateJoinTokenRequest,
    WhoAmIRequest,
};
use serde_json::json;

use super::args::{Output, TokenCommand};
use super::commands::Session;
use super::error::CliError;
use super::table::Table;
use super::timefmt;

/// Lower-case role name, as the CLI spells it.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
        Role::Unspecified => "none",
    }
}

fn text(v: &serde_json::Value) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    )
}

/// Runs one `minkube token` subcommand.
pub async fn token(s: &Session, cmd: &TokenCommand, out: Output) -> Result<String, CliError> {
    let mut c = s.access();
    Ok(match cmd {
        TokenCommand::Create { name, role } => {
            let req = CreateTokenRequest {
                name: name.clone(),
                role: Role::from(*role) as i32,
            };
            let resp = s.call(c.create_token(req)).await?;
            match out {
                // The secret alone, so that scripts can capture it.
                Output::Table => format!("{}\n", resp.secret),
                Output::Json => text(&json!({
                    "name": name,
                    "role": role_name(Role::from(*role)),
                    "secret": resp.secret,
                })),
            }
        }
        TokenCommand::List => {
            let resp = s.call(c.list_tokens(ListTokensRequest {})).await?;
            match out {
                Output::Table => {
                    let mut t = Table::new(&["NAME", "ROLE", "CREATED"]);
                    for tok in &resp.tokens {
                        t.row(vec![
                            tok.name.clone(),
                            role_name(tok.role()).into(),
                            tok.created_at
                                .as_ref()
                                .map(timefmt::rfc3339_seconds)
                                .unwrap_or_default(),
                        ]);
                    }
                    t.render()
                }
                Output::Json => text(&json!({
                    "tokens": resp.tokens.iter().map(|t| json!({
                        "name": t.name,
                        "role": role_name(t.role()),
                        "created_at": t.created_at.as_ref().map(timefmt::rfc3339),
                    })).collect::<Vec<_>>(),
                })),
            }
        }
        TokenCommand::Revoke { name } => {
            s.call(c.revoke_token(RevokeTokenRequest { name: name.clone() }))
                .await?;
            match out {
                Output::Table => format!("{name}\n"),
                Output::Json => text(&json!({ "revoked": name })),
            }
        }
        TokenCommand::RotateJoin => {
            let resp = s
                .call(c.rotate_join_token(RotateJoinTokenRequest {}))
                .await?;
            match out {
                Output::Table => format!("{}\n", resp.join_token),
                Output::Json => text(&json!({ "join_token": resp.join_token })),
            }
        }
    })
}

/// `minkube whoami`.
pub async fn whoami(s: &Session, out: Output) -> Result<String, CliError> {
    let resp = s.call(s.access().who_am_i(WhoAmIRequest {})).await?;
    Ok(match out {
        Output::Table => format!("{} ({})\n", resp.name, role_name(resp.role())),
        Output::Json => text(&json!({ "name": resp.name, "role": role_name(resp.role()) })),
    })
}
