//! Transport security: TLS on every connection, and who is on the other
//! end of one.
//!
//! Every server holds a certificate issued by the cluster's CA; clients
//! verify it against that CA. Which kind of server answered is part of the
//! check: a client dialing a metaserver verifies the certificate for the
//! name [`META_NAME`], one dialing a chunk server for [`CHUNK_NAME`], so a
//! chunk server's certificate cannot pose as a metaserver.
//!
//! Cluster members (metaservers and chunk servers) also present their
//! certificate as a client (mutual TLS). A member's certificate names its
//! kind and its id ([`meta_member`], [`chunk_member`]); the servers accept
//! cluster-internal calls (Raft, heartbeats, delete and repair orders) only
//! from peers whose certificate names the member allowed to make them
//! ([`require_member`]). Clients need no certificate.
//!
//! [`Security::Insecure`] turns all of this off: plaintext, and every peer
//! counts as a member. It exists for benchmarks and for in-process tests,
//! and the servers offer it only behind `--insecure`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::transport::{self, Admitted};

/// The name every metaserver's certificate carries.
pub const META_NAME: &str = "meta.shardfs";
/// The name every chunk server's certificate carries.
pub const CHUNK_NAME: &str = "chunk.shardfs";
/// The ALPN protocol of the bulk read protocol over TLS (gRPC is `h2`).
pub const BULK_ALPN: &[u8] = b"sfbr";
const H2_ALPN: &[u8] = b"h2";

/// The name the certificate of metaserver `id` carries besides
/// [`META_NAME`].
pub fn meta_member(id: u64) -> String {
    format!("meta-{id}.shardfs")
}

/// The name the certificate of chunk server `id` carries besides
/// [`CHUNK_NAME`].
pub fn chunk_member(id: u64) -> String {
    format!("chunk-{id}.shardfs")
}

/// Which kind of server a connection is dialed to: the name its
/// certificate must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Meta,
    Chunk,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Meta => META_NAME,
            Self::Chunk => CHUNK_NAME,
        }
    }
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} holds no PEM {kind}", path.display())]
    Empty {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Where a process's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate (PEM).
    pub ca: PathBuf,
    /// This member's certificate chain and key (PEM); None for a client.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A server's TLS material as configured, or plaintext: `Some` files,
/// `None` for `--insecure`. Exactly one of the two must be asked for:
/// `what` names the settings in the error (`--tls-cert`, ... or
/// `insecure`), so a server never falls back to plaintext by omission.
pub fn server_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    insecure: bool,
) -> Result<Option<TlsFiles>, String> {
    match (cert, key, ca, insecure) {
        (None, None, None, true) => Ok(None),
        (_, _, _, true) => Err(
            "--insecure turns TLS off, but TLS files (--tls-cert, --tls-key, --tls-ca) are given too: choose one"
                .into(),
        ),
        (Some(cert), Some(key), Some(ca), false) => Ok(Some(TlsFiles {
            ca,
            identity: Some((cert, key)),
        })),
        (cert, key, ca, false) => {
            let missing: Vec<&str> = [
                (cert.is_none(), "--tls-cert"),
                (key.is_none(), "--tls-key"),
                (ca.is_none(), "--tls-ca"),
            ]
            .iter()
            .filter(|(absent, _)| *absent)
            .map(|(_, flag)| *flag)
            .collect();
            Err(format!(
                "TLS needs --tls-cert, --tls-key and --tls-ca (missing: {}); `shardfs cluster init-ca` and `shardfs cluster issue-cert` make them. Pass --insecure to run in plaintext instead",
                missing.join(", ")
            ))
        }
    }
}

/// A client's security: plaintext when `insecure` is asked for (it wins
/// over a CA, which may come from the environment), else TLS verifying the
/// servers with the CA at `ca`.
pub fn client(ca: Option<PathBuf>, insecure: bool) -> Result<Security, TlsError> {
    match (ca, insecure) {
        (_, true) => Ok(Security::Insecure),
        (Some(ca), false) => Security::load(&TlsFiles { ca, identity: None }),
        (None, false) => Err(TlsError::Invalid(
            "no CA certificate to verify the cluster with: set SHARDFS_CA (`source cluster.env` sets it) or pass --ca FILE; --insecure (SHARDFS_INSECURE=1) talks plaintext to a cluster started with --insecure".into(),
        )),
    }
}

/// How a process talks to the others: TLS with the cluster's CA (and,
/// for members, their own certificate), or plaintext. Cheap to clone.
#[derive(Clone)]
pub enum Security {
    Insecure,
    Tls(Arc<Tls>),
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Insecure => f.write_str("Security::Insecure"),
            Self::Tls(tls) => f
                .debug_struct("Security::Tls")
                .field("member", &tls.server.is_some())
                .finish(),
        }
    }
}

