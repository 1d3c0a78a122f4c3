//! Must-shows 2-4 of the chunk engine: deduplication, compression, and no
//! plaintext at rest.

mod common;

use common::*;
use datastore::config::{EngineConfig, StoreConfig};

const MIB: usize = 1 << 20;

#[test]
fn same_stream_twice_adds_under_one_percent() {
    let dir = tempfile::tempdir().unwrap();
    let e = new_engine(dir.path());
    let data = random_bytes(1, 100 * MIB);
    let a = e.put_bytes(&data).unwrap();
    e.commit(true).unwrap();
    let after_first = e.segment_bytes().unwrap();
    let b = e.put_bytes(&data).unwrap();
    e.commit(true).unwrap();
    let after_second = e.segment_bytes().unwrap();
    assert_eq!(a, b);
    let added = after_second - after_first;
    println!("second copy of 100 MiB added {added} bytes to {after_first}");
    assert!(
        (added as f64) < 0.01 * after_first as f64,
        "second copy added {added} bytes to {after_first}"
    );
}

#[test]
fn one_byte_inserted_at_front_stores_at_most_four_new_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let e = new_engine(dir.path());
    let data = random_bytes(2, 100 * MIB);
    e.put_bytes(&data).unwrap();
    let before = e.stats.snapshot().chunks_new;
    let mut shifted = Vec::with_capacity(data.len() + 1);
    shifted.push(0xA5);
    shifted.extend_from_slice(&data);
    let recipe = e.put_bytes(&shifted).unwrap();
    let new = e.stats.snapshot().chunks_new - before;
    println!("one byte inserted at the front: {new} new chunks");
    assert!(new <= 4, "{new} new chunks after a one-byte insert");
    e.commit(true).unwrap();
    assert_eq!(e.read_to_vec(&recipe).unwrap(), shifted);
}

#[test]
fn data_written_again_is_cut_without_scanning_into_the_same_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let e = new_engine(dir.path());
    let data = random_bytes(3, 48 * MIB);
    let first = e.put_bytes(&data).unwrap();
    let before = e.stats.snapshot();
    let again = e.put_bytes(&data).unwrap();
    let after = e.stats.snapshot();
    assert_eq!(first, again);
    let chunks = after.chunks_in - before.chunks_in;
    let predicted = after.chunks_predicted - before.chunks_predicted;
    println!("written again: {predicted} of {chunks} chunks predicted");
    assert!(
        predicted * 100 >= chunks * 95,
        "{predicted} of {chunks} chunks predicted"
    );

    // An edited copy is cut exactly where an engine that never saw the
    // original cuts it, and dedups against the original as well.
    let mut edited = data.clone();
    edited[7 * MIB] ^= 1;
    edited.insert(30 * MIB, 9);
    edited.truncate(edited.len() - 12_345);
    let before = e.stats.snapshot();
    let recipe = e.put_bytes(&edited).unwrap();
    let new_chunks = e.stats.snapshot().chunks_new - before.chunks_new;
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = new_engine(fresh_dir.path());
    let fresh_recipe = fresh.put_bytes(&edited).unwrap();
    let lens = |r: &[datastore::engine::ChunkRef]| r.iter().map(|c| c.len).collect::<Vec<_>>();
    assert_eq!(lens(&recipe), lens(&fresh_recipe));
    assert!(new_chunks <= 6, "{new_chunks} new chunks for three edits");
    e.commit(true).unwrap();
    assert_eq!(e.read_to_vec(&recipe).unwrap(), edited);
}

/// Up to `limit` bytes of Rust and C source text from the cargo registry
/// sources that this build itself downloaded.
fn source_text(limit: usize) -> Vec<u8> {
    fn walk(dir: &std::path::Path, out: &mut Vec<u8>, limit: usize) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if out.len() >= limit {
                return;
            }
            if p.is_dir() {
                walk(&p, out, limit);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("rs" | "c" | "h")
            ) {
                if let Ok(b) = std::fs::read(&p) {
                    out.extend_from_slice(&b);
                }
            }
        }
    }
    let home = std::env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo")
        });
    let mut out = Vec::new();
    walk(&home.join("registry").join("src"), &mut out, limit);
    out.truncate(limit);
    assert!(
        out.len() == limit,
        "need {limit} bytes of source text under {}",
        home.display()
    );
    out
}

