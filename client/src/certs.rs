//! A cluster's certificate authority and the certificates it issues
//! (`shardfs cluster init-ca`, `shardfs cluster issue-cert`).
//!
//! The CA is a self-signed ECDSA P-256 key pair kept in a directory as
//! `ca.pem` (the certificate every process trusts) and `ca.key` (mode
//! 0600; only whoever issues certificates needs it). A member's
//! certificate names its kind and id as DNS names
//! (`shardfs_proto::security`): metaserver 2 gets `meta.shardfs` and
//! `meta-2.shardfs`, chunk server 5 `chunk.shardfs` and `chunk-5.shardfs`,
//! plus any host names or addresses asked for. It serves both as a server
//! certificate and as the client certificate of mutual TLS.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use shardfs_proto::security::{CHUNK_NAME, META_NAME, chunk_member, meta_member};

use crate::error::{ClientError, Result};

/// The CA certificate's file name in a CA directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name in a CA directory.
pub const CA_KEY: &str = "ca.key";
const CA_COMMON_NAME: &str = "shardfs cluster CA";
/// Years a CA certificate is valid for.
const CA_YEARS: i32 = 10;
/// Years a member certificate is valid for.
const MEMBER_YEARS: i32 = 2;

/// Whom a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    Meta(u64),
    Chunk(u64),
}

impl Member {
    /// The file stem of its certificate and key (`meta-1`, `chunk-3`).
    pub fn stem(self) -> String {
        match self {
            Self::Meta(id) => format!("meta-{id}"),
            Self::Chunk(id) => format!("chunk-{id}"),
        }
    }

    fn names(self) -> Vec<String> {
        match self {
            Self::Meta(id) => vec![META_NAME.into(), meta_member(id)],
            Self::Chunk(id) => vec![CHUNK_NAME.into(), chunk_member(id)],
        }
    }
}

/// A certificate and its key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority in memory.
pub struct Ca {
    key: KeyPair,
    cert_pem: String,
}

fn cert_error(what: &str, e: rcgen::Error) -> ClientError {
    ClientError::InvalidArgument(format!("{what}: {e}"))
}

/// This year, by the system clock (certificates start a year back, so a
/// slightly wrong clock elsewhere still accepts them).
fn this_year() -> i32 {
    let secs = shardfs_proto::now_ms() / 1000;
    1970 + (secs / 31_556_952) as i32
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + CA_YEARS, 1, 1);
    params
}

impl Ca {
    /// A new CA with a fresh key.
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate().map_err(|e| cert_error("generating the CA key", e))?;
        let cert = ca_params()
            .self_signed(&key)
            .map_err(|e| cert_error("signing the CA certificate", e))?;
        Ok(Self {
            key,
            cert_pem: cert.pem(),
        })
    }

    /// The CA kept in `dir` (`ca.pem`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| ClientError::local(&path, e))
        };
        let cert_pem = read(CA_CERT)?;
        let key = KeyPair::from_pem(&read(CA_KEY)?).map_err(|e| {
            ClientError::InvalidArgument(format!(
                "{}: not a usable CA key ({e})",
                dir.join(CA_KEY).display()
            ))
        })?;
        Ok(Self { key, cert_pem })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` and `ca.key` (0600) into `dir`, created if
    /// missing; refuses to replace an existing CA (every certificate it
    /// issued would stop working).
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| ClientError::local(dir, e))?;
        let cert = dir.join(CA_CERT);
        if cert.exists() || dir.join(CA_KEY).exists() {
            return Err(ClientError::AlreadyExists(format!(
                "{} already holds a CA; remove it first to make a new one (every certificate it issued stops working)",
                dir.display()
            )));
        }
        write_private(&dir.join(CA_KEY), &self.key.serialize_pem())?;
        write_public(&cert, &self.cert_pem)?;
        Ok(cert)
    }

    /// A certificate for `member`, also valid for `hosts` (names or IP
    /// addresses), signed by this CA.
    pub fn issue(&self, member: Member, hosts: &[String]) -> Result<Issued> {
        // The .shardfs names say what a member is: only its own go in.
        if let Some(reserved) = hosts.iter().find(|h| {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            h == "shardfs" || h.ends_with(".shardfs")
        }) {
            return Err(ClientError::InvalidArgument(format!(
                "--host {reserved}: names ending in .shardfs are the members' own (a certificate gets its kind and id by itself)"
            )));
        }
        let mut names = member.names();
        names.extend(hosts.iter().cloned());
        let mut params = CertificateParams::new(names)
            .map_err(|e| cert_error("a host name for the certificate", e))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, member.stem());
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let year = this_year();
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + MEMBER_YEARS, 1, 1);
        let key = KeyPair::generate().map_err(|e| cert_error("generating a key", e))?;
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| cert_error("signing the certificate", e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues for `member` and writes `<stem>.pem` and `<stem>.key` (0600)
    /// into `dir`: the certificate's and the key's paths.
    pub fn issue_into(
        &self,
        member: Member,
        hosts: &[String],
        dir: &Path,
    ) -> Result<(PathBuf, PathBuf)> {
        let issued = self.issue(member, hosts)?;
        std::fs::create_dir_all(dir).map_err(|e| ClientError::local(dir, e))?;
        let cert = dir.join(format!("{}.pem", member.stem()));
        let key = dir.join(format!("{}.key", member.stem()));
        write_private(&key, &issued.key_pem)?;
        write_public(&cert, &issued.cert_pem)?;
        Ok((cert, key))
    }
}

fn write_public(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| ClientError::local(path, e))
}

/// Writes a secret readable by its owner only, from the moment it exists.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ClientError::local(path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| ClientError::local(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_ca_issues_certificates_its_certificate_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate().unwrap();
        let ca_path = ca.save(dir.path()).unwrap();
        assert!(
            ca.save(dir.path()).is_err(),
            "an existing CA is not replaced"
        );
        let mode = std::fs::metadata(dir.path().join(CA_KEY)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let loaded = Ca::load(dir.path()).unwrap();
        let (cert, key) = loaded
            .issue_into(Member::Chunk(4), &["127.0.0.1".into()], dir.path())
            .unwrap();
        assert!(cert.ends_with("chunk-4.pem") && key.ends_with("chunk-4.key"));
        for reserved in ["meta.shardfs", "*.shardfs", "META.SHARDFS."] {
            assert!(
                loaded.issue(Member::Chunk(4), &[reserved.into()]).is_err(),
                "{reserved}"
            );
        }
        // The member's files load as a server identity under this CA.
        let files = shardfs_proto::security::TlsFiles {
            ca: ca_path,
            identity: Some((cert, key)),
        };
        let security = shardfs_proto::security::Security::load(&files).unwrap();
        assert!(security.acceptor().is_some());
    }
}
