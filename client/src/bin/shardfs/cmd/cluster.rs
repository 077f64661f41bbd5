//! Cluster administration: `cluster status`, `cluster drain`, `cluster
//! remove`, and the certificates (`cluster init-ca`, `cluster issue-cert`).

use std::path::Path;

use serde_json::json;
use shardfs_client::certs::{self, Ca, Member};
use shardfs_client::{Client, ClientError, Result};
use shardfs_proto::meta::v1 as pb;
use shardfs_proto::outln;

use crate::output::human;

pub async fn cluster_status(client: &Client, json: bool) -> Result<()> {
    let s = client.cluster_status().await?;
    if json {
        let value = json!({
            "leader": { "id": s.leader_id, "addr": s.leader_addr },
            "term": s.term,
            "last_applied": s.last_applied,
            "metaservers": s.metaservers.iter().map(|m| json!({
                "id": m.id, "addr": m.addr, "role": m.role, "voter": m.voter,
                "last_applied": m.last_applied,
            })).collect::<Vec<_>>(),
            "chunk_servers": s.chunk_servers.iter().map(|c| json!({
                "id": c.id, "addr": c.addr, "zone": c.zone,
                "state": if c.alive { "alive" } else { "dead" },
                "draining": c.draining,
                "drain": server_state(c),
                "chunks": c.chunks, "used_bytes": c.used_bytes,
                "capacity_bytes": c.capacity_bytes, "free_bytes": c.free_bytes,
                "scrub": {
                    "passes": c.scrub_passes, "bytes": c.scrub_bytes,
                    "corrupt_found": c.scrub_corrupt,
                    "pass_progress": c.scrub_pass_permille as f64 / 1000.0,
                },
            })).collect::<Vec<_>>(),
            "under_replicated": s.under_replicated,
            "bad_replicas_reported": s.bad_replicas_reported,
            "bad_replicas_confirmed": s.bad_replicas_confirmed,
            "repair": {
                "copies": s.repair_copies,
                "bytes": s.repair_bytes,
                "failures": s.repair_failures,
                "trimmed": s.repair_trimmed,
                "in_flight": s.repair_in_flight,
                "examined": s.repair_examined,
                "full_rounds": s.repair_full_rounds,
            },
            "gc": { "collected": s.gc_collected, "pending": s.gc_pending },
        });
        outln!("{}", serde_json::to_string_pretty(&value).expect("json"));
        return Ok(());
    }
    outln!(
        "leader: metaserver {} at {} (term {})",
        s.leader_id,
        s.leader_addr,
        s.term
    );
    outln!("metaservers:");
    for m in &s.metaservers {
        outln!(
            "  {:>3}  {:<21}  {:<9}  {}  applied {}",
            m.id,
            m.addr,
            m.role,
            if m.voter { "voter  " } else { "learner" },
            m.last_applied
        );
    }
    outln!("chunk servers:");
    for c in &s.chunk_servers {
        outln!(
            "  {:>3}  {:<21}  {:<8}  {:<8}  {:>8} chunks  {:>10} used  {:>10} free  scrub {} pass(es) + {:.0}%, {} corrupt",
            c.id,
            c.addr,
            c.zone,
            server_state(c),
            c.chunks,
            human(c.used_bytes),
            human(c.free_bytes),
            c.scrub_passes,
            c.scrub_pass_permille as f64 / 10.0,
            c.scrub_corrupt
        );
    }
    outln!("under-replicated chunks: {}", s.under_replicated);
    if s.repair_copies + s.repair_trimmed + s.repair_failures + s.repair_in_flight > 0 {
        outln!(
            "repair: {} replica(s) copied ({}), {} failed, {} extra trimmed, {} under way",
            s.repair_copies,
            human(s.repair_bytes),
            s.repair_failures,
            s.repair_trimmed,
            s.repair_in_flight
        );
    }
    if s.gc_collected + s.gc_pending > 0 {
        outln!(
            "garbage: {} unreferenced chunk(s) waiting out the grace period, {} replica(s) deleted",
            s.gc_pending,
            s.gc_collected
        );
    }
    if s.bad_replicas_reported > 0 {
        outln!(
            "bad replicas reported: {} ({} confirmed and quarantined)",
            s.bad_replicas_reported,
            s.bad_replicas_confirmed
        );
    }
    Ok(())
}

pub async fn drain(client: &Client, id: u64, cancel: bool) -> Result<()> {
    let status = client.cluster_status().await?;
    let Some(server) = status.chunk_servers.iter().find(|c| c.id == id) else {
        let known: Vec<String> = status
            .chunk_servers
            .iter()
            .map(|c| c.id.to_string())
            .collect();
        return Err(ClientError::InvalidArgument(format!(
            "there is no chunk server {id} (known: {})",
            known.join(", ")
        )));
    };
    client
        .meta()
        .drain_chunk_server(id, cancel)
        .await
        .map_err(|s| ClientError::meta(&format!("chunk server {id}"), s))?;
    if cancel {
        outln!(
            "chunk server {id} ({}) takes new replicas again",
            server.addr
        );
    } else {
        outln!(
            "draining chunk server {id} ({}): {} chunk(s) to move; `shardfs cluster status` shows what is left",
            server.addr,
            server.chunks
        );
    }
    Ok(())
}

pub fn server_state(c: &pb::ChunkServerStatus) -> &'static str {
    match (c.alive, c.draining, c.chunks) {
        (false, _, _) => "dead",
        (true, true, 0) => "drained",
        (true, true, _) => "draining",
        (true, false, _) => "alive",
    }
}

/// `shardfs cluster remove ID`.
pub async fn remove(client: &Client, id: u64) -> Result<()> {
    client
        .meta()
        .remove_chunk_server(id)
        .await
        .map_err(|s| ClientError::meta("cluster remove", s))?;
    outln!("chunk server {id} removed");
    Ok(())
}

/// `cluster init-ca --dir DIR`.
pub fn init_ca(dir: &Path) -> Result<()> {
    let ca = Ca::generate()?;
    let cert = ca.save(dir)?;
    outln!(
        "CA written: {} (trust it: --tls-ca / SHARDFS_CA) and {} (0600, issues certificates)",
        cert.display(),
        dir.join(certs::CA_KEY).display()
    );
    Ok(())
}

/// `cluster issue-cert --ca-dir DIR (--meta ID | --chunk ID) [--host H] [--out DIR]`.
pub fn issue_cert(
    ca_dir: &Path,
    meta: Option<u64>,
    chunk: Option<u64>,
    hosts: &[String],
    out: Option<&Path>,
    json: bool,
) -> Result<()> {
    let member = match (meta, chunk) {
        (Some(0), _) | (_, Some(0)) => {
            return Err(ClientError::InvalidArgument("member ids start at 1".into()));
        }
        (Some(id), None) => Member::Meta(id),
        (None, Some(id)) => Member::Chunk(id),
        _ => {
            return Err(ClientError::InvalidArgument(
                "say whom the certificate is for: --meta ID or --chunk ID".into(),
            ));
        }
    };
    let ca = Ca::load(ca_dir)?;
    let (cert, key) = ca.issue_into(member, hosts, out.unwrap_or(ca_dir))?;
    if json {
        outln!(
            "{}",
            json!({ "cert": cert.display().to_string(), "key": key.display().to_string() })
        );
    } else {
        outln!("certificate: {}", cert.display());
        outln!("key:         {} (0600)", key.display());
    }
    Ok(())
}
