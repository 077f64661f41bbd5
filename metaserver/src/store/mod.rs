//! Raft storage on a key-value engine: the log store ([`log::LogStore`])
//! and the state machine ([`sm::StateMachine`]), both written against the
//! [`kv::Kv`] trait and run by `openraft::testing::Suite` in the tests.

// openraft's trait methods return its `StorageError` (224 bytes); our
// helpers return the same type rather than boxing and unboxing it.
#![allow(clippy::result_large_err)]

pub mod kv;
pub mod log;
pub mod sm;

use std::sync::Arc;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use crate::types::{NodeId, StorageError};

/// Opens both stores on one engine at `path`.
pub fn open(path: &std::path::Path) -> Result<(log::LogStore, sm::StateMachine), StorageError> {
    let kv: Arc<dyn kv::Kv> = Arc::new(
        kv::SledKv::open(path).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, e))?,
    );
    Ok((log::LogStore::new(kv.clone()), sm::StateMachine::open(kv)?))
}

pub(crate) fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: std::io::Error,
) -> StorageError {
    StorageError::from_io_error(subject, verb, e)
}

pub(crate) fn decode_error(
    subject: ErrorSubject<NodeId>,
    e: crate::codec::DecodeError,
) -> StorageError {
    StorageIOError::new(subject, ErrorVerb::Read, AnyError::new(&e)).into()
}

/// Runs blocking engine work (flushes) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}
