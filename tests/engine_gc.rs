//! Must-show 6 of the chunk engine: GC returns the space of released data
//! and never harms live data.

mod common;

use common::*;

const MIB: usize = 1 << 20;

#[test]
fn releasing_everything_then_gc_leaves_under_five_percent() {
    let dir = tempfile::tempdir().unwrap();
    let e = new_engine(dir.path());
    let recipes: Vec<_> = (0..10)
        .map(|i| e.put_bytes(&random_bytes(100 + i, 20 * MIB)).unwrap())
        .collect();
    e.commit(true).unwrap();
    assert!(e.segment_bytes().unwrap() >= 200 * MIB as u64);
    for r in &recipes {
        e.release(r).unwrap();
    }
    e.commit(true).unwrap();
    let report = e.gc(0.5).unwrap();
    let after = e.segment_bytes().unwrap();
    println!("{report:?}");
    assert!(
        after < (200 * MIB as u64) / 20,
        "segments still hold {after} bytes"
    );
    assert!(e.scrub().unwrap().is_clean());
}

#[test]
fn releasing_half_then_gc_keeps_the_other_half_identical() {
    let dir = tempfile::tempdir().unwrap();
    let streams: Vec<(Vec<u8>, Vec<_>)> = {
        let e = new_engine(dir.path());
        let streams: Vec<_> = (0..20)
            .map(|i| {
                let d = random_bytes(200 + i, 10 * MIB);
                let r = e.put_bytes(&d).unwrap();
                (d, r)
            })
            .collect();
        e.commit(true).unwrap();
        for (_, r) in streams.iter().step_by(2) {
            e.release(r).unwrap();
        }
        e.commit(true).unwrap();
        let before = e.segment_bytes().unwrap();
        let report = e.gc(0.75).unwrap();
        println!("{report:?}");
        assert!(report.segments_compacted > 0);
        assert!(
            e.segment_bytes().unwrap() < before * 6 / 10,
            "gc freed too little"
        );
        for (d, r) in streams.iter().skip(1).step_by(2) {
            assert_eq!(&e.read_to_vec(r).unwrap(), d);
        }
        streams
    };
    let e = open_engine(dir.path());
    assert!(e.scrub().unwrap().is_clean());
    for (d, r) in streams.iter().skip(1).step_by(2) {
        assert_eq!(&e.read_to_vec(r).unwrap(), d, "after reopen");
    }
}

#[test]
fn a_chunk_released_and_stored_again_is_revived_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let e = new_engine(dir.path());
    let d = random_bytes(7, 3 * MIB);
    let r = e.put_bytes(&d).unwrap();
    e.commit(true).unwrap();
    e.release(&r).unwrap();
    e.commit(true).unwrap();
    let r2 = e.put_bytes(&d).unwrap();
    e.commit(true).unwrap();
    e.gc(1.0).unwrap();
    assert_eq!(e.read_to_vec(&r2).unwrap(), d);
}
