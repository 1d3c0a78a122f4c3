//! The volume (POSIX semantics without FUSE), in process: namespace
//! operations, data with holes and overwrites, open-unlinked files,
//! persistence across a reopen, and no plaintext names or data at rest.

mod common;

use std::sync::Arc;

use common::*;
use datastore::volume::inode::INLINE_ENTRIES_MAX;
use datastore::volume::{Caller, Kind, RenameMode, SetAttr, Volume, XattrFlags, ROOT};

const META_KEY: [u8; 32] = [0x33; 32];
const ME: Caller = Caller { uid: 0, gid: 0 };
const CREATE: XattrFlags = XattrFlags {
    create: true,
    replace: false,
};
const REPLACE: XattrFlags = XattrFlags {
    create: false,
    replace: true,
};

fn open(dir: &std::path::Path, create: bool) -> Volume {
    let e = if create {
        new_engine(dir)
    } else {
        open_engine(dir)
    };
    Volume::open(Arc::new(e), &META_KEY).unwrap()
}

fn create_file(v: &Volume, parent: u64, name: &str) -> u64 {
    v.mknod(parent, name.as_bytes(), Kind::File, 0o644, 0, ME)
        .unwrap()
        .ino
}

#[test]
fn namespace_operations() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), true);
    let d = v.mkdir(ROOT, b"d", 0o755, ME).unwrap();
    assert_eq!(v.getattr(ROOT).unwrap().inode.nlink, 3);
    let f = create_file(&v, d.ino, "f");
    assert_eq!(
        v.mknod(d.ino, b"f", Kind::File, 0o644, 0, ME)
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    v.link(f, ROOT, b"hard").unwrap();
    assert_eq!(v.getattr(f).unwrap().inode.nlink, 2);
    v.symlink(ROOT, b"sym", b"d/f", ME).unwrap();
    assert_eq!(
        v.readlink(v.lookup(ROOT, b"sym").unwrap().ino).unwrap(),
        b"d/f"
    );
    // rename over an existing file, then NOREPLACE and EXCHANGE
    let g = create_file(&v, ROOT, "g");
    v.rename(ROOT, b"hard", ROOT, b"g", RenameMode::Replace)
        .unwrap();
    assert!(v.getattr(g).is_err(), "replaced file is gone");
    assert_eq!(v.lookup(ROOT, b"g").unwrap().ino, f);
    assert_eq!(
        v.rename(ROOT, b"g", ROOT, b"sym", RenameMode::NoReplace)
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    v.rename(ROOT, b"g", ROOT, b"sym", RenameMode::Exchange)
        .unwrap();
    assert_eq!(v.lookup(ROOT, b"sym").unwrap().ino, f);
    assert_eq!(v.lookup(ROOT, b"g").unwrap().inode.kind, Kind::Symlink);
    // directory moves: into itself is refused, across parents fixes nlink
    let e = v.mkdir(ROOT, b"e", 0o700, ME).unwrap();
    assert_eq!(
        v.rename(ROOT, b"d", d.ino, b"x", RenameMode::Replace)
            .unwrap_err()
            .errno,
        libc::EINVAL
    );
    v.rename(ROOT, b"d", e.ino, b"d", RenameMode::Replace)
        .unwrap();
    assert_eq!(v.getattr(e.ino).unwrap().inode.nlink, 3);
    assert_eq!(v.lookup(e.ino, b"..").unwrap().ino, ROOT);
    assert_eq!(v.lookup(d.ino, b"..").unwrap().ino, e.ino);
    assert_eq!(v.rmdir(e.ino, b"d").unwrap_err().errno, libc::ENOTEMPTY);
    v.unlink(d.ino, b"f").unwrap();
    v.rmdir(e.ino, b"d").unwrap();
    assert_eq!(v.getattr(e.ino).unwrap().inode.nlink, 2);
    let names: Vec<Vec<u8>> = v.read_dir(ROOT).unwrap().into_iter().map(|x| x.2).collect();
    assert_eq!(
        names,
        vec![
            b".".to_vec(),
            b"..".to_vec(),
            b"e".to_vec(),
            b"g".to_vec(),
            b"sym".to_vec()
        ]
    );
}

#[test]
fn data_holes_overwrites_truncate_and_persistence() {
    let dir = tempfile::tempdir().unwrap();
    let big = random_bytes(9, 3 << 20);
    let f;
    {
        let v = open(dir.path(), true);
        f = create_file(&v, ROOT, "data");
        v.open_file(f).unwrap();
        v.write(f, 0, &big).unwrap();
        v.fsync(f).unwrap();
        // overwrite in the middle, write past a hole
        v.write(f, 1_000_000, b"HELLO").unwrap();
        v.write(f, 10 << 20, b"tail").unwrap();
        assert_eq!(
            v.read(f, 999_998, 9).unwrap(),
            [
                &big[999_998..1_000_000],
                b"HELLO",
                &big[1_000_005..1_000_007]
            ]
            .concat()
        );
        v.release(f).unwrap();
        let hole = v.read(f, 5 << 20, 4096).unwrap();
        assert!(hole.iter().all(|&b| b == 0));
        let attr = v.getattr(f).unwrap();
        assert_eq!(attr.inode.size, (10 << 20) + 4);
        assert!(
            attr.blocks * 512 < 4 << 20,
            "the hole costs nothing: {} blocks",
            attr.blocks
        );
        let t = SetAttr {
            size: Some(1_000_003),
            ..Default::default()
        };
        v.setattr(f, &t, ME).unwrap();
        v.sync_all().unwrap();
    }
    let v = open(dir.path(), false);
    let got = v.read(f, 0, 2 << 20).unwrap();
    let mut want = big[..1_000_003].to_vec();
    want[1_000_000..1_000_003].copy_from_slice(b"HEL");
    assert_eq!(got, want);
    assert!(v.engine().scrub().unwrap().is_clean());
}

/// Sealed values in the volume's tables (inode, directory entry and
/// extent rows).
fn sealed_rows(v: &Volume) -> u64 {
    v.count_sealed().unwrap().values().sum()
}

fn read_all(v: &Volume, ino: u64) -> Vec<u8> {
    let size = v.getattr(ino).unwrap().inode.size;
    v.read(ino, 0, size as u32).unwrap()
}

fn put(v: &Volume, ino: u64, off: u64, data: &[u8]) {
    v.open_file(ino).unwrap();
    v.write(ino, off, data).unwrap();
    v.release(ino).unwrap();
}

#[test]
fn files_move_between_inline_and_table_extents_without_losing_data() {
    let dir = tempfile::tempdir().unwrap();
    let small = random_bytes(21, 40_000);
    let big = random_bytes(22, 3 << 20);
    let (f, g);
    {
        let v = open(dir.path(), true);
        f = create_file(&v, ROOT, "small");
        g = create_file(&v, ROOT, "big");
        put(&v, f, 0, &small);
        put(&v, g, 0, &big);
        v.sync_all().unwrap();
        // root, f, g + two entries; a 3 MiB file's chunks are rows.
        assert!(sealed_rows(&v) > 5 + 8, "{} rows", sealed_rows(&v));
    }
    let mut grown = small.clone();
    grown.extend_from_slice(&big);
    {
        let v = open(dir.path(), false);
        assert!(read_all(&v, f) == small, "content of f");
        assert!(read_all(&v, g) == big, "content of g");
        // The one-chunk file grows past the inline limit, the big one
        // shrinks under it.
        put(&v, f, small.len() as u64, &big);
        let cut = SetAttr {
            size: Some(30_000),
            ..Default::default()
        };
        v.setattr(g, &cut, ME).unwrap();
        v.sync_all().unwrap();
        assert!(sealed_rows(&v) > 5 + 8, "{} rows", sealed_rows(&v));
    }
    {
        let v = open(dir.path(), false);
        assert!(read_all(&v, f) == grown, "content of f");
        assert!(read_all(&v, g) == big[..30_000], "content of g");
        let cut = SetAttr {
            size: Some(50_000),
            ..Default::default()
        };
        v.setattr(f, &cut, ME).unwrap();
        v.sync_all().unwrap();
        // Both files' extents now live in their inode rows (and root's
        // two entries in root's): no row is left behind in the extents
        // table.
        assert_eq!(sealed_rows(&v), 3);
    }
    let v = open(dir.path(), false);
    assert!(read_all(&v, f) == grown[..50_000], "content of f");
    assert!(read_all(&v, g) == big[..30_000], "content of g");
    v.unlink(ROOT, b"small").unwrap();
    v.unlink(ROOT, b"big").unwrap();
    v.sync_all().unwrap();
    let mut referenced = 0;
    v.engine()
        .meta()
        .for_each_chunk(|_, e| referenced += e.refcount)
        .unwrap();
    assert_eq!(referenced, 0, "every chunk reference was released once");
    assert!(v.engine().scrub().unwrap().is_clean());
}

/// Names of `d` as listed, without "." and "..".
fn listed_names(v: &Volume, dir: u64) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = v
        .read_dir(dir)
        .unwrap()
        .into_iter()
        .map(|(_, _, n)| n)
        .filter(|n| n != b"." && n != b"..")
        .collect();
    names.sort();
    names
}

