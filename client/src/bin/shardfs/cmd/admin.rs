//! Access administration: `admin token create|revoke|list|bootstrap`.

use std::path::Path;

use serde_json::json;
use shardfs_client::certs::write_private;
use shardfs_client::{Client, ClientError, Result};
use shardfs_proto::outln;

use crate::output::format_ms;

/// `admin token create --name N --role R [--prefix P] [--out FILE]`.
pub async fn create(
    client: &Client,
    name: &str,
    role: &str,
    prefix: &str,
    out: Option<&Path>,
) -> Result<()> {
    let token = client
        .meta()
        .create_token(name, role, prefix)
        .await
        .map_err(|s| ClientError::meta(&format!("token {name}"), s))?;
    match out {
        Some(path) => {
            write_private(path, &format!("{token}\n"))?;
            outln!(
                "token {name} ({role} on {prefix}) written to {} (0600)",
                path.display()
            );
        }
        None => outln!("{token}"),
    }
    Ok(())
}

/// `admin token revoke NAME`.
pub async fn revoke(client: &Client, name: &str) -> Result<()> {
    client
        .meta()
        .revoke_token(name)
        .await
        .map_err(|s| ClientError::meta(&format!("token {name}"), s))?;
    outln!("revoked token {name}");
    Ok(())
}

/// `admin token list [--json]`.
pub async fn list(client: &Client, json: bool) -> Result<()> {
    let tokens = client
        .meta()
        .list_tokens()
        .await
        .map_err(|s| ClientError::meta("tokens", s))?;
    if json {
        let rows: Vec<_> = tokens
            .iter()
            .map(|t| json!({"name": t.name, "role": t.role, "prefix": t.prefix, "created_ms": t.created_ms}))
            .collect();
        outln!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    for t in &tokens {
        outln!(
            "{:<24} {:<7} {:<24} created {}",
            t.name,
            t.role,
            t.prefix,
            format_ms(t.created_ms)
        );
    }
    Ok(())
}

/// `admin token bootstrap --out FILE [--name N]`: a token made here, for
/// every metaserver's --admin-token-file.
pub fn bootstrap(out: &Path, name: &str) -> Result<()> {
    if out.exists() {
        return Err(ClientError::AlreadyExists(out.display().to_string()));
    }
    let (token, _) = shardfs_proto::token::new_token(name).map_err(ClientError::InvalidArgument)?;
    write_private(out, &format!("{token}\n"))?;
    outln!(
        "bootstrap admin token {name} written to {} (0600): give it to every metaserver as --admin-token-file",
        out.display()
    );
    Ok(())
}
