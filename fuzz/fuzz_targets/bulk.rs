//! The bulk read protocol: request and response frames decode only what
//! they encode, and the client's reading of a response, fed whatever a
//! lying or broken chunk server might send, never panics, never reads
//! past what it asked for, and returns data only when it is exactly the
//! bytes that followed a well-formed header.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use shardfs_client::buffers::BufferPool;
use shardfs_client::bulk::decode_response;
use shardfs_proto::bulk::{REQUEST_BYTES, RESPONSE_HEADER_BYTES, Request, ResponseHeader};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fn pool() -> &'static Arc<BufferPool> {
    static POOL: OnceLock<Arc<BufferPool>> = OnceLock::new();
    POOL.get_or_init(|| BufferPool::new(8 << 20))
}

fuzz_target!(|data: &[u8]| {
    if let Some(frame) = data.get(..REQUEST_BYTES) {
        let frame: [u8; REQUEST_BYTES] = frame.try_into().expect("sized");
        if let Some(request) = Request::decode(&frame) {
            assert_eq!(request.encode(), frame);
        }
    }
    // Whatever a client presents as a capability is refused, never a panic
    // (a forgery that checks would need the key).
    let key = shardfs_proto::capability::ServerKey::derive(&[7; 32], 1);
    let id = shardfs_proto::ChunkId::of(b"fuzz");
    for access in [
        shardfs_proto::capability::Access::Read,
        shardfs_proto::capability::Access::Write,
    ] {
        assert!(key.check(data, access, &id, 0).is_err());
    }
    if let Some(frame) = data.get(..RESPONSE_HEADER_BYTES) {
        let frame: [u8; RESPONSE_HEADER_BYTES] = frame.try_into().expect("sized");
        if let Some(header) = ResponseHeader::decode(&frame) {
            assert_eq!(header.encode(), frame);
        }
    }

    // The first 3 bytes: the chunk length the client expects (at most
    // 16 MiB); the rest: what the server sends.
    let Some((wanted, sent)) = data.split_at_checked(3) else {
        return;
    };
    let length = u64::from(wanted[0]) << 16 | u64::from(wanted[1]) << 8 | u64::from(wanted[2]);
    let mut stream = sent;
    let result = runtime().block_on(decode_response(&mut stream, length, pool()));
    let consumed = sent.len() - stream.len();
    if let Ok(bytes) = result {
        assert_eq!(bytes.len() as u64, length);
        assert_eq!(&bytes[..], &sent[RESPONSE_HEADER_BYTES..consumed]);
        assert_eq!(consumed as u64, RESPONSE_HEADER_BYTES as u64 + length);
    } else {
        let most =
            RESPONSE_HEADER_BYTES as u64 + length.max(shardfs_proto::bulk::MAX_MESSAGE_BYTES);
        assert!(consumed as u64 <= most, "read {consumed} bytes");
    }
});