#[test]
fn directories_move_between_inline_and_table_entries_without_losing_names() {
    let dir = tempfile::tempdir().unwrap();
    let name = |i: usize| format!("entry-{i:04}");
    let over = INLINE_ENTRIES_MAX + 10;
    let mut inos = std::collections::BTreeMap::new();
    let d;
    {
        let v = open(dir.path(), true);
        d = v.mkdir(ROOT, b"d", 0o755, ME).unwrap().ino;
        for i in 0..10 {
            inos.insert(name(i), create_file(&v, d, &name(i)));
        }
        v.sync_all().unwrap();
        // root, d and 10 files: both directories' entries are in their rows.
        assert_eq!(sealed_rows(&v), 12);
    }
    {
        // Past the inline limit: every entry becomes a row, the 10 that
        // were in d's row too.
        let v = open(dir.path(), false);
        for i in 10..over {
            inos.insert(name(i), create_file(&v, d, &name(i)));
        }
        v.sync_all().unwrap();
        assert_eq!(sealed_rows(&v), 2 + 2 * over as u64);
    }
    let moved_in;
    let last_out;
    {
        let v = open(dir.path(), false);
        let want: Vec<Vec<u8>> = inos.keys().map(|n| n.clone().into_bytes()).collect();
        assert_eq!(listed_names(&v, d), want);
        for (n, ino) in &inos {
            assert_eq!(v.lookup(d, n.as_bytes()).unwrap().ino, *ino, "{n}");
        }
        // Back under the limit, with a rename out of d and one into it.
        for i in 0..over - 10 {
            v.unlink(d, name(i).as_bytes()).unwrap();
            inos.remove(&name(i));
        }
        last_out = name(over - 10);
        v.rename(d, last_out.as_bytes(), ROOT, b"out", RenameMode::NoReplace)
            .unwrap();
        inos.remove(&last_out);
        moved_in = create_file(&v, ROOT, "in");
        v.rename(ROOT, b"in", d, b"moved-in", RenameMode::NoReplace)
            .unwrap();
        inos.insert("moved-in".to_string(), moved_in);
        v.sync_all().unwrap();
        // root, d, 11 files; no entry row is left behind.
        assert_eq!(sealed_rows(&v), 13);
    }
    let v = open(dir.path(), false);
    let want: Vec<Vec<u8>> = inos.keys().map(|n| n.clone().into_bytes()).collect();
    assert_eq!(listed_names(&v, d), want);
    for (n, ino) in &inos {
        assert_eq!(v.lookup(d, n.as_bytes()).unwrap().ino, *ino, "{n}");
    }
    assert_eq!(v.lookup(d, b"entry-0000").unwrap_err().errno, libc::ENOENT);
    assert_eq!(
        v.lookup(d, last_out.as_bytes()).unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(listed_names(&v, ROOT), vec![b"d".to_vec(), b"out".to_vec()]);
    for n in inos.keys() {
        v.unlink(d, n.as_bytes()).unwrap();
    }
    v.rmdir(ROOT, b"d").unwrap();
    v.unlink(ROOT, b"out").unwrap();
    v.sync_all().unwrap();
    assert_eq!(sealed_rows(&v), 1, "only root is left");
    drop(v);
    let v = open(dir.path(), false);
    assert!(listed_names(&v, ROOT).is_empty());
    assert!(v.engine().scrub().unwrap().is_clean());
}

fn many_files() -> Vec<String> {
    (0..6000).map(|i| format!("file-{i:05}")).collect()
}

fn content_of(i: usize) -> Vec<u8> {
    random_bytes(i as u64, 100 + i % 3000)
}

/// Directory "d" of `names` files, committed in many small commits (so the
/// metadata file holds freed pages and half-full leaves).
fn write_many_files(v: &Volume, names: &[String]) {
    let sub = v.mkdir(ROOT, b"d", 0o755, ME).unwrap().ino;
    for (i, name) in names.iter().enumerate() {
        let f = create_file(v, sub, name);
        put(v, f, 0, &content_of(i));
        if i % 500 == 0 {
            v.commit(false).unwrap();
        }
    }
    v.sync_all().unwrap();
}

/// Every file of `write_many_files` is listed and reads back.
fn check_many_files(v: &Volume, names: &[String]) {
    let sub = v.lookup(ROOT, b"d").unwrap().ino;
    let listed = v
        .read_dir(sub)
        .unwrap()
        .into_iter()
        .filter(|(_, _, n)| n != b"." && n != b"..")
        .count();
    assert_eq!(listed, names.len());
    for (i, name) in names.iter().enumerate() {
        let f = v.lookup(sub, name.as_bytes()).unwrap().ino;
        assert!(read_all(v, f) == content_of(i), "content of {name}");
    }
    assert!(v.engine().scrub().unwrap().is_clean());
}

#[test]
fn compacting_the_metadata_offline_needs_no_key_and_keeps_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let names = many_files();
    write_many_files(&open(dir.path(), true), &names);
    {
        // What `datastore gc` does: the engine alone, without keys.
        let e = datastore::engine::Engine::open(dir.path(), None).unwrap();
        let (before, after) = datastore::volume::compact_metadata_offline(&e)
            .unwrap()
            .expect("a grown database is worth compacting");
        assert!(after * 10 < before * 8, "{before} -> {after} bytes");
        assert_eq!(
            datastore::volume::compact_metadata_offline(&e).unwrap(),
            None
        );
    }
    check_many_files(&open(dir.path(), false), &names);
}

