//! Must-show 5 and the bad-input cases of the chunk engine: any flipped byte
//! of a record is an integrity error naming the chunk, never wrong data; a
//! truncated segment or bad header is reported by scrub and reading fails
//! cleanly while other chunks stay readable.

mod common;

use std::os::unix::fs::FileExt;

use common::*;
use datastore::engine::EngineError;
use rand::{Rng, SeedableRng};

const SEGMENT_HEADER: u64 = 32;

fn only_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > SEGMENT_HEADER)
        .collect();
    assert_eq!(segs.len(), 1);
    segs.pop().unwrap()
}

/// The store's one segment with data, open for reading and writing.
fn open_only_segment(dir: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(only_segment(dir))
        .unwrap()
}

/// Flips one bit of the byte in the middle of the store's one segment;
/// returns the segment, the byte's offset and its original value.
fn flip_middle_byte(dir: &std::path::Path) -> (std::fs::File, u64, u8) {
    let file = open_only_segment(dir);
    let at = file.metadata().unwrap().len() / 2;
    let mut b = [0u8];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    (file, at, b[0])
}

#[test]
fn every_flipped_byte_is_an_integrity_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = new_engine(dir.path());
    // One compressible chunk (so LZ4 and the length fields are exercised).
    let data: Vec<u8> = (0..10_000u32)
        .map(|i| (i % 251) as u8 ^ (i / 997) as u8)
        .collect();
    let recipe = e.put_bytes(&data).unwrap();
    assert_eq!(recipe.len(), 1);
    e.commit(true).unwrap();
    let file = open_only_segment(dir.path());
    let record_len = file.metadata().unwrap().len() - SEGMENT_HEADER;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // Every header byte, then random body positions: 100 flips in all.
    let positions: Vec<u64> = (0..60)
        .chain((0..40).map(|_| rng.gen_range(60..record_len)))
        .collect();
    for pos in positions {
        let at = SEGMENT_HEADER + pos;
        let mut b = [0u8];
        file.read_exact_at(&mut b, at).unwrap();
        let flip = [b[0] ^ (1 << rng.gen_range(0..8))];
        file.write_all_at(&flip, at).unwrap();
        match e.read_chunk(&recipe[0].fingerprint) {
            Err(EngineError::Integrity { chunk, .. }) => {
                assert_eq!(chunk, hex::encode(&recipe[0].fingerprint[..8]))
            }
            other => panic!("flip at record byte {pos}: expected integrity error, got {other:?}"),
        }
        file.write_all_at(&b, at).unwrap();
    }
    assert_eq!(e.read_to_vec(&recipe).unwrap(), data);
    assert!(e.scrub().unwrap().is_clean());
}

#[test]
fn truncated_segment_is_reported_and_other_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, data_a) = {
        let e = new_engine(dir.path());
        let data_a = random_bytes(10, 2 << 20);
        let a = e.put_bytes(&data_a).unwrap();
        let b = e.put_bytes(&random_bytes(11, 2 << 20)).unwrap();
        e.commit(true).unwrap();
        (a, b, data_a)
    };
    let seg = only_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    let e = open_engine(dir.path());
    let report = e.scrub().unwrap();
    assert!(!report.is_clean(), "scrub must report the cut segment");
    assert!(matches!(
        e.read_to_vec(&b),
        Err(EngineError::Integrity { .. })
    ));
    assert_eq!(
        e.read_to_vec(&a).unwrap(),
        data_a,
        "earlier chunks still read"
    );
}

#[test]
fn damaged_header_is_found_by_scrub_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = {
        let e = new_engine(dir.path());
        let r = e.put_bytes(&random_bytes(12, 1 << 20)).unwrap();
        e.commit(true).unwrap();
        r
    };
    let seg = only_segment(dir.path());
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(b"XXXX", SEGMENT_HEADER).unwrap();
    drop(f);
    // Locked: no key loaded. Scrub still checks headers and CRCs.
    let e = datastore::engine::Engine::open(dir.path(), None).unwrap();
    let report = e.scrub().unwrap();
    assert!(!report.verified_with_key);
    assert!(
        report.bad.iter().any(|b| b.offset == SEGMENT_HEADER),
        "{report:?}"
    );
    assert!(
        report.records >= recipe.len() as u64 - 1,
        "later records still walked"
    );
    assert!(matches!(
        e.read_chunk(&recipe[0].fingerprint),
        Err(EngineError::Locked)
    ));
}

