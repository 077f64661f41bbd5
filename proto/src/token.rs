//! Client tokens' text: `sfs1.NAME.SECRET`, where SECRET is 256 random
//! bits in hex. Metaservers keep only the BLAKE3 hash of SECRET; the
//! command line makes bootstrap tokens the same way.

/// The first part of every token.
pub const TOKEN_SCHEME: &str = "sfs1";
/// Longest token name.
pub const MAX_NAME_BYTES: usize = 64;

/// Whether `name` may name a token: 1 to 64 of `A-Z a-z 0-9 _ -`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "token name {name:?} must be 1 to {MAX_NAME_BYTES} letters, digits, '_' or '-'"
        ));
    }
    Ok(())
}

/// A token's name and secret, when `text` has the token's shape.
pub fn parse_token(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(TOKEN_SCHEME)?.strip_prefix('.')?;
    let (name, secret) = rest.rsplit_once('.')?;
    (check_name(name).is_ok()
        && secret.len() == 64
        && secret.bytes().all(|b| b.is_ascii_hexdigit()))
    .then_some((name, secret))
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// A new token named `name`: its text, and the hash the state keeps.
pub fn new_token(name: &str) -> Result<(String, [u8; 32]), String> {
    check_name(name)?;
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "the system's random number generator failed".to_string())?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = hash_secret(&secret);
    Ok((format!("{TOKEN_SCHEME}.{name}.{secret}"), hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_hash() {
        let (text, hash) = new_token("ci-writer").unwrap();
        let (name, secret) = parse_token(&text).unwrap();
        assert_eq!(name, "ci-writer");
        assert_eq!(hash_secret(secret), hash);
        assert_ne!(
            new_token("ci-writer").unwrap().0,
            text,
            "secrets are random"
        );
        for bad in [
            "",
            "sfs1",
            "sfs1.x",
            "sfs2.a.00",
            "sfs1.a b.00",
            &text[..text.len() - 1],
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
        assert!(new_token("no spaces").is_err());
        assert!(new_token(&"x".repeat(65)).is_err());
    }
}