#[test]
fn compacting_the_metadata_shrinks_its_file_and_keeps_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let names = many_files();
    {
        let v = open(dir.path(), true);
        write_many_files(&v, &names);
        let (on_disk, _) = v.engine().meta().space().unwrap();
        // A file over the limit is left as it is.
        assert_eq!(v.compact_metadata(on_disk - 1).unwrap(), None);
        let (before, after) = v
            .compact_metadata(u64::MAX)
            .unwrap()
            .expect("a grown database is worth compacting");
        assert_eq!(before, on_disk);
        assert!(after * 10 < before * 8, "{before} -> {after} bytes");
        // Leaves of the new file are at least 3/4 full (rows inserted in
        // key order alone would leave them half full), besides redb's own
        // ~1.5 MB.
        let (_, rows) = v.engine().meta().space().unwrap();
        assert!(after < rows * 4 / 3 + (2 << 20), "{after} bytes for {rows}");
        // A fresh file (nothing to save) is left as it is.
        assert_eq!(v.compact_metadata(u64::MAX).unwrap(), None);
    }
    check_many_files(&open(dir.path(), false), &names);
}

#[test]
fn unlinked_open_file_lives_until_last_close() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), true);
    let f = create_file(&v, ROOT, "tmp");
    v.open_file(f).unwrap();
    v.write(f, 0, b"still here").unwrap();
    v.unlink(ROOT, b"tmp").unwrap();
    assert_eq!(v.lookup(ROOT, b"tmp").unwrap_err().errno, libc::ENOENT);
    assert_eq!(v.read(f, 0, 100).unwrap(), b"still here");
    v.release(f).unwrap();
    assert_eq!(v.getattr(f).unwrap_err().errno, libc::ENOENT);
}

