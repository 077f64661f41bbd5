//! `shardfs._shardfs`: the native half of the Python package, a thin layer
//! over the Rust client library (`shardfs-client`). The Python half
//! (`python/shardfs/`) gives it its Pythonic shape: file objects, the
//! PyTorch dataset, the fsspec file system.
//!
//! Every call releases the GIL while it waits on the network or hashes
//! (see [`process::block`]), answers Ctrl-C, maps errors to the Python
//! exceptions a user expects ([`errors`]), and works in a forked child: the
//! runtime and the connections are rebuilt per process id.
//!
//! - [`process`]: one runtime per process, rebuilt after a fork, and the
//!   blocking bridge every call goes through.
//! - [`errors`]: client errors as Python exceptions, in the CLI's words.
//! - [`reader`]: `Reader`, positioned verified reads of one file.
//! - [`stream`]: `Shards`, a shard stream as a Python iterator, with its
//!   cursor as JSON.
//! - [`tar`]: the members of a tar shard as slices of its verified bytes
//!   (WebDataset samples).

mod errors;
mod process;
mod reader;
mod stream;
mod tar;

use std::path::Path;

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use shardfs_client::client::{Client, ClientConfig};
use shardfs_client::put::{PutOptions, PutStats};
use shardfs_proto::meta::v1 as pb;

use crate::process::{PerProcess, block};

/// A connection to a cluster's metaservers, made lazily in each process.
#[pyclass(name = "Client", module = "shardfs._shardfs", frozen)]
pub struct PyClient {
    meta: Vec<String>,
    config: ClientConfig,
    client: PerProcess<Client>,
}

impl PyClient {
    /// This process's client, connecting first if needed.
    pub fn client(&self, py: Python<'_>) -> PyResult<Client> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let (meta, config) = (self.meta.clone(), self.config.clone());
        let client = block(py, move || async move {
            Client::connect_with(&meta, config).await
        })?;
        self.client.set(client.clone());
        Ok(client)
    }
}

fn put_options(replication: Option<u32>, chunk_size: Option<u64>) -> PutOptions {
    PutOptions {
        replication,
        chunk_size,
        ..PutOptions::default()
    }
}

fn put_stats<'py>(py: Python<'py>, stats: &PutStats) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("bytes", stats.bytes)?;
    dict.set_item("chunks", stats.chunks)?;
    dict.set_item("bytes_sent", stats.bytes_sent)?;
    dict.set_item("chunks_deduplicated", stats.chunks_deduplicated)?;
    dict.set_item("replaced", stats.replaced)?;
    Ok(dict)
}

/// An entry as a dict: `name`, `path`, `type` ("file" or "directory"),
/// `size`, `mtime` (seconds), and for files `replication`, `content_id`
/// (hex) and `chunks` (how many).
fn entry_dict<'py>(py: Python<'py>, path: &str, entry: &pb::Entry) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("name", &entry.name)?;
    dict.set_item("path", path)?;
    dict.set_item("mtime", entry.mtime_ms as f64 / 1000.0)?;
    match &entry.file {
        Some(file) => {
            dict.set_item("type", "file")?;
            dict.set_item("size", file.size)?;
            dict.set_item("replication", file.replication)?;
            dict.set_item("content_id", hex(&file.content_id))?;
            dict.set_item("chunks", file.chunks.len())?;
        }
        None => {
            dict.set_item("type", "directory")?;
            dict.set_item("size", 0)?;
        }
    }
    Ok(dict)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `parent/name` for a listing's entries.
