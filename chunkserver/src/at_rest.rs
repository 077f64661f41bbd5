//! Encryption at rest: chunk files hold AES-256-CTR ciphertext under a key
//! from a local key file (`--encryption-key-file`), while chunk ids stay
//! the BLAKE3 of the plaintext.
//!
//! Each chunk has a key of its own, derived from the file's key and the
//! chunk id (keyed BLAKE3), and its counter starts at zero: one
//! (key, counter) pair is never used for two different plaintexts, as a
//! chunk id names one content. CTR keeps lengths and lets a range be
//! decrypted from any offset, so range reads, the index (lengths from
//! file sizes) and scrub work as before. CTR does not authenticate: the
//! BLAKE3 check every reader and the scrubber make of the plaintext does
//! (a flipped ciphertext bit flips a plaintext bit, which the hash
//! catches).
//!
//! A store remembers whether it is encrypted, and with which key, in a
//! marker file beside the chunks ([`MARKER`]): a server given no key, or
//! another key, for an encrypted store refuses to start, and so does one
//! given a key for a store that already holds plaintext chunks (their
//! bytes would read as garbage and be quarantined).

use std::fs;
use std::io::Write;
use std::path::Path;

use aes::Aes256;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use shardfs_proto::ChunkId;

/// The marker file in the data directory: `shardfs at-rest v1 CHECK`.
pub const MARKER: &str = "at-rest";
const MARKER_PREFIX: &str = "shardfs at-rest v1 ";
const CHUNK_KEY_DOMAIN: &[u8] = b"shardfs at-rest chunk key v1";
const CHECK_DOMAIN: &[u8] = b"shardfs at-rest key check v1";

type Aes256Ctr = ctr::Ctr128BE<Aes256>;

/// The key of a key file: 256 bits.
#[derive(Clone)]
pub struct AtRestKey([u8; 32]);

impl std::fmt::Debug for AtRestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AtRestKey(..)")
    }
}

impl AtRestKey {
    /// The key in `path`: 64 hex digits on its first line. A file that
    /// others may read is refused.
    pub fn load(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta =
            fs::metadata(path).map_err(|e| format!("cannot read the key file {shown}: {e}"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "the key file {shown} may be read by others (mode {:o}): chmod 600 it",
                meta.permissions().mode() & 0o777
            ));
        }
        let text = fs::read_to_string(path)
            .map_err(|e| format!("cannot read the key file {shown}: {e}"))?;
        let hex = text.lines().next().unwrap_or("").trim();
        let bytes = decode_hex(hex).ok_or_else(|| {
            format!(
                "{shown} does not hold a key (64 hex digits; `shardfs-chunk keygen --out FILE` makes one)"
            )
        })?;
        Ok(Self(bytes))
    }

    /// A new key from the system's random number generator.
    pub fn generate() -> Result<Self, String> {
        shardfs_proto::capability::new_cluster_key().map(Self)
    }

    /// Writes the key to a new file at `path` with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let shown = path.display();
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot create {shown}: {e}"))?;
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(file, "{hex}")
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {shown}: {e}"))
    }

    /// What the marker file records of this key (not the key).
    fn check(&self) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(CHECK_DOMAIN);
        hasher.finalize().to_hex()[..32].to_string()
    }

    /// The cipher of chunk `id`, positioned at byte `offset`.
    pub fn cipher(&self, id: &ChunkId, offset: u64) -> ChunkCipher {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(CHUNK_KEY_DOMAIN);
        hasher.update(id.as_bytes());
        let key = *hasher.finalize().as_bytes();
        let mut cipher = Aes256Ctr::new(&key.into(), &[0u8; 16].into());
        cipher.seek(offset);
        ChunkCipher(Box::new(cipher))
    }
}

/// One chunk's keystream from some offset on (boxed: the key schedule is
/// a few hundred bytes, and readers carry it around).
pub struct ChunkCipher(Box<Aes256Ctr>);

impl ChunkCipher {
    /// Encrypts or decrypts `buf` in place (the same operation), moving on
    /// by its length.
    pub fn apply(&mut self, buf: &mut [u8]) {
        self.0.apply_keystream(buf);
    }
}

