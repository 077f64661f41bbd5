//! Client requests checked and turned into what the node acts on.
//!
//! Every gRPC handler takes its request through one of these functions
//! before anything else happens, so what a request may hold is decided in
//! one place (and fuzzed there: `fuzz/fuzz_targets/requests.rs`). They are
//! pure: the clock is an argument.

use shardfs_proto::meta::v1 as pb;
use shardfs_proto::{ChunkId, DfsPath};

use crate::chunks::Beat;
use crate::cluster::ChunkServerInfo;
use crate::convert::{check_replication, file_from_wire, id_from_wire, ids_from_wire};
use crate::error::MetaError;
use crate::liveness::{ScrubReport, Usage};
use crate::namespace::FileMeta;
use crate::retries::MAX_REQUEST_ID;
use crate::types::Command;

/// Most chunks one LocateChunks call answers for.
pub const MAX_LOCATE: usize = 100_000;

fn invalid(why: String) -> MetaError {
    MetaError::InvalidArgument(why)
}

pub fn path(text: &str) -> Result<DfsPath, MetaError> {
    Ok(DfsPath::parse(text)?)
}

/// A call's request id, checked.
pub fn request_id(id: &[u8]) -> Result<&[u8], MetaError> {
    if id.len() > MAX_REQUEST_ID {
        return Err(invalid(format!(
            "a request id is at most {MAX_REQUEST_ID} bytes; this one is {}",
            id.len()
        )));
    }
    Ok(id)
}

pub fn mkdir(request: &pb::MkdirRequest, now_ms: u64) -> Result<Command, MetaError> {
    let command = Command::Mkdir {
        path: path(&request.path)?.to_string(),
        parents: request.parents,
        mtime_ms: now_ms,
    };
    Ok(Command::once(
        request_id(&request.request_id)?,
        now_ms,
        command,
    ))
}

pub fn rename(request: &pb::RenameRequest, now_ms: u64) -> Result<Command, MetaError> {
    let command = Command::Rename {
        from: path(&request.from)?.to_string(),
        to: path(&request.to)?.to_string(),
    };
    Ok(Command::once(
        request_id(&request.request_id)?,
        now_ms,
        command,
    ))
}

pub fn delete(request: &pb::DeleteRequest, now_ms: u64) -> Result<Command, MetaError> {
    let command = Command::Delete {
        path: path(&request.path)?.to_string(),
        recursive: request.recursive,
    };
    Ok(Command::once(
        request_id(&request.request_id)?,
        now_ms,
        command,
    ))
}

/// A commit as the node takes it: the leader still checks the chunks'
/// lengths and replicas with the chunk servers before it becomes a command.
#[derive(Debug)]
pub struct Commit<'a> {
    pub path: String,
    pub file: FileMeta,
    pub if_absent: bool,
    pub request_id: &'a [u8],
}

pub fn commit(request: &pb::CommitFileRequest, now_ms: u64) -> Result<Commit<'_>, MetaError> {
    let file = request
        .file
        .as_ref()
        .ok_or_else(|| invalid("commit without a file".into()))?;
    Ok(Commit {
        file: file_from_wire(file, now_ms)?,
        path: path(&request.path)?.to_string(),
        if_absent: request.if_absent,
        request_id: request_id(&request.request_id)?,
    })
}

pub fn beat(request: &pb::HeartbeatRequest) -> Result<Beat, MetaError> {
    Ok(Beat {
        server: request.id,
        usage: Usage {
            used_bytes: request.used_bytes,
            free_bytes: request.free_bytes,
            capacity_bytes: request.capacity_bytes,
        },
        added: ids_from_wire(&request.added)?,
        removed: ids_from_wire(&request.removed)?,
        full_inventory: request.full_inventory,
        full_inventory_first: request.full_inventory_first,
        scrub: ScrubReport {
            passes: request.scrub_passes,
            bytes: request.scrub_bytes,
            corrupt: request.scrub_corrupt,
            pass_permille: request.scrub_pass_permille,
        },
    })
}

/// The chunks to place (with their lengths) and the replication factor.
pub fn allocation(
    request: &pb::AllocateChunksRequest,
) -> Result<(Vec<(ChunkId, u64)>, u32), MetaError> {
    let replication = check_replication(request.replication)?;
    let chunks = request
        .chunks
        .iter()
        .map(|c| Ok((id_from_wire(&c.id)?, c.length)))
        .collect::<Result<Vec<_>, MetaError>>()?;
    Ok((chunks, replication))
}