#[test]
fn xattrs_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), true);
    let f = create_file(&v, ROOT, "x");
    v.setxattr(f, b"user.a", b"1", CREATE, ME).unwrap();
    assert_eq!(
        v.setxattr(f, b"user.a", b"2", CREATE, ME)
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    assert_eq!(
        v.setxattr(f, b"user.b", b"2", REPLACE, ME)
            .unwrap_err()
            .errno,
        libc::ENODATA
    );
    assert_eq!(v.getxattr(f, b"user.a").unwrap(), b"1");
    assert_eq!(v.listxattr(f).unwrap(), b"user.a\0");
    v.removexattr(f, b"user.a").unwrap();
    assert_eq!(v.getxattr(f, b"user.a").unwrap_err().errno, libc::ENODATA);
    let other = Caller {
        uid: 1000,
        gid: 1000,
    };
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    assert_eq!(v.setattr(f, &chmod, other).unwrap_err().errno, libc::EPERM);
    assert_eq!(v.setattr(f, &chmod, ME).unwrap().inode.perm, 0o600);
}

#[test]
fn no_plaintext_names_contents_xattrs_or_targets_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let marker = hex::encode(random_bytes(0xabc, 12)); // 24 printable bytes
    {
        let v = open(dir.path(), true);
        let d = v
            .mkdir(ROOT, format!("dir-{marker}").as_bytes(), 0o755, ME)
            .unwrap();
        let f = create_file(&v, d.ino, &format!("file-{marker}"));
        v.open_file(f).unwrap();
        v.write(f, 0, marker.repeat(1000).as_bytes()).unwrap();
        v.release(f).unwrap();
        v.setxattr(f, b"user.tag", marker.as_bytes(), XattrFlags::default(), ME)
            .unwrap();
        v.symlink(ROOT, b"link", marker.as_bytes(), ME).unwrap();
        v.sync_all().unwrap();
    }
    let hits = find_bytes(dir.path(), &marker.as_bytes()[..16]);
    assert!(hits.is_empty(), "marker found at rest: {hits:?}");
    let v = open(dir.path(), false);
    let d = v.lookup(ROOT, format!("dir-{marker}").as_bytes()).unwrap();
    let f = v
        .lookup(d.ino, format!("file-{marker}").as_bytes())
        .unwrap();
    assert_eq!(v.getxattr(f.ino, b"user.tag").unwrap(), marker.as_bytes());
}

