//! Client errors, worded for the person at the terminal: what went wrong,
//! where, and (when we can tell) what to do about it.

use std::path::PathBuf;

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No metaserver answered at all.
    #[error(
        "no metaserver reachable at {addrs} ({cause}): is the cluster running? try deploy/local-cluster.sh status"
    )]
    NoMetaserver { addrs: String, cause: String },

    #[error("{0}: no such file or directory")]
    NotFound(String),

    #[error("{0}: already exists")]
    AlreadyExists(String),

    #[error("{0}")]
    InvalidArgument(String),

    #[error("{}: {}", path.display(), local_words(source))]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Every replica of a chunk failed; each attempt is listed.
    #[error(
        "{path}: chunk {chunk} (bytes {offset}..{end}) could not be read from any replica: {attempts}"
    )]
    Unreadable {
        path: String,
        chunk: String,
        offset: u64,
        end: u64,
        attempts: String,
    },

    /// A chunk could not be stored on enough chunk servers.
    #[error("{path}: chunk {chunk} could not be stored: {detail}")]
    Unwritable {
        path: String,
        chunk: String,
        detail: String,
    },

    /// A metaserver or chunk server refused or failed a call.
    #[error("{context}: {message}")]
    Remote {
        context: String,
        code: Code,
        message: String,
    },
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    pub fn local(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Local {
            path: path.into(),
            source,
        }
    }

    /// A failed call to the metaservers, about `path` (or another subject).
    pub fn meta(subject: &str, status: Status) -> Self {
        let cause = status_cause(&status);
        // The metaserver often names the path itself: say it once.
        let message = cause
            .strip_prefix(subject)
            .and_then(|rest| rest.strip_prefix(": "))
            .unwrap_or(&cause)
            .to_string();
        match status.code() {
            Code::NotFound => Self::NotFound(subject.to_string()),
            Code::AlreadyExists => Self::AlreadyExists(subject.to_string()),
            Code::InvalidArgument | Code::FailedPrecondition => {
                Self::InvalidArgument(format!("{subject}: {message}"))
            }
            code => Self::Remote {
                context: subject.to_string(),
                code,
                message,
            },
        }
    }
}

/// The most telling description of a failed call: the status message, and
/// for transport failures the innermost cause (like "connection refused").
pub fn status_cause(status: &Status) -> String {
    let mut cause: Option<String> = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // The operating system's words are the plainest.
            return io_words(io);
        }
        cause = Some(err.to_string());
        source = err.source();
    }
    match cause {
        Some(cause) if status.message().is_empty() || status.message() == "transport error" => {
            cause
        }
        Some(cause) if !status.message().contains(&cause) => {
            format!("{} ({cause})", status.message())
        }
        _ => status.message().to_string(),
    }
}

/// A local file error in plain words (without "(os error N)").
fn local_words(err: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match err.kind() {
        NotFound => "no such file or directory".into(),
        PermissionDenied => "permission denied".into(),
        AlreadyExists => "already exists".into(),
        IsADirectory => "is a directory".into(),
        NotADirectory => "not a directory".into(),
        StorageFull => "no space left on the device".into(),
        ReadOnlyFilesystem => "read-only file system".into(),
        _ => err.to_string(),
    }
}

fn io_words(err: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    if let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return tls_words(tls);
    }
    match err.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        TimedOut => "timed out".into(),
        _ => err.to_string(),
    }
}

/// A TLS failure in plain words, with what usually causes it.
pub fn tls_words(err: &rustls::Error) -> String {
    use rustls::{CertificateError, Error, InvalidMessage};
    match err {
        Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | Error::InvalidCertificate(CertificateError::BadSignature) => {
            "TLS: the server's certificate was not issued by the CA this client trusts (SHARDFS_CA or --ca names another cluster's CA?)".into()
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("TLS: {WRONG_KIND}"),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "TLS: the server's certificate has expired; issue it a new one".into(),
        Error::InvalidMessage(InvalidMessage::InvalidContentType)
        | Error::InvalidMessage(InvalidMessage::InvalidEmptyPayload) => {
            "TLS: the server does not speak TLS (a cluster started with --insecure? then pass --insecure)".into()
        }
        Error::AlertReceived(alert) => format!("TLS: the server refused the handshake ({alert:?})"),
        other => format!("TLS: {other}"),
    }
}

/// What a certificate for another kind of server is called.
pub const WRONG_KIND: &str = "the server's certificate is for another kind of server (a chunk server's port given as a metaserver's, or the reverse?)";