#[test]
fn second_open_of_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _e = new_engine(dir.path());
    assert!(matches!(
        datastore::engine::Engine::open(dir.path(), Some(crypto())),
        Err(EngineError::InUse(_))
    ));
}

#[test]
fn a_streaming_read_verifies_each_chunk_of_the_records_it_reads_together() {
    let dir = tempfile::tempdir().unwrap();
    let e = new_engine(dir.path());
    let data = random_bytes(21, 3 << 20);
    let recipe = e.put_bytes(&data).unwrap();
    e.commit(true).unwrap();
    let fps: Vec<_> = recipe.iter().map(|c| c.fingerprint).collect();
    assert!(fps.len() > 16, "{} chunks", fps.len());
    let whole: Vec<u8> = e
        .read_chunks_streaming(&fps)
        .unwrap()
        .into_iter()
        .flat_map(|c| c.unwrap())
        .collect();
    assert!(whole == data);

    // One flipped byte in the middle of the segment: exactly the chunk it
    // hit is an integrity error, its neighbours (read in the same span)
    // still decode to their bytes.
    flip_middle_byte(dir.path());
    let results = e.read_chunks_streaming(&fps).unwrap();
    let mut offset = 0;
    let mut bad = Vec::new();
    for (chunk, r) in recipe.iter().zip(results) {
        let want = &data[offset..offset + chunk.len as usize];
        offset += chunk.len as usize;
        match r {
            Ok(got) => assert!(got == want, "a chunk decoded to other bytes"),
            Err(EngineError::Integrity { chunk: name, .. }) => {
                assert_eq!(name, hex::encode(&chunk.fingerprint[..8]));
                bad.push(name);
            }
            Err(other) => panic!("expected an integrity error, got {other:?}"),
        }
    }
    assert_eq!(bad.len(), 1, "{bad:?}");
}

#[test]
fn chunks_decoded_into_caller_buffers_are_verified_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let e = new_engine(dir.path());
    // Random and compressible halves: raw and LZ4 records both decode
    // straight into the buffers.
    let mut data = random_bytes(23, 2 << 20);
    data.extend((0..(2u32 << 20)).map(|i| (i % 251) as u8 ^ (i / 4093) as u8));
    let recipe = e.put_bytes(&data).unwrap();
    e.commit(true).unwrap();
    let decode_all = |out: &mut [u8]| {
        let mut rest = out;
        let mut slots = Vec::new();
        for c in &recipe {
            let (mine, after) = std::mem::take(&mut rest).split_at_mut(c.len as usize);
            slots.push((c.fingerprint, mine));
            rest = after;
        }
        e.read_chunks_into(&mut slots).unwrap()
    };
    let mut out = vec![0u8; data.len()];
    assert!(decode_all(&mut out).iter().all(|r| r.is_ok()));
    assert!(out == data);

    // One flipped byte in the middle of the segment: exactly one chunk is
    // an integrity error, named; every other buffer holds its bytes.
    let (file, at, original) = flip_middle_byte(dir.path());
    let mut out = vec![0u8; data.len()];
    let results = decode_all(&mut out);
    let mut offset = 0;
    let mut bad = Vec::new();
    for (chunk, r) in recipe.iter().zip(results) {
        let range = offset..offset + chunk.len as usize;
        offset += chunk.len as usize;
        match r {
            Ok(()) => assert!(
                out[range.clone()] == data[range],
                "a chunk decoded to other bytes"
            ),
            Err(EngineError::Integrity { chunk: name, .. }) => {
                assert_eq!(name, hex::encode(&chunk.fingerprint[..8]));
                bad.push(name);
            }
            Err(other) => panic!("expected an integrity error, got {other:?}"),
        }
    }
    assert_eq!(bad.len(), 1, "{bad:?}");
    file.write_all_at(&[original], at).unwrap();

    // A buffer of the wrong length is refused, not overrun.
    let mut short = vec![0u8; recipe[0].len as usize - 1];
    let r = e
        .read_chunks_into(&mut [(recipe[0].fingerprint, &mut short[..])])
        .unwrap();
    assert!(matches!(r[0], Err(EngineError::Integrity { .. })), "{r:?}");
}