/// Loaded TLS material and the configurations built from it once.
pub struct Tls {
    ca_pem: Vec<u8>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// Accepting connections: only with a certificate of our own.
    server: Option<Arc<ServerConfig>>,
    /// Dialing a chunk server's bulk read protocol.
    bulk: Arc<ClientConfig>,
}

/// ring's suites with AES-128-GCM first: as safe for this use as AES-256
/// and cheaper per byte (10 rounds instead of 14), which a bulk read pays
/// twice (the server encrypts, the client decrypts).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        TLS13_AES_128_GCM_SHA256 => 0,
        TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    Arc::new(provider)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            kind: "certificate",
        });
    }
    Ok(certs)
}

fn invalid(e: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid(e.to_string())
}

impl Security {
    /// TLS from the files in `files`.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        // tonic's connector takes the process's provider: the same one.
        let _ = rustls::crypto::CryptoProvider::install_default((*provider()).clone());
        let ca_pem = read("CA certificate", &files.ca)?;
        let identity = match &files.identity {
            Some((cert, key)) => Some((
                cert.as_path(),
                read("certificate", cert)?,
                key.as_path(),
                read("key", key)?,
            )),
            None => None,
        };
        let mut roots = RootCertStore::empty();
        for cert in certificates("CA certificate", &files.ca, &ca_pem)? {
            roots
                .add(cert)
                .map_err(|e| invalid(format!("CA certificate {}: {e}", files.ca.display())))?;
        }
        let roots = Arc::new(roots);
        let chain_and_key = match &identity {
            Some((cert_path, cert, key_path, key)) => {
                let chain = certificates("certificate", cert_path, cert)?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                    invalid(format!(
                        "key {}: no usable private key ({e})",
                        key_path.display()
                    ))
                })?;
                Some((chain, key))
            }
            None => None,
        };
        let server = match &chain_and_key {
            Some((chain, key)) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(invalid)?;
                let mut config = ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(invalid)?
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(chain.clone(), key.clone_key())
                    .map_err(|e| invalid(format!("certificate and key do not go together: {e}")))?;
                config.alpn_protocols = vec![H2_ALPN.to_vec(), BULK_ALPN.to_vec()];
                config.ignore_client_order = true;
                Some(Arc::new(config))
            }
            None => None,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_root_certificates(roots);
        let mut bulk = match chain_and_key {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(invalid)?,
            None => builder.with_no_client_auth(),
        };
        bulk.alpn_protocols = vec![BULK_ALPN.to_vec()];
        Ok(Self::Tls(Arc::new(Tls {
            ca_pem,
            identity_pem: identity.map(|(_, cert, _, key)| (cert, key)),
            server,
            bulk: Arc::new(bulk),
        })))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// True for a member: TLS with a certificate of its own.
    pub fn has_identity(&self) -> bool {
        self.acceptor().is_some()
    }

    /// An endpoint for the server of `kind` at `addr` (`host:port`).
    pub fn endpoint(
        &self,
        addr: &str,
        kind: ServerKind,
    ) -> Result<Endpoint, tonic::transport::Error> {
        match self {
            Self::Insecure => transport::endpoint(addr),
            Self::Tls(tls) => {
                let mut config = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                    .domain_name(kind.name());
                if let Some((cert, key)) = &tls.identity_pem {
                    config = config.identity(Identity::from_pem(cert, key));
                }
                transport::endpoint(&format!("https://{addr}"))?.tls_config(config)
            }
        }
    }

    /// A lazily connecting channel to the server of `kind` at `addr`.
    pub fn lazy_channel(
        &self,
        addr: &str,
        kind: ServerKind,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        Ok(self.endpoint(addr, kind)?.connect_lazy())
    }

    /// The configuration that accepts connections, when TLS is on.
    pub fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        match self {
            Self::Insecure => None,
            Self::Tls(tls) => tls.server.clone().map(tokio_rustls::TlsAcceptor::from),
        }
    }

    /// Opens the bulk read protocol to the chunk server at `addr` over
    /// `stream`: TLS when it is on.
    pub async fn bulk_stream(&self, stream: tokio::net::TcpStream) -> std::io::Result<BulkStream> {
        match self {
            Self::Insecure => Ok(BulkStream::Plain(stream)),
            Self::Tls(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.bulk.clone());
                let name = ServerName::try_from(CHUNK_NAME).expect("a valid DNS name");
                let stream = connector.connect(name, stream).await?;
                Ok(BulkStream::Tls(Box::new(stream)))
            }
        }
    }
}

/// A client's connection to a chunk server's bulk read protocol.
pub enum BulkStream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