#[test]
fn a_crash_never_leaves_a_file_longer_than_its_stored_data() {
    let dir = tempfile::tempdir().unwrap();
    let f;
    {
        let v = open(dir.path(), true);
        f = create_file(&v, ROOT, "growing");
        v.open_file(f).unwrap();
        v.write(f, 0, b"first part").unwrap();
        v.fsync(f).unwrap();
        v.write(f, 10, &[7u8; 100_000]).unwrap(); // buffered only
        let other = create_file(&v, ROOT, "other");
        v.fsync(other).unwrap(); // a durable commit while f has a buffer
                                 // dropped here without sync: like a crash
    }
    let v = open(dir.path(), false);
    assert_eq!(v.getattr(f).unwrap().inode.size, 10);
    assert_eq!(v.read(f, 0, 1000).unwrap(), b"first part");
}

#[test]
fn background_flushes_race_with_writes_reads_truncates_and_unlinks() {
    let dir = tempfile::tempdir().unwrap();
    let v = Arc::new(open(dir.path(), true));
    v.start_flusher();
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let v = v.clone();
            s.spawn(move || {
                for round in 0..20u64 {
                    let name = format!("t{t}-{round}");
                    let f = create_file(&v, ROOT, &name);
                    v.open_file(f).unwrap();
                    let data = random_bytes(t * 1000 + round, 200_000 + (round as usize) * 5_000);
                    for (i, piece) in data.chunks(64 * 1024).enumerate() {
                        v.write(f, (i * 64 * 1024) as u64, piece).unwrap();
                    }
                    v.flush(f).unwrap(); // queued for the flusher
                                         // Reads see the data whether or not the flush has run.
                    assert!(v.read(f, 0, data.len() as u32).unwrap() == data);
                    match round % 3 {
                        0 => {
                            let cut = SetAttr {
                                size: Some(100_000),
                                ..Default::default()
                            };
                            v.setattr(f, &cut, ME).unwrap();
                            assert!(v.read(f, 0, 200_000).unwrap() == data[..100_000]);
                            v.release(f).unwrap();
                        }
                        1 => {
                            v.unlink(ROOT, name.as_bytes()).unwrap();
                            v.release(f).unwrap();
                        }
                        _ => {
                            v.fsync(f).unwrap();
                            v.release(f).unwrap();
                            assert!(v.read(f, 0, data.len() as u32).unwrap() == data);
                        }
                    }
                }
            });
        }
    });
    v.sync_all().unwrap();
    assert!(v.engine().scrub().unwrap().is_clean());
    // Every surviving file reads back what it should after a reopen.
    let names: Vec<(u64, Vec<u8>)> = v
        .read_dir(ROOT)
        .unwrap()
        .into_iter()
        .skip(2)
        .map(|(i, _, n)| (i, n))
        .collect();
    drop(v);
    let v = open(dir.path(), false);
    for (ino, name) in names {
        let name = String::from_utf8(name).unwrap();
        let (t, round) = name[1..].split_once('-').unwrap();
        let (t, round): (u64, u64) = (t.parse().unwrap(), round.parse().unwrap());
        let data = random_bytes(t * 1000 + round, 200_000 + (round as usize) * 5_000);
        let want = if round % 3 == 0 {
            &data[..100_000]
        } else {
            &data[..]
        };
        assert!(v.read(ino, 0, 1 << 20).unwrap() == want, "{name}");
    }
}

