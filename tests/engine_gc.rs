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

/// GC lets requests in between segments: chunks written, read and revived
/// (dead ones stored again) while it runs all survive it and a reopen.
#[test]
fn gc_beside_writers_readers_and_revivals_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = std::sync::Arc::new(new_engine(dir.path()));
    let old: Vec<(Vec<u8>, Vec<_>)> = (0..30)
        .map(|i| {
            let d = random_bytes(300 + i, 2 * MIB);
            let r = e.put_bytes(&d).unwrap();
            (d, r)
        })
        .collect();
    e.commit(true).unwrap();
    for (_, r) in old.iter().step_by(2) {
        e.release(r).unwrap();
    }
    e.commit(true).unwrap();
    let old = std::sync::Arc::new(old);
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (e, old, running) = (e.clone(), old.clone(), running.clone());
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut i = 0u64;
            while running.load(std::sync::atomic::Ordering::SeqCst) || i < 4 {
                let d = random_bytes(500 + i, MIB);
                kept.push((d.clone(), e.put_bytes(&d).unwrap()));
                // A released chunk stored again while GC may be dropping it.
                let (dead, _) = &old[(2 * i as usize) % old.len()];
                kept.push((dead.clone(), e.put_bytes(dead).unwrap()));
                // Uncommitted for a while: GC must see these references.
                if i % 4 == 3 {
                    e.commit(i % 8 == 7).unwrap();
                }
                i += 1;
            }
            kept
        })
    };
    let reader = {
        let (e, old, running) = (e.clone(), old.clone(), running.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while running.load(std::sync::atomic::Ordering::SeqCst) || reads < 4 {
                for (d, r) in old.iter().skip(1).step_by(2) {
                    assert!(&e.read_to_vec(r).unwrap() == d, "a live chunk changed");
                }
                reads += 1;
            }
        })
    };
    let report = e.gc(1.0).unwrap();
    running.store(false, std::sync::atomic::Ordering::SeqCst);
    let kept = writer.join().unwrap();
    reader.join().unwrap();
    e.commit(true).unwrap();
    assert!(report.segments_compacted > 0, "{report:?}");
    let check = |e: &datastore::engine::Engine| {
        for (d, r) in old.iter().skip(1).step_by(2).chain(kept.iter()) {
            assert!(&e.read_to_vec(r).unwrap() == d);
        }
        assert!(e.scrub().unwrap().is_clean());
    };
    check(&e);
    drop(e);
    check(&open_engine(dir.path()));
}