pub fn locate(request: &pb::LocateChunksRequest) -> Result<Vec<ChunkId>, MetaError> {
    if request.ids.len() > MAX_LOCATE {
        return Err(invalid(format!(
            "{} chunks in one LocateChunks call; at most {MAX_LOCATE} are accepted",
            request.ids.len()
        )));
    }
    if request.paths.len() > MAX_LOCATE {
        return Err(invalid(format!(
            "{} files named in one LocateChunks call; at most {MAX_LOCATE} are accepted",
            request.paths.len()
        )));
    }
    ids_from_wire(&request.ids)
}

/// Longest address a server may advertise, and longest zone name.
pub const MAX_ADDR_BYTES: usize = 255;
pub const MAX_ZONE_BYTES: usize = 64;

/// An advertised `host:port`: a host name or IP address and a port,
/// printable, of bounded length. (It is dialled later, so it is checked
/// here rather than failing in every dial.)
pub fn address(what: &str, addr: &str) -> Result<(), MetaError> {
    if addr.is_empty() || addr.len() > MAX_ADDR_BYTES {
        return Err(invalid(format!(
            "{what} address must be host:port of 1..={MAX_ADDR_BYTES} bytes; it has {}",
            addr.len()
        )));
    }
    if addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!(
            "{what} address {addr:?} holds spaces or control characters"
        )));
    }
    let port = addr
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port))) if !host.is_empty() && port != 0 => Ok(()),
        _ => Err(invalid(format!(
            "{what} address {addr:?} is not host:port (a host name or IP address and a port 1-65535)"
        ))),
    }
}

fn zone(zone: &str) -> Result<(), MetaError> {
    if zone.len() > MAX_ZONE_BYTES || zone.chars().any(char::is_control) {
        return Err(invalid(format!(
            "zone names are at most {MAX_ZONE_BYTES} printable bytes; got {} bytes",
            zone.len()
        )));
    }
    Ok(())
}

pub fn chunk_server(
    request: &pb::RegisterChunkServerRequest,
) -> Result<ChunkServerInfo, MetaError> {
    address("a chunk server's", &request.addr)?;
    zone(&request.zone)?;
    Ok(ChunkServerInfo {
        addr: request.addr.clone(),
        zone: request.zone.clone(),
        capacity_bytes: request.capacity_bytes,
        draining: false,
    })
}

pub fn metaserver(request: &pb::AddMetaserverRequest) -> Result<(), MetaError> {
    if request.id == 0 {
        return Err(invalid("AddMetaserver needs a non-zero id".into()));
    }
    address("a metaserver's", &request.addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        for good in ["127.0.0.1:7201", "chunk-3.zone-a.svc:7201", "[::1]:7101"] {
            address("a", good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "nohost",
            ":7201",
            "host:0",
            "host:99999",
            "host: 1",
            "a\nb:1",
            &"h".repeat(300),
        ] {
            let err = address("a chunk server's", bad).unwrap_err().to_string();
            assert!(err.contains("address"), "{bad:?}: {err}");
            assert!(err.len() < 400, "the error echoes the input: {err}");
        }
    }

    #[test]
    fn registration_checks_address_and_zone() {
        let ok = pb::RegisterChunkServerRequest {
            id: 1,
            addr: "127.0.0.1:7201".into(),
            zone: "a".into(),
            capacity_bytes: 1,
        };
        assert_eq!(chunk_server(&ok).unwrap().zone, "a");
        let long_zone = pb::RegisterChunkServerRequest {
            zone: "z".repeat(65),
            ..ok.clone()
        };
        assert!(
            chunk_server(&long_zone)
                .unwrap_err()
                .to_string()
                .contains("zone")
        );
        let no_port = pb::RegisterChunkServerRequest {
            addr: "127.0.0.1".into(),
            ..ok
        };
        assert!(chunk_server(&no_port).is_err());
    }

    #[test]
    fn locate_counts_before_parsing() {
        let request = pb::LocateChunksRequest {
            ids: vec![bytes::Bytes::from_static(b"x"); MAX_LOCATE + 1],
            paths: Vec::new(),
        };
        let err = locate(&request).unwrap_err().to_string();
        assert!(err.contains("at most"), "{err}");
    }
}