#[test]
fn scattered_writes_across_a_large_file_flush_in_bounded_windows() {
    // 48 MiB file, then 80 MiB of 4 KiB writes at random offsets (more
    // than a flush's worth, so flushes re-chunk windows cut at extent
    // boundaries), some straddling each other; every byte must match a
    // model of the file, before and after reopening.
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let mut model = random_bytes(21, 48 << 20);
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let f;
    {
        let v = open(dir.path(), true);
        f = create_file(&v, ROOT, "big");
        v.open_file(f).unwrap();
        v.write(f, 0, &model).unwrap();
        v.fsync(f).unwrap();
        for i in 0..20_480u64 {
            let off = rng.gen_range(0..model.len() - 4096);
            let block = random_bytes(1000 + i, 4096);
            v.write(f, off as u64, &block).unwrap();
            model[off..off + 4096].copy_from_slice(&block);
        }
        v.fsync(f).unwrap();
        assert!(
            v.read(f, 0, 48 << 20).unwrap() == model,
            "differs before reopen"
        );
        v.release(f).unwrap();
        v.sync_all().unwrap();
    }
    let v = open(dir.path(), false);
    assert!(
        v.read(f, 0, 48 << 20).unwrap() == model,
        "differs after reopen"
    );
}

#[test]
fn a_flush_that_meets_a_damaged_chunk_fails_and_loses_no_write() {
    // Small writes spread over a stored file make the flush decode (and
    // re-chunk) every chunk around them; one of them is damaged on disk.
    // The flush must fail with EIO rather than store wrong bytes, and the
    // writes must still be there once the damage is repaired.
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), true);
    let f = create_file(&v, ROOT, "f");
    v.open_file(f).unwrap();
    let mut model = random_bytes(41, 4 << 20);
    v.write(f, 0, &model).unwrap();
    v.fsync(f).unwrap();
    let segment = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment)
        .unwrap();
    let at = file.metadata().unwrap().len() / 2;
    let mut b = [0u8];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0x04], at).unwrap();
    for (i, off) in (100..model.len() - 4096).step_by(128 << 10).enumerate() {
        let block = random_bytes(500 + i as u64, 4096);
        v.write(f, off as u64, &block).unwrap();
        model[off..off + 4096].copy_from_slice(&block);
    }
    assert_eq!(v.fsync(f).unwrap_err().errno, libc::EIO);
    file.write_all_at(&b, at).unwrap();
    v.fsync(f).unwrap();
    assert!(
        read_all(&v, f) == model,
        "the file differs after the repair"
    );
    v.release(f).unwrap();
    v.sync_all().unwrap();
    drop(v);
    let v = open(dir.path(), false);
    assert!(read_all(&v, f) == model, "the file differs after reopening");
}

