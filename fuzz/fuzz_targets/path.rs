//! `DfsPath::parse` on any string: it never panics, what it accepts is
//! canonical (parsing it again gives the same path, it is rebuilt from its
//! components, its parent and name put it back together) and it holds no
//! control character; a refusal's message stays short.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardfs_proto::DfsPath;
use shardfs_proto::path::{MAX_NAME_BYTES, MAX_PATH_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match DfsPath::parse(text) {
        Ok(path) => {
            assert_eq!(DfsPath::parse(path.as_str()).as_ref(), Ok(&path));
            assert!(path.as_str().len() <= MAX_PATH_BYTES);
            assert!(!path.as_str().chars().any(char::is_control));
            let mut rebuilt = DfsPath::root();
            for name in path.components() {
                assert!(!name.is_empty() && name.len() <= MAX_NAME_BYTES);
                assert!(name != "." && name != "..");
                rebuilt = rebuilt.join(name).expect("a component joins");
            }
            assert_eq!(rebuilt, path);
            if let Some(parent) = path.parent() {
                assert!(path.starts_with(&parent));
                assert!(!parent.starts_with(&path));
                let name = path.name().expect("a non-root path has a name");
                assert_eq!(parent.join(name).as_ref(), Ok(&path));
            }
            // A name with a slash is more than one component: join refuses it.
            assert!(path.join("a/b").is_err());
        }
        Err(error) => {
            assert!(error.path.chars().count() <= 200);
            assert!(error.to_string().len() < 2048);
        }
    }
});