/// Checks the store in `data_dir` against `key` (None: no encryption),
/// writing the marker for a new encrypted store; `has_chunks` says whether
/// it holds any chunk file.
pub fn check_store(
    data_dir: &Path,
    key: Option<&AtRestKey>,
    has_chunks: bool,
) -> Result<(), String> {
    let marker = data_dir.join(MARKER);
    let recorded = match fs::read_to_string(&marker) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {e}", marker.display())),
    };
    let dir = data_dir.display();
    match (recorded, key) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(format!(
            "the chunks in {dir} are encrypted at rest: give the key file they were written with (--encryption-key-file)"
        )),
        (Some(recorded), Some(key)) => match recorded.strip_prefix(MARKER_PREFIX) {
            Some(check) if check == key.check() => Ok(()),
            Some(_) => Err(format!(
                "the chunks in {dir} were encrypted with another key than the one in --encryption-key-file"
            )),
            None => Err(format!("{} is not an at-rest marker", marker.display())),
        },
        (None, Some(_)) if has_chunks => Err(format!(
            "{dir} holds unencrypted chunks: encryption at rest can be turned on only for an empty data directory"
        )),
        (None, Some(key)) => {
            let write = || -> std::io::Result<()> {
                let mut file = fs::File::create(&marker)?;
                writeln!(file, "{MARKER_PREFIX}{}", key.check())?;
                file.sync_all()?;
                fs::File::open(data_dir)?.sync_all()
            };
            write().map_err(|e| format!("cannot write {}: {e}", marker.display()))
        }
    }
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertext_decrypts_from_any_offset_and_differs_per_chunk_and_key() {
        let key = AtRestKey([5; 32]);
        let id = ChunkId::of(b"c");
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut sealed = plain.clone();
        key.cipher(&id, 0).apply(&mut sealed);
        assert_ne!(sealed, plain);
        for offset in [0usize, 1, 15, 16, 17, 4096, 99_999] {
            let mut part = sealed[offset..].to_vec();
            key.cipher(&id, offset as u64).apply(&mut part);
            assert_eq!(part, plain[offset..], "offset {offset}");
        }
        // Piece by piece is the same as at once.
        let mut pieces = plain.clone();
        let mut cipher = key.cipher(&id, 0);
        for piece in pieces.chunks_mut(7_777) {
            cipher.apply(piece);
        }
        assert_eq!(pieces, sealed);
        let mut other_chunk = plain.clone();
        key.cipher(&ChunkId::of(b"d"), 0).apply(&mut other_chunk);
        assert_ne!(other_chunk, sealed);
        let mut other_key = plain.clone();
        AtRestKey([6; 32]).cipher(&id, 0).apply(&mut other_key);
        assert_ne!(other_key, sealed);
    }

    #[test]
    fn a_store_keeps_its_key_and_refuses_another_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let key = AtRestKey([1; 32]);
        assert!(check_store(dir.path(), None, true).is_ok());
        let err = check_store(dir.path(), Some(&key), true).unwrap_err();
        assert!(err.contains("unencrypted chunks"), "{err}");
        check_store(dir.path(), Some(&key), false).unwrap();
        check_store(dir.path(), Some(&key), true).unwrap();
        let err = check_store(dir.path(), None, true).unwrap_err();
        assert!(err.contains("encrypted at rest"), "{err}");
        let err = check_store(dir.path(), Some(&AtRestKey([2; 32])), true).unwrap_err();
        assert!(err.contains("another key"), "{err}");
    }

    #[test]
    fn key_files_round_trip_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = AtRestKey::generate().unwrap();
        key.save(&path).unwrap();
        assert_eq!(AtRestKey::load(&path).unwrap().0, key.0);
        assert!(
            key.save(&path).is_err(),
            "an existing key file was overwritten"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = AtRestKey::load(&path).unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
        let bad = dir.path().join("bad");
        fs::write(&bad, "not hex\n").unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(AtRestKey::load(&bad).unwrap_err().contains("64 hex digits"));
    }
}
