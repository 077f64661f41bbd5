//! One tokio runtime per process, rebuilt after a fork, and the blocking
//! bridge every Python call goes through.
//!
//! A DataLoader forks its workers: the child inherits the parent's memory,
//! but none of its threads, so the parent's runtime (and every connection
//! driven by it) is dead there. Whatever belongs to a process is kept with
//! its process id and rebuilt when a call comes from another process; the
//! stale value is leaked, not dropped (dropping a runtime waits for
//! threads that do not exist in the child).
//!
//! Locks held by the parent's threads at the moment of the fork stay held
//! in the child, so the child must never touch what those threads use:
//! only the stale values (never used again) do. Tokio is built without
//! `parking_lot`, whose one global table of waiters would be shared by the
//! old runtime and the new one.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use shardfs_client::error::ClientError;
use tokio::runtime::Runtime;

use crate::errors::to_python;

/// A value that belongs to the process that made it.
pub struct PerProcess<T> {
    slot: Mutex<Option<(u32, T)>>,
}

impl<T: Clone> PerProcess<T> {
    pub const fn new() -> Self {
        Self {
            slot: Mutex::new(None),
        }
    }

    /// The value, if this process made it (a stale one is leaked).
    pub fn get(&self) -> Option<T> {
        let pid = std::process::id();
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some((owner, value)) if owner == pid => {
                let copy = value.clone();
                *slot = Some((owner, value));
                Some(copy)
            }
            Some(stale) => {
                std::mem::forget(stale);
                None
            }
            None => None,
        }
    }

    pub fn set(&self, value: T) {
        let pid = std::process::id();
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stale) = slot.replace((pid, value))
            && stale.0 != pid
        {
            std::mem::forget(stale);
        }
    }
}

impl<T> Drop for PerProcess<T> {
    /// A value another process made is leaked, not dropped: its destructor
    /// could wait on that process's runtime, whose threads are not here.
    fn drop(&mut self) {
        let slot = self.slot.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(stale) = slot.take_if(|(owner, _)| *owner != std::process::id()) {
            std::mem::forget(stale);
        }
    }
}

static RUNTIME: PerProcess<Arc<Runtime>> = PerProcess::new();

/// Worker threads of the runtime: `SHARDFS_THREADS`, else 2 (the network
/// and hashing work of one reader; DataLoader workers each have their own).
fn threads() -> usize {
    std::env::var("SHARDFS_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(2)
}

/// This process's runtime.
pub fn runtime() -> PyResult<Arc<Runtime>> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads())
        .thread_name("shardfs")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the shardfs runtime: {e}")))?;
    let runtime = Arc::new(runtime);
    RUNTIME.set(runtime.clone());
    Ok(runtime)
}

/// How often a blocked call looks for Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// Runs the future `work` makes to completion on the runtime with the GIL
/// released, mapping its error to a Python exception. Every 100 ms the GIL
/// is taken back for a moment to run pending signal handlers: Ctrl-C
/// (KeyboardInterrupt) cancels the work. A panic becomes a RuntimeError
/// instead of crossing into Python. (The future is made on the blocked
/// thread and never leaves it, so it need not be `Send`.)
pub fn block<T, F, W>(py: Python<'_>, work: W) -> PyResult<T>
where
    W: FnOnce() -> F + Send,
    F: Future<Output = Result<T, ClientError>>,
    T: Send,
{
    let runtime = runtime()?;
    let outcome = py.detach(|| {
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(async {
                let work = work();
                tokio::pin!(work);
                loop {
                    tokio::select! {
                        result = &mut work => return result.map_err(Interrupted::Failed),
                        () = tokio::time::sleep(SIGNAL_CHECK) => {
                            Python::attach(|py| py.check_signals()).map_err(Interrupted::Signal)?;
                        }
                    }
                }
            })
        }))
    });
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(Interrupted::Failed(error))) => Err(to_python(error)),
        Ok(Err(Interrupted::Signal(error))) => Err(error),
        Err(panic) => Err(panicked(panic)),
    }
}

/// Why blocked work stopped short.
enum Interrupted {
    Failed(ClientError),
    Signal(PyErr),
}

/// A panic's message as a RuntimeError.
pub fn panicked(panic: Box<dyn std::any::Any + Send>) -> PyErr {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    PyRuntimeError::new_err(format!(
        "shardfs internal error (a bug; please report it): {message}"
    ))
}
