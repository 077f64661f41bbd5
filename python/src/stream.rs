//! `Shards`: a shard stream (the client library's `ShardStream`) as a
//! Python iterator of `(path, bytes)`, with its cursor as JSON.
//!
//! The stream is built on first use, and rebuilt from its last cursor in a
//! forked child, so a stream made in a DataLoader's parent process goes on
//! in its workers.

use std::sync::Arc;

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use shardfs_client::shards::{Cursor, ShardStream};
use tokio::sync::Mutex;

use crate::PyClient;
use crate::errors::to_python;
use crate::process::{PerProcess, block};

pub struct Options {
    pub prefix: String,
    pub rank: u64,
    pub world: u64,
    pub epoch: u64,
    pub seed: u64,
    pub shuffle: bool,
    pub drop_remainder: bool,
    pub resume: Option<String>,
    pub resume_all: Option<Vec<String>>,
    pub prefetch_bytes: Option<u64>,
}

type Shared = Arc<Mutex<ShardStream>>;

/// A shard's path and its tar members (name, bytes), in archive order.
type TarShard<'py> = (String, Vec<(String, Bound<'py, PyBytes>)>);

#[pyclass(module = "shardfs._shardfs")]
pub struct Shards {
    client: Py<PyClient>,
    options: Options,
    /// Where this stream stands (once built): what a rebuilt one resumes.
    last: Option<Cursor>,
    stream: PerProcess<Shared>,
}

fn cursor(json: &str) -> PyResult<Cursor> {
    serde_json::from_str(json)
        .map_err(|e| PyValueError::new_err(format!("not a shardfs stream state: {e}")))
}

impl Shards {
    pub fn new(client: Py<PyClient>, options: Options) -> PyResult<Self> {
        // Bad states are refused here, not at the first shard.
        if let Some(json) = &options.resume {
            cursor(json)?;
        }
        for json in options.resume_all.iter().flatten() {
            cursor(json)?;
        }
        Ok(Self {
            client,
            options,
            last: None,
            stream: PerProcess::new(),
        })
    }

    fn stream(&mut self, py: Python<'_>) -> PyResult<Shared> {
        if let Some(stream) = self.stream.get() {
            return Ok(stream);
        }
        let client = self.client.get().client(py)?;
        let o = &self.options;
        let mut builder = client
            .shards(&o.prefix)
            .rank(o.rank)
            .world(o.world)
            .epoch(o.epoch)
            .seed(o.seed)
            .shuffle(o.shuffle)
            .drop_remainder(o.drop_remainder);
        if let Some(bytes) = o.prefetch_bytes {
            builder = builder.prefetch_bytes(bytes);
        }
        builder = match (&self.last, &o.resume, &o.resume_all) {
            (Some(last), _, _) => builder.resume(last.clone()),
            (None, Some(json), _) => builder.resume(cursor(json)?),
            (None, None, Some(all)) => {
                builder.resume_all(all.iter().map(|j| cursor(j)).collect::<PyResult<_>>()?)
            }
            (None, None, None) => builder,
        };
        let stream = block(py, move || async move { builder.stream().await })?;
        self.last = Some(stream.state());
        let stream = Arc::new(Mutex::new(stream));
        self.stream.set(stream.clone());
        Ok(stream)
    }
}

impl Shards {
    /// The next shard (None at the end), its cursor kept for a rebuild.
    fn next_shard(&mut self, py: Python<'_>) -> PyResult<Option<(String, Bytes)>> {
        let stream = self.stream(py)?;
        let (item, state) = block(py, move || async move {
            let mut stream = stream.lock().await;
            let item = stream.next().await;
            Ok((item, stream.state()))
        })?;
        self.last = Some(state);
        item.transpose().map_err(to_python)
    }
}

#[pymethods]
impl Shards {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<Option<(String, Bound<'py, PyBytes>)>> {
        Ok(self
            .next_shard(py)?
            .map(|(path, bytes)| (path, PyBytes::new(py, &bytes))))
    }

    /// The next shard as a tar archive's regular files: `(path, [(name,
    /// bytes), ...])`, or None at the end. Each member's bytes are copied
    /// once, from the verified shard; the shard itself never becomes a
    /// Python object.
    fn next_members<'py>(&mut self, py: Python<'py>) -> PyResult<Option<TarShard<'py>>> {
        let Some((path, bytes)) = self.next_shard(py)? else {
            return Ok(None);
        };
        let members = crate::tar::members(&bytes).map_err(|why| {
            PyValueError::new_err(format!("{path}: not a valid tar shard: {why}"))
        })?;
        let members = members
            .into_iter()
            .map(|(name, data)| (name, PyBytes::new(py, &data)))
            .collect();
        Ok(Some((path, members)))
    }

    /// Where to resume after the shards yielded so far, as JSON.
    fn state(&mut self, py: Python<'_>) -> PyResult<String> {
        if self.last.is_none() {
            self.stream(py)?;
        }
        let last = self.last.as_ref().expect("a built stream has a cursor");
        serde_json::to_string(last)
            .map_err(|e| PyValueError::new_err(format!("cannot write the stream state: {e}")))
    }
}
