//! `Reader`: positioned reads of one file, each chunk verified, with the
//! client library's read-ahead. The Python side wraps it in a
//! `io.RawIOBase` (and a `BufferedReader`), or in fsspec's buffered file.

use std::io::SeekFrom;
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use shardfs_client::read::{FileReader, unwrap_io};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::Mutex;

use crate::PyClient;
use crate::process::{PerProcess, block};

type Shared = Arc<Mutex<FileReader>>;

#[pyclass(module = "shardfs._shardfs")]
pub struct Reader {
    client: Py<PyClient>,
    path: String,
    size: u64,
    pos: u64,
    read_ahead: Option<u64>,
    closed: bool,
    file: PerProcess<Shared>,
}

impl Reader {
    pub fn open(
        py: Python<'_>,
        client: Py<PyClient>,
        path: &str,
        read_ahead: Option<u64>,
    ) -> PyResult<Self> {
        let reader = Self {
            client,
            path: path.to_string(),
            size: 0,
            pos: 0,
            read_ahead,
            closed: false,
            file: PerProcess::new(),
        };
        let file = reader.file(py)?;
        // Nothing else holds it yet.
        let size = file.try_lock().map(|f| f.size()).unwrap_or(0);
        Ok(Self { size, ..reader })
    }

    /// This process's open file (reopened in a forked child).
    fn file(&self, py: Python<'_>) -> PyResult<Shared> {
        if let Some(file) = self.file.get() {
            return Ok(file);
        }
        let client = self.client.get().client(py)?;
        let (path, read_ahead) = (self.path.clone(), self.read_ahead);
        let file = block(py, move || async move {
            let mut file = client.open(&path).await?;
            if let Some(bytes) = read_ahead {
                file.set_read_ahead(bytes);
            }
            Ok(file)
        })?;
        let file = Arc::new(Mutex::new(file));
        self.file.set(file.clone());
        Ok(file)
    }

    fn check_open(&self) -> PyResult<()> {
        if self.closed {
            return Err(PyValueError::new_err(format!(
                "{}: read of a closed file",
                self.path
            )));
        }
        Ok(())
    }
}

#[pymethods]
impl Reader {
    #[getter]
    fn size(&self) -> u64 {
        self.size
    }

    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    #[getter]
    fn closed(&self) -> bool {
        self.closed
    }

    fn tell(&self) -> u64 {
        self.pos
    }

    /// Moves to byte `pos` (past the end reads nothing).
    fn seek(&mut self, pos: u64) -> PyResult<u64> {
        self.check_open()?;
        self.pos = pos;
        Ok(pos)
    }

    /// Up to `n` bytes from the position (all the rest when `n` is None or
    /// negative); fewer only at the end of the file.
    #[pyo3(signature = (n=None))]
    fn read<'py>(&mut self, py: Python<'py>, n: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        self.check_open()?;
        let left = self.size.saturating_sub(self.pos);
        let want = match n {
            Some(n) if n >= 0 => (n as u64).min(left),
            _ => left,
        };
        let want = usize::try_from(want)
            .map_err(|_| PyValueError::new_err(format!("a read of {want} bytes is too large")))?;
        if want == 0 {
            return Ok(PyBytes::new(py, b""));
        }
        let file = self.file(py)?;
        let (pos, path) = (self.pos, self.path.clone());
        // The bytes go straight from the verified chunks into the new
        // bytes object: nothing else can see it until it is returned.
        let data = PyBytes::new_with(py, want, |buffer| {
            block(py, move || async move {
                let mut file = file.lock().await;
                if file.position() != pos {
                    file.seek(SeekFrom::Start(pos))
                        .await
                        .map_err(|e| unwrap_io(&path, e))?;
                }
                file.read_exact(buffer)
                    .await
                    .map_err(|e| unwrap_io(&path, e))?;
                Ok(())
            })
        })?;
        self.pos += want as u64;
        Ok(data)
    }

    fn close(&mut self) {
        self.closed = true;
        if let Some(file) = self.file.get() {
            drop(file);
        }
        self.file = PerProcess::new();
    }
}