macro_rules! delegate_io {
    ($type:ty, $($variant:ident),+) => {
        impl AsyncRead for $type {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }

        impl AsyncWrite for $type {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $(Self::$variant(s) => s.is_write_vectored(),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $(Self::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_io!(BulkStream, Plain, Tls);

impl BulkStream {
    pub fn tcp(&self) -> &tokio::net::TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }
}

/// What a server knows of the peer of one connection. Handlers find it in
/// the request's extensions.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    pub identity: PeerIdentity,
}

#[derive(Clone, Debug)]
pub enum PeerIdentity {
    /// The server runs without TLS: every peer is trusted.
    Insecure,
    /// TLS without a client certificate (a client).
    Anonymous,
    /// TLS with a client certificate the cluster CA signed (rustls checked
    /// the chain during the handshake).
    Certified(Arc<CertificateDer<'static>>),
}

impl Peer {
    /// Whether the peer may act as the member named `name` (a
    /// [`meta_member`], [`chunk_member`], [`META_NAME`] or [`CHUNK_NAME`]).
    pub fn is(&self, name: &str) -> bool {
        match &self.identity {
            PeerIdentity::Insecure => true,
            PeerIdentity::Anonymous => false,
            PeerIdentity::Certified(cert) => names(cert, name),
        }
    }

    /// A short description for logs: the address and what it proved.
    pub fn describe(&self) -> String {
        let addr = self
            .addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "an unknown address".into());
        match &self.identity {
            PeerIdentity::Insecure => format!("{addr} (insecure)"),
            PeerIdentity::Anonymous => format!("{addr} (no certificate)"),
            PeerIdentity::Certified(_) => format!("{addr} (certified)"),
        }
    }
}

/// Whether `cert` is valid for the DNS name `name`.
fn names(cert: &CertificateDer<'static>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&server_name).is_ok())
}

/// The peer of the connection `request` came on.
pub fn peer_of<T>(request: &Request<T>) -> Option<&Peer> {
    request.extensions().get::<Peer>()
}

/// Ok when `request` came from a peer whose certificate names `member`
/// (or the server runs insecure); else the status to refuse it with:
/// UNAUTHENTICATED without a certificate, PERMISSION_DENIED with one that
/// names someone else. `what` names the call in the message.
pub fn require_member<T>(request: &Request<T>, member: &str, what: &str) -> Result<(), Status> {
    match peer_of(request) {
        Some(peer) if peer.is(member) => Ok(()),
        Some(Peer {
            identity: PeerIdentity::Certified(_),
            ..
        }) => Err(Status::permission_denied(format!(
            "{what} is for cluster members only: the peer's certificate does not name {member}"
        ))),
        _ => Err(Status::unauthenticated(format!(
            "{what} is for cluster members only: connect with the certificate of {member}"
        ))),
    }
}

/// A connection a server accepted: plaintext or TLS, with what is known
/// of its peer (tonic puts [`Peer`] into every request's extensions).
pub struct Conn {
    io: ConnIo,
    peer: Peer,
}

enum ConnIo {
    Plain(Admitted),
    Tls(Box<tokio_rustls::server::TlsStream<Admitted>>),
}

delegate_io!(ConnIo, Plain, Tls);

impl Conn {
    /// A plaintext connection: its peer counts as trusted.
    pub fn plain(stream: Admitted) -> Self {
        let addr = stream.stream().peer_addr().ok();
        Self {
            io: ConnIo::Plain(stream),
            peer: Peer {
                addr,
                identity: PeerIdentity::Insecure,
            },
        }
    }

    /// A connection after its TLS handshake.
    pub fn tls(stream: tokio_rustls::server::TlsStream<Admitted>) -> Self {
        let (tcp, session) = stream.get_ref();
        let addr = tcp.stream().peer_addr().ok();
        let identity = match session.peer_certificates().and_then(|chain| chain.first()) {
            Some(cert) => PeerIdentity::Certified(Arc::new(cert.clone().into_owned())),
            None => PeerIdentity::Anonymous,
        };
        Self {
            io: ConnIo::Tls(Box::new(stream)),
            peer: Peer { addr, identity },
        }
    }

    pub fn tcp(&self) -> &tokio::net::TcpStream {
        match &self.io {
            ConnIo::Plain(s) => s.stream(),
            ConnIo::Tls(s) => s.get_ref().0.stream(),
        }
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The application protocol the TLS handshake agreed on.
    pub fn alpn(&self) -> Option<&[u8]> {
        match &self.io {
            ConnIo::Plain(_) => None,
            ConnIo::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }

    /// A TLS connection's socket, session and peer slot, for a protocol
    /// served off the runtime; None for a plaintext one.
    pub fn into_tls_parts(
        self,
    ) -> Option<(
        tokio::net::TcpStream,
        rustls::ServerConnection,
        transport::PeerSlot,
    )> {
        match self.io {
            ConnIo::Plain(_) => None,
            ConnIo::Tls(s) => {
                let (admitted, session) = s.into_inner();
                let (stream, slot) = admitted.into_parts();
                Some((stream, session, slot))
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}