#[test]
fn streams_reuse_flushed_buffers_without_mixing_contents() {
    // 1 MiB writes into files of 40 MiB: each stream's buffer is recycled
    // for the next one; every file must read back as written.
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), true);
    let mut files = Vec::new();
    for n in 0..3u64 {
        let f = create_file(&v, ROOT, &format!("stream{n}"));
        v.open_file(f).unwrap();
        let data = random_bytes(300 + n, 40 << 20);
        for (i, block) in data.chunks(1 << 20).enumerate() {
            v.write(f, (i << 20) as u64, block).unwrap();
        }
        v.fsync(f).unwrap();
        v.release(f).unwrap();
        files.push((f, data));
    }
    for (f, data) in &files {
        assert!(
            v.read(*f, 0, 40 << 20).unwrap() == *data,
            "stream {f} differs"
        );
    }
}

#[test]
fn entries_survive_commits_racing_directories_across_the_inline_limit() {
    let dir = tempfile::tempdir().unwrap();
    let v = Arc::new(open(dir.path(), true));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let committer = {
        let (v, stop) = (v.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                v.commit(false).unwrap();
            }
        })
    };
    // Like `datastore import`: several threads create entries in the same
    // directories at once, past the inline limit.
    let racing_entries = INLINE_ENTRIES_MAX + 150;
    let dirs: Vec<u64> = (0..4)
        .map(|d| {
            v.mkdir(ROOT, format!("d{d}").as_bytes(), 0o755, ME)
                .unwrap()
                .ino
        })
        .collect();
    let creators: Vec<_> = (0..3)
        .map(|t| {
            let (v, dirs) = (v.clone(), dirs.clone());
            std::thread::spawn(move || {
                for i in (t..racing_entries).step_by(3) {
                    for d in &dirs {
                        create_file(&v, *d, &format!("botocore-entry-{i:04}"));
                    }
                }
            })
        })
        .collect();
    for c in creators {
        c.join().unwrap();
    }
    let names: Vec<String> = (0..racing_entries)
        .map(|i| format!("botocore-entry-{i:04}"))
        .collect();
    let want: std::collections::BTreeMap<u64, Vec<String>> =
        dirs.iter().map(|d| (*d, names.clone())).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    committer.join().unwrap();
    v.sync_all().unwrap();
    drop(v);
    let v = open(dir.path(), false);
    for (ino, names) in &want {
        let listed: Vec<Vec<u8>> = listed_names(&v, *ino);
        let expected: Vec<Vec<u8>> = names.iter().map(|n| n.clone().into_bytes()).collect();
        assert_eq!(listed.len(), expected.len(), "directory {ino}");
        assert_eq!(listed, expected, "directory {ino}");
    }
}