#[test]
fn source_text_stored_at_most_45_percent() {
    let dir = tempfile::tempdir().unwrap();
    let e = new_engine(dir.path());
    let text = source_text(32 * MIB);
    let recipe = e.put_bytes(&text).unwrap();
    e.commit(true).unwrap();
    let stored = e.segment_bytes().unwrap();
    let ratio = stored as f64 / text.len() as f64;
    let st = e.stats.snapshot();
    println!(
        "source text, LZ4 alone: {} unique bytes stored as {} ({:.1}%)",
        st.bytes_new,
        st.bytes_stored_payload,
        st.bytes_stored_payload as f64 * 100.0 / st.bytes_new as f64
    );
    println!(
        "source text: {} bytes stored in {} ({:.1}%)",
        text.len(),
        stored,
        ratio * 100.0
    );
    assert!(ratio <= 0.45, "source text stored at {:.1}%", ratio * 100.0);
    assert_eq!(e.read_to_vec(&recipe).unwrap(), text);
}

#[test]
fn random_data_stored_at_most_100_5_percent() {
    let dir = tempfile::tempdir().unwrap();
    let e = new_engine(dir.path());
    let data = random_bytes(3, 64 * MIB);
    e.put_bytes(&data).unwrap();
    e.commit(true).unwrap();
    let stored = e.segment_bytes().unwrap();
    let ratio = stored as f64 / data.len() as f64;
    println!(
        "random: {} bytes stored in {} ({:.3}%)",
        data.len(),
        stored,
        ratio * 100.0
    );
    assert!(
        ratio <= 1.005,
        "random data stored at {:.3}%",
        ratio * 100.0
    );
}

#[test]
fn no_plaintext_marker_anywhere_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let marker = random_bytes(0xfeed, 32);
    let data: Vec<u8> = marker.iter().copied().cycle().take(MIB).collect();
    {
        let e = new_engine(dir.path());
        let recipe = e.put_bytes(&data).unwrap();
        e.commit(true).unwrap();
        assert_eq!(e.read_to_vec(&recipe).unwrap(), data);
    }
    // Any 16-byte window of the marker (rotations included) would betray it.
    for start in 0..32 {
        let window: Vec<u8> = marker
            .iter()
            .cycle()
            .skip(start)
            .take(16)
            .copied()
            .collect();
        let hits = find_bytes(dir.path(), &window);
        assert!(hits.is_empty(), "plaintext found at {hits:?}");
    }
}

fn engine_at_level(dir: &std::path::Path, compression_level: u8) -> datastore::engine::Engine {
    let config = EngineConfig {
        compression_level,
        ..EngineConfig::default()
    };
    create_store_with(dir, &config);
    open_engine(dir)
}

#[test]
fn default_compression_stores_source_text_smaller_than_lz4_fast_mode() {
    let text = source_text(8 * MIB);
    let stored_at = |level: u8| {
        let dir = tempfile::tempdir().unwrap();
        let e = engine_at_level(dir.path(), level);
        let recipe = e.put_bytes(&text).unwrap();
        e.commit(true).unwrap();
        assert_eq!(e.read_to_vec(&recipe).unwrap(), text, "level {level}");
        e.segment_bytes().unwrap()
    };
    let fast = stored_at(0);
    let default = stored_at(datastore::engine::compress::DEFAULT_LEVEL);
    println!("8 MiB of source text: LZ4 fast {fast} bytes, default level {default} bytes");
    assert!(
        (default as f64) < 0.95 * fast as f64,
        "default level stored {default} bytes, fast mode {fast}"
    );
}

#[test]
fn changing_the_compression_level_keeps_every_record_readable() {
    let dir = tempfile::tempdir().unwrap();
    let first = source_text(2 * MIB);
    let second = random_bytes(9, MIB);
    let old = {
        let e = engine_at_level(dir.path(), 0);
        let recipe = e.put_bytes(&first).unwrap();
        e.commit(true).unwrap();
        recipe
    };
    let text = std::fs::read_to_string(dir.path().join("datastore.toml")).unwrap();
    assert!(text.contains("compression_level = 0"), "{text}");
    let mut cfg = StoreConfig::load(dir.path()).unwrap();
    cfg.engine.compression_level = datastore::engine::compress::MAX_LEVEL;
    cfg.save(dir.path()).unwrap();
    let e = open_engine(dir.path());
    let new = e.put_bytes(&second).unwrap();
    let again = e.put_bytes(&first).unwrap();
    e.commit(true).unwrap();
    assert_eq!(again, old, "same data, same chunks whatever the level");
    assert_eq!(e.read_to_vec(&old).unwrap(), first);
    assert_eq!(e.read_to_vec(&new).unwrap(), second);
    assert!(e.scrub().unwrap().is_clean());

    // Out of range is refused with the valid range named.
    cfg.engine.compression_level = 13;
    cfg.save(dir.path()).unwrap();
    let err = datastore::engine::Engine::open(dir.path(), Some(crypto()))
        .err()
        .expect("level 13 refused")
        .to_string();
    assert!(err.contains("compression_level must be between 0"), "{err}");
}
