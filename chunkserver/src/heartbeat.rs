//! Reporting to the metaservers: register at start-up, send the whole
//! inventory, then heartbeat every second with usage and the chunks stored
//! or removed since the last beat. Failed beats keep their changes for the
//! next one; a metaserver that does not know this server (new leader with
//! lost state, say) asks it to register again.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shardfs_proto::ChunkId;
use shardfs_proto::meta::v1 as pb;
use shardfs_proto::meta_client::MetaClient;
use tracing::{info, warn};

use crate::gate::Gate;
use crate::store::ChunkStore;

/// How often a chunk server reports.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Ids per inventory message.
const INVENTORY_PAGE: usize = 50_000;

/// Who this chunk server is to the metaservers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: u64,
    /// The address clients and other servers reach this one at.
    pub addr: String,
    pub zone: String,
    /// The scrubber's figures, reported with each heartbeat.
    pub scrub: std::sync::Arc<crate::scrub::ScrubStats>,
}

/// Runs until the task is dropped; the capability key in each answer goes
/// to `gate`.
pub async fn run(store: ChunkStore, meta: MetaClient, me: Identity, gate: Gate) {
    let meta = meta.with_deadline(Duration::from_secs(3));
    loop {
        if let Err(e) = register(&store, &meta, &me, &gate).await {
            warn!("cannot register with the metaservers: {}", e.message());
            tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            continue;
        }
        info!(id = me.id, addr = %me.addr, "registered with the metaservers");
        loop {
            tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            match beat(&store, &meta, &me, &gate).await {
                Ok(true) => {}
                Ok(false) => {
                    info!("the metaservers asked this chunk server to register again");
                    break;
                }
                Err(e) => warn!("heartbeat failed: {}", e.message()),
            }
        }
    }
}

async fn usage(store: &ChunkStore) -> (u64, u64, u64) {
    match store.stats().await {
        Ok(s) => (s.used_bytes, s.free_bytes, s.capacity_bytes),
        Err(_) => (0, 0, 0),
    }
}

/// Registers and sends the whole inventory.
async fn register(
    store: &ChunkStore,
    meta: &MetaClient,
    me: &Identity,
    gate: &Gate,
) -> Result<(), tonic::Status> {
    let (_, _, capacity) = usage(store).await;
    let request = pb::RegisterChunkServerRequest {
        id: me.id,
        addr: me.addr.clone(),
        zone: me.zone.clone(),
        capacity_bytes: capacity,
    };
    let registered = meta
        .call(|mut c| {
            let request = request.clone();
            async move { c.register_chunk_server(request).await }
        })
        .await?;
    gate.set_key(&registered.capability_key);
    // Changes up to now are covered by the inventory.
    store.take_changes();
    let mut after = None;
    let mut first = true;
    loop {
        let (page, more) = store
            .list(after, INVENTORY_PAGE)
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        after = page.last().map(|(id, _)| *id);
        let ids: Vec<ChunkId> = page.into_iter().map(|(id, _)| id).collect();
        send(store, meta, me, gate, &ids, &[], Some(first)).await?;
        first = false;
        if !more {
            return Ok(());
        }
    }
}

/// One heartbeat with the changes since the last; false: register again.
async fn beat(
    store: &ChunkStore,
    meta: &MetaClient,
    me: &Identity,
    gate: &Gate,
) -> Result<bool, tonic::Status> {
    let (added, removed) = store.take_changes();
    match send(store, meta, me, gate, &added, &removed, None).await {
        Ok(known) => Ok(known),
        Err(e) => {
            store.requeue_changes(&added, &removed);
            Err(e)
        }
    }
}

async fn send(
    store: &ChunkStore,
    meta: &MetaClient,
    me: &Identity,
    gate: &Gate,
    added: &[ChunkId],
    removed: &[ChunkId],
    inventory_first: Option<bool>,
) -> Result<bool, tonic::Status> {
    let (used, free, capacity) = usage(store).await;
    let request = pb::HeartbeatRequest {
        id: me.id,
        used_bytes: used,
        free_bytes: free,
        capacity_bytes: capacity,
        added: added.iter().map(|id| id.to_vec().into()).collect(),
        removed: removed.iter().map(|id| id.to_vec().into()).collect(),
        full_inventory: inventory_first.is_some(),
        full_inventory_first: inventory_first.unwrap_or(false),
        scrub_passes: me.scrub.passes.load(Ordering::Relaxed),
        scrub_bytes: me.scrub.bytes.load(Ordering::Relaxed),
        scrub_corrupt: me.scrub.corrupt.load(Ordering::Relaxed),
        scrub_pass_permille: me.scrub.pass_permille.load(Ordering::Relaxed),
    };
    let response = meta
        .call(|mut c| {
            let request = request.clone();
            async move { c.heartbeat(request).await }
        })
        .await?;
    gate.set_key(&response.capability_key);
    Ok(!response.reregister)
}
