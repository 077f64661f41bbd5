//! Client errors as the Python exceptions a user expects, with the CLI's
//! words.

use pyo3::PyErr;
use pyo3::exceptions::{
    PyConnectionError, PyFileExistsError, PyFileNotFoundError, PyIsADirectoryError,
    PyNotADirectoryError, PyOSError, PyPermissionError, PyTimeoutError, PyValueError,
};
use shardfs_client::error::ClientError;
use tonic::Code;

pub fn to_python(error: ClientError) -> PyErr {
    let message = error.to_string();
    match &error {
        ClientError::NoMetaserver { .. } => PyConnectionError::new_err(message),
        ClientError::NotFound(_) => PyFileNotFoundError::new_err(message),
        ClientError::AlreadyExists(_) => PyFileExistsError::new_err(message),
        ClientError::InvalidArgument(text) if text.contains("is a directory") => {
            PyIsADirectoryError::new_err(message)
        }
        ClientError::InvalidArgument(text) if text.contains("not a directory") => {
            PyNotADirectoryError::new_err(message)
        }
        ClientError::InvalidArgument(text) if text.contains("directory not empty") => {
            PyOSError::new_err((libc_enotempty(), message))
        }
        ClientError::InvalidArgument(_) => PyValueError::new_err(message),
        ClientError::Local { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
            std::io::ErrorKind::AlreadyExists => PyFileExistsError::new_err(message),
            _ => PyOSError::new_err(message),
        },
        ClientError::Unreadable { .. } | ClientError::Unwritable { .. } => {
            PyOSError::new_err(message)
        }
        ClientError::Remote { code, .. } => match code {
            Code::NotFound => PyFileNotFoundError::new_err(message),
            Code::AlreadyExists => PyFileExistsError::new_err(message),
            Code::PermissionDenied | Code::Unauthenticated => PyPermissionError::new_err(message),
            Code::DeadlineExceeded => PyTimeoutError::new_err(message),
            Code::Unavailable => PyConnectionError::new_err(message),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                PyValueError::new_err(message)
            }
            _ => PyOSError::new_err(message),
        },
    }
}

/// ENOTEMPTY on Linux (the errno `os.rmdir` raises for the same mistake).
fn libc_enotempty() -> i32 {
    39
}