fn child_path(parent: &str, name: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

#[pymethods]
impl PyClient {
    /// `meta`: metaserver addresses (host:port). Nothing is dialled until
    /// the first call (`connect()` dials at once).
    /// `ca`: the cluster CA's certificate file (default `SHARDFS_CA`);
    /// `insecure`: plaintext, for a cluster started with `--insecure`
    /// (default `SHARDFS_INSECURE`).
    #[new]
    #[pyo3(signature = (meta, *, replication=3, chunk_size=None, read_ahead=None, ca=None, insecure=false))]
    fn new(
        meta: Vec<String>,
        replication: u32,
        chunk_size: Option<u64>,
        read_ahead: Option<u64>,
        ca: Option<std::path::PathBuf>,
        insecure: bool,
    ) -> PyResult<Self> {
        let security = match (ca, insecure) {
            (None, false) => None,
            (ca, insecure) => Some(
                shardfs_proto::security::client(ca, insecure)
                    .map_err(|e| PyValueError::new_err(e.to_string()))?,
            ),
        };
        let mut config = ClientConfig {
            replication,
            security,
            ..ClientConfig::default()
        };
        if let Some(chunk_size) = chunk_size {
            config.chunk_size = chunk_size;
        }
        if let Some(read_ahead) = read_ahead {
            config.read_ahead_bytes = read_ahead;
        }
        config
            .check()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Self {
            meta,
            config,
            client: PerProcess::new(),
        })
    }

    /// Connects now (and checks that a metaserver answers).
    fn connect(&self, py: Python<'_>) -> PyResult<()> {
        self.client(py).map(|_| ())
    }

    /// What this process's client has sent and received so far (a dict
    /// of counts: `bytes_received`, `bytes_sent`, `bad_replicas_seen`, ...).
    fn counters(&self, py: Python<'_>) -> PyResult<String> {
        let values = self.client(py)?.counters();
        serde_json::to_string(&values)
            .map_err(|e| PyValueError::new_err(format!("cannot write the counters: {e}")))
    }

    #[getter]
    fn meta(&self) -> Vec<String> {
        self.meta.clone()
    }

    #[getter]
    fn replication(&self) -> u32 {
        self.config.replication
    }

    fn stat<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyDict>> {
        let client = self.client(py)?;
        let owned = path.to_string();
        let entry = block(py, move || async move { client.stat(&owned).await })?;
        entry_dict(py, path, &entry)
    }

    /// A file's chunks: `id` (hex), `offset`, `length`, `locations`.
    fn chunks<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyList>> {
        let client = self.client(py)?;
        let owned = path.to_string();
        let layout = block(py, move || async move { client.layout(&owned).await })?;
        let list = PyList::empty(py);
        for chunk in &layout.chunks {
            let dict = PyDict::new(py);
            dict.set_item("id", chunk.id.to_hex())?;
            dict.set_item("offset", chunk.offset)?;
            dict.set_item("length", chunk.length)?;
            let addrs: Vec<&str> = chunk.locations.iter().map(|r| r.addr.as_str()).collect();
            dict.set_item("locations", addrs)?;
            list.append(dict)?;
        }
        Ok(list)
    }

    /// The entries of a directory (a file lists itself), in name order.
    fn ls<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyList>> {
        let client = self.client(py)?;
        let owned = path.to_string();
        let (entry, entries) = block(py, move || async move {
            let entry = client.stat(&owned).await?;
            let entries = if entry.file.is_some() {
                Vec::new()
            } else {
                client.list(&owned).await?
            };
            Ok((entry, entries))
        })?;
        let list = PyList::empty(py);
        if entry.file.is_some() {
            list.append(entry_dict(py, path, &entry)?)?;
        }
        for child in &entries {
            list.append(entry_dict(py, &child_path(path, &child.name), child)?)?;
        }
        Ok(list)
    }

    #[pyo3(signature = (path, parents=true))]
    fn mkdir(&self, py: Python<'_>, path: &str, parents: bool) -> PyResult<bool> {
        let client = self.client(py)?;
        let path = path.to_string();
        block(
            py,
            move || async move { client.mkdir(&path, parents).await },
        )
    }

    #[pyo3(signature = (path, recursive=false))]
    fn rm(&self, py: Python<'_>, path: &str, recursive: bool) -> PyResult<u64> {
        let client = self.client(py)?;
        let path = path.to_string();
        block(
            py,
            move || async move { client.remove(&path, recursive).await },
        )
    }

    fn mv(&self, py: Python<'_>, source: &str, destination: &str) -> PyResult<()> {
        let client = self.client(py)?;
        let (from, to) = (source.to_string(), destination.to_string());
        block(py, move || async move { client.rename(&from, &to).await })
    }

    /// Stores `data` at `remote` (committed atomically; missing parents are
    /// created).
    #[pyo3(signature = (data, remote, replication=None, chunk_size=None))]
    fn put_bytes<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyBytes>,
        remote: &str,
        replication: Option<u32>,
        chunk_size: Option<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let client = self.client(py)?;
        let data = Bytes::copy_from_slice(data.as_bytes());
        let remote = remote.to_string();
        let options = put_options(replication, chunk_size);
        let stats = block(py, move || async move {
            client.put_bytes(data, &remote, &options).await
        })?;
        put_stats(py, &stats)
    }

    /// Uploads the local file `local` to `remote`.
    #[pyo3(signature = (local, remote, replication=None, chunk_size=None))]
    fn put_file<'py>(
        &self,
        py: Python<'py>,
        local: &str,
        remote: &str,
        replication: Option<u32>,
        chunk_size: Option<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let client = self.client(py)?;
        let (local, remote) = (local.to_string(), remote.to_string());
        let options = put_options(replication, chunk_size);
        let stats = block(py, move || async move {
            client
                .put_file(Path::new(&local), &remote, &options, None)
                .await
        })?;
        put_stats(py, &stats)
    }

    /// Downloads `remote` to the local file `local` (written beside it and
    /// renamed into place once every chunk verified); returns its size.
    fn get_file(&self, py: Python<'_>, remote: &str, local: &str) -> PyResult<u64> {
        let client = self.client(py)?;
        let (remote, local) = (remote.to_string(), local.to_string());
        let stats = block(py, move || async move {
            client.get_file(&remote, Path::new(&local), None).await
        })?;
        Ok(stats.bytes)
    }

    /// Opens `path` for reading: a [`reader::Reader`].
    #[pyo3(signature = (path, read_ahead=None))]
    fn open(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        path: &str,
        read_ahead: Option<u64>,
    ) -> PyResult<reader::Reader> {
        reader::Reader::open(py, slf.clone().unbind(), path, read_ahead)
    }

    /// A stream of this rank's shards under `prefix` (see
    /// `shardfs.ShardStream`); `resume` is one cursor and `resume_all` every
    /// rank's, as JSON.
    #[pyo3(signature = (prefix, rank=0, world=1, epoch=0, seed=0, shuffle=true, drop_remainder=false, resume=None, resume_all=None, prefetch_bytes=None))]
    #[allow(clippy::too_many_arguments)]
    fn shards(
        slf: &Bound<'_, Self>,
        prefix: &str,
        rank: u64,
        world: u64,
        epoch: u64,
        seed: u64,
        shuffle: bool,
        drop_remainder: bool,
        resume: Option<String>,
        resume_all: Option<Vec<String>>,
        prefetch_bytes: Option<u64>,
    ) -> PyResult<stream::Shards> {
        stream::Shards::new(
            slf.clone().unbind(),
            stream::Options {
                prefix: prefix.to_string(),
                rank,
                world,
                epoch,
                seed,
                shuffle,
                drop_remainder,
                resume,
                resume_all,
                prefetch_bytes,
            },
        )
    }
}

#[pymodule]
fn _shardfs(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyClient>()?;
    module.add_class::<reader::Reader>()?;
    module.add_class::<stream::Shards>()?;
    Ok(())
}
