//! A large store read end to end stays within the process's descriptor
//! limit: segment read handles are kept for reuse, but only for a bounded
//! number of segments. Its own test binary, as it lowers RLIMIT_NOFILE for
//! the whole process.

mod common;

use common::*;
use datastore::config::EngineConfig;

#[test]
fn reading_more_segments_than_descriptors_allowed_works() {
    // 300 segments of 1 MiB, read with both read paths, under a limit of
    // 300 descriptors (each streamed segment holds two handles).
    let limit = libc::rlimit {
        rlim_cur: 300,
        rlim_max: 300.max(unsafe {
            let mut cur = std::mem::zeroed::<libc::rlimit>();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
            cur.rlim_max
        }),
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);

    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let config = EngineConfig {
        segment_size: 1 << 20,
        ..EngineConfig::default()
    };
    create_store_with(dir.path(), &config);
    let e = open_engine(dir.path());
    let data = random_bytes(5, 300 << 20);
    let recipe = e.put_bytes(&data).unwrap();
    e.commit(true).unwrap();
    let segments = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .count();
    assert!(segments >= 290, "{segments} segments");

    let fps: Vec<_> = recipe.iter().map(|c| c.fingerprint).collect();
    let mut offset = 0;
    for batch in fps.chunks(16) {
        for r in e.read_chunks_streaming(batch).unwrap() {
            let chunk = r.expect("every chunk reads back");
            assert!(chunk == data[offset..offset + chunk.len()]);
            offset += chunk.len();
        }
    }
    assert_eq!(offset, data.len());
    for (i, fp) in fps.iter().enumerate().step_by(7) {
        let chunk = e.read_chunk(fp).expect("a demand read of any chunk works");
        assert_eq!(chunk.len(), recipe[i].len as usize);
    }
}
