//! The bucket mirror against a real S3-compatible server (s3s-fs on
//! loopback, started by the tests): a store whose directory is deleted is
//! attached back from the bucket and reads identical; no plaintext marker of
//! names, contents, xattrs or symlink targets reaches the server; deleting
//! data and running gc shrinks the bucket without losing a live chunk; while
//! the server is down fsync reports EIO and keeps the data, and once it is
//! back the backlog drains; a key rotation survives a crash and an attach
//! mid-way and leaves nothing sealed under the old key in the bucket.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::symlink;
use std::path::Path;

use common::mounted::{diff, Fixture};
use common::s3::{S3Server, BUCKET};

fn mirrored(server: &S3Server, prefix: &str) -> Fixture {
    let args = server.init_args(prefix);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Fixture::with_env(&args, server.env())
}

/// fsync of every file and directory under `root`: what an application
/// that wants its data durable does.
fn fsync_tree(root: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(root)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            fsync_tree(&e.path())?;
        } else if t.is_file() {
            std::fs::File::open(e.path())?.sync_all()?;
        }
    }
    std::fs::File::open(root)?.sync_all()
}

fn attach(f: &Fixture, server: &S3Server, prefix: &str) {
    std::fs::remove_dir_all(f.store()).unwrap();
    let url = format!("s3://{BUCKET}/{prefix}");
    let pw = f.pw();
    let endpoint = server.endpoint();
    let out = f.ok(&[
        "attach",
        "--remote",
        &url,
        "--endpoint",
        &endpoint,
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(out.contains("Attached"), "{out}");
}

#[test]
fn a_deleted_store_is_attached_back_from_the_bucket_identical() {
    let server = S3Server::start();
    let f = mirrored(&server, "host1");
    f.mount();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tree = f.mnt().join("tree");
    std::fs::create_dir(&tree).unwrap();
    common::copy_repo_parts(&["src", "keystore", "docs"], &tree);
    std::fs::write(tree.join("big"), common::random_bytes(11, 20 << 20)).unwrap();
    fsync_tree(&tree).unwrap();
    let st = f.status();
    assert_eq!(st["remote"]["backlog_bytes"], 0, "{st}");
    assert!(st["remote"]["checkpoint"].as_u64().unwrap() >= 1, "{st}");
    // A small change after that travels as a journal entry, not a whole
    // new checkpoint, and attach replays it.
    std::fs::write(tree.join("late"), b"written after the checkpoint").unwrap();
    fsync_tree(&tree).unwrap();
    let names = walk_names(server.data_dir());
    assert!(
        names.iter().any(|n| n == "jrnl"),
        "no journal entry: {names:?}"
    );
    f.unmount();
    attach(&f, &server, "host1");
    f.mount();
    for part in ["src", "keystore", "docs"] {
        diff(&repo.join(part), &tree.join(part));
    }
    assert_eq!(
        std::fs::read(tree.join("big")).unwrap(),
        common::random_bytes(11, 20 << 20)
    );
    assert_eq!(
        std::fs::read(tree.join("late")).unwrap(),
        b"written after the checkpoint"
    );
    f.unmount();
}

#[test]
fn no_plaintext_marker_reaches_the_server() {
    let server = S3Server::start();
    let f = mirrored(&server, "secret");
    f.mount();
    let marker = format!("PLAINMARK{:x}", std::process::id() as u64 * 7919);
    let dir = f.mnt().join(format!("dir-{marker}"));
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join(format!("name-{marker}"));
    // Random bytes around the marker: LZ4 cannot shrink them, so only
    // encryption can hide the marker.
    std::fs::write(&file, noisy(&marker)).unwrap();
    common::set_xattr(&file, c"user.note", marker.as_bytes());
    symlink(format!("target-{marker}"), dir.join("link")).unwrap();
    fsync_tree(&f.mnt()).unwrap();
    f.unmount();
    let hits = common::find_bytes(server.data_dir(), marker.as_bytes());
    assert!(hits.is_empty(), "plaintext in the bucket: {hits:?}");
    let names = walk_names(server.data_dir());
    assert!(
        names.iter().all(|n| !n.contains("PLAINMARK")),
        "a marker in an object name: {names:?}"
    );
    assert!(server.data_bytes() > 50_000, "nothing reached the server");
}

/// The marker inside incompressible random bytes, several times.
fn noisy(marker: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..8 {
        out.extend(common::random_bytes(90 + i, 40_000));
        out.extend_from_slice(marker.as_bytes());
    }
    out
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_names(&e.path()));
        }
    }
    out
}

#[test]
fn gc_shrinks_the_bucket_and_keeps_every_live_chunk() {
    let server = S3Server::start();
    let f = mirrored(&server, "gc");
    f.mount();
    let (keep, drop) = (f.mnt().join("keep"), f.mnt().join("drop"));
    std::fs::write(&keep, common::random_bytes(1, 24 << 20)).unwrap();
    std::fs::write(&drop, common::random_bytes(2, 24 << 20)).unwrap();
    fsync_tree(&f.mnt()).unwrap();
    f.unmount();
    let before = server.data_bytes();
    f.mount();
    std::fs::remove_file(&drop).unwrap();
    f.unmount();
    f.ok(&["gc", "--threshold", "1"]);
    f.mount();
    // The next durable point brings the bucket up to date.
    fsync_tree(&f.mnt()).unwrap();
    f.unmount();
    let after = server.data_bytes();
    assert!(
        after + (20 << 20) < before,
        "bucket did not shrink: {before} -> {after} bytes"
    );
    attach(&f, &server, "gc");
    f.mount();
    assert_eq!(
        std::fs::read(&keep).unwrap(),
        common::random_bytes(1, 24 << 20)
    );
    assert!(!drop.exists());
    f.unmount();
}

#[test]
fn an_outage_fails_fsync_keeps_the_data_and_drains_when_the_server_returns() {
    const MAX_BACKLOG: usize = 16 << 20;
    const PIECE: usize = 2 << 20;
    let mut server = S3Server::start();
    let mut args = server.init_args("outage");
    args.extend(["--max-backlog".to_string(), "16M".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = Fixture::with_env(&args, server.env());
    f.mount();
    let early = f.mnt().join("early");
    std::fs::write(&early, common::random_bytes(5, 3 << 20)).unwrap();
    fsync_tree(&f.mnt()).unwrap();
    server.stop();
    // Reads of what is local keep working.
    assert_eq!(
        std::fs::read(&early).unwrap(),
        common::random_bytes(5, 3 << 20)
    );
    // Writes are kept locally, fsync says EIO, until the backlog is full.
    let late = f.mnt().join("late");
    let data = common::random_bytes(6, 64 << 20);
    let mut accepted = 0;
    let refused = loop {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&late)
            .unwrap();
        if let Err(e) = file.write_all(&data[accepted..accepted + PIECE]) {
            break e;
        }
        accepted += PIECE;
        let err = file.sync_all().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        assert!(accepted < 48 << 20, "the backlog limit never held");
    };
    assert_eq!(refused.raw_os_error(), Some(libc::ENOSPC), "{refused}");
    assert!(
        (MAX_BACKLOG - PIECE..=MAX_BACKLOG + 4 * PIECE).contains(&accepted),
        "{accepted} bytes accepted with a 16 MiB backlog limit"
    );
    let st = f.status();
    assert!(st["remote"]["backlog_bytes"].as_u64().unwrap() > 0, "{st}");
    let why = st["remote"]["last_error"].as_str().unwrap();
    assert!(why.contains(&server.endpoint()), "{why}");
    // Back: the daemon drains the backlog by itself, writes resume.
    server.resume();
    let start = std::time::Instant::now();
    while f.status()["remote"]["backlog_bytes"] != 0 {
        assert!(start.elapsed().as_secs() < 60, "the backlog never drained");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    {
        use std::io::Write;
        // A refused write may have left part of its piece: go on from the
        // file's real end.
        let at = std::fs::metadata(&late).unwrap().len() as usize;
        assert!(at >= accepted);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&late)
            .unwrap();
        file.write_all(&data[at..at + PIECE]).unwrap();
        accepted = at + PIECE;
        file.sync_all().unwrap();
    }
    let st = f.status();
    assert_eq!(st["remote"]["backlog_bytes"], 0, "{st}");
    assert!(st["remote"]["last_error"].is_null(), "{st}");
    f.unmount();
    attach(&f, &server, "outage");
    f.mount();
    assert_eq!(
        std::fs::read(&early).unwrap(),
        common::random_bytes(5, 3 << 20)
    );
    assert!(
        std::fs::read(&late).unwrap() == data[..accepted],
        "late differs"
    );
    f.unmount();
}

/// Bytes of the store's local segment files.
fn local_segment_bytes(f: &Fixture) -> u64 {
    common::dir_bytes(&f.store().join("segments"))
}

#[test]
fn a_64_mib_cache_serves_500_mib_from_the_bucket_within_its_limit() {
    const LIMIT: u64 = 64 << 20;
    const FILE: usize = 50 << 20;
    let server = S3Server::start();
    let mut args = server.init_args("cache");
    args.extend(["--cache-size".to_string(), "64M".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = Fixture::with_env(&args, server.env());
    f.mount();
    // One long write, fsync'ed only at the end: the daemon uploads and
    // evicts while the writer keeps appending (it must never evict a segment
    // with appends a commit has not recorded yet).
    for i in 0..10u64 {
        let path = f.mnt().join(format!("f{i}"));
        std::fs::write(&path, common::random_bytes(100 + i, FILE)).unwrap();
    }
    fsync_tree(&f.mnt()).unwrap();
    let now = local_segment_bytes(&f);
    assert!(now <= LIMIT, "local segments hold {now} bytes after fsync");
    let st = f.status();
    assert_eq!(st["remote"]["cache_limit"], LIMIT, "{st}");
    assert!(
        st["remote"]["evicted_bytes"].as_u64().unwrap() > 400 << 20,
        "{st}"
    );
    // f0's segments (evicted long ago) become gc candidates.
    std::fs::remove_file(f.mnt().join("f0")).unwrap();
    f.unmount();
    // Offline gc brings the evicted, mostly dead segments back from the
    // bucket and compacts them.
    let gc: serde_json::Value =
        serde_json::from_str(&f.ok(&["gc", "--threshold", "1", "--json"])).unwrap();
    assert!(gc["segments_compacted"].as_u64().unwrap() > 0, "{gc}");
    assert!(
        gc["segments_skipped_not_local"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{gc}"
    );
    let bucket_before = server.data_bytes();
    f.mount();
    // A durable point first: the bucket then drops what gc dropped.
    fsync_tree(&f.mnt()).unwrap();
    let bucket_after = server.data_bytes();
    assert!(
        bucket_after + (40 << 20) < bucket_before,
        "the bucket kept f0's packs: {bucket_before} -> {bucket_after} bytes"
    );
    assert!(!f.mnt().join("f0").exists());
    for i in 1..10u64 {
        let path = f.mnt().join(format!("f{i}"));
        assert!(
            std::fs::read(&path).unwrap() == common::random_bytes(100 + i, FILE),
            "f{i} differs after coming back from the bucket"
        );
        let now = local_segment_bytes(&f);
        assert!(now <= LIMIT, "cache grew to {now} bytes while reading f{i}");
    }
    let st = f.status();
    assert!(
        st["remote"]["fetched_bytes"].as_u64().unwrap() > 350 << 20,
        "{st}"
    );
    f.unmount();
}

#[test]
fn small_fsyncs_are_repacked_once_their_segment_is_full() {
    let server = S3Server::start();
    let f = mirrored(&server, "repack");
    f.mount();
    let small = f.mnt().join("small");
    std::fs::create_dir(&small).unwrap();
    for i in 0..150u64 {
        let p = small.join(format!("f{i}"));
        std::fs::write(&p, common::random_bytes(1000 + i, 20_000)).unwrap();
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
    }
    let packs = |s: &S3Server| {
        let dir = s.data_dir().join(BUCKET).join("repack").join("packs");
        std::fs::read_dir(dir).unwrap().count()
    };
    let before = packs(&server);
    assert!(
        before >= 100,
        "expected one small pack per fsync, saw {before}"
    );
    // Fill the segment so the writer moves on; the next upload repacks it.
    let big = f.mnt().join("big");
    std::fs::write(&big, common::random_bytes(7, 40 << 20)).unwrap();
    std::fs::File::open(&big).unwrap().sync_all().unwrap();
    let after = packs(&server);
    assert!(
        after <= 16,
        "{before} small packs became {after}, not a few full ones"
    );
    f.unmount();
    attach(&f, &server, "repack");
    f.mount();
    for i in 0..150u64 {
        let got = std::fs::read(small.join(format!("f{i}"))).unwrap();
        assert!(
            got == common::random_bytes(1000 + i, 20_000),
            "f{i} differs"
        );
    }
    assert!(std::fs::read(&big).unwrap() == common::random_bytes(7, 40 << 20));
    f.unmount();
}

/// Garage compatibility: the same mirror, cache and attach against a real
/// Garage node (its region name is "garage").
#[test]
fn garage_mirrors_evicts_and_attaches_back_identical() {
    let garage = common::garage::Garage::start();
    let endpoint = garage.endpoint();
    let init = [
        "--remote",
        "s3://bkt/host",
        "--endpoint",
        &endpoint,
        "--region",
        "garage",
        "--cache-size",
        "64M",
    ];
    let f = Fixture::with_env(&init, garage.env());
    f.mount();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    common::copy_repo_parts(&["src"], &f.mnt());
    let big = f.mnt().join("big");
    std::fs::write(&big, common::random_bytes(21, 120 << 20)).unwrap();
    let marker = "GARAGEMARK-7f3a9";
    std::fs::write(f.mnt().join("noisy"), noisy(marker)).unwrap();
    fsync_tree(&f.mnt()).unwrap();
    assert!(local_segment_bytes(&f) <= 64 << 20);
    let hits = common::find_bytes(garage.data_dir(), marker.as_bytes());
    assert!(hits.is_empty(), "plaintext in Garage: {hits:?}");
    f.unmount();
    std::fs::remove_dir_all(f.store()).unwrap();
    let pw = f.pw();
    f.ok(&[
        "attach",
        "--remote",
        "s3://bkt/host",
        "--endpoint",
        &endpoint,
        "--region",
        "garage",
        "--cache-size",
        "64M",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    f.mount();
    diff(&repo.join("src"), &f.mnt().join("src"));
    assert!(std::fs::read(&big).unwrap() == common::random_bytes(21, 120 << 20));
    f.unmount();
}

/// Names of the objects under `prefix/kind` in the server's bucket.
fn objects(server: &S3Server, prefix: &str, kind: &str) -> BTreeSet<String> {
    let dir = server.data_dir().join(BUCKET).join(prefix).join(kind);
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Every metadata object of the bucket's chains.
fn chain_objects(server: &S3Server, prefix: &str) -> BTreeSet<String> {
    let mut out = objects(server, prefix, "ckpt");
    out.extend(
        objects(server, prefix, "jrnl")
            .into_iter()
            .map(|n| format!("j{n}")),
    );
    out
}

#[test]
fn a_mirrored_store_rotates_its_key_through_a_crash_and_an_attach_leaving_nothing_of_the_old_key_in_the_bucket(
) {
    let server = S3Server::start();
    let f = mirrored(&server, "rot");
    f.mount();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    common::copy_repo_parts(&["src"], &f.mnt().join("tree"));
    let file = |i: u64| common::random_bytes(300 + i, 4 << 20);
    for i in 0..8 {
        std::fs::write(f.mnt().join(format!("r{i}")), file(i)).unwrap();
    }
    fsync_tree(&f.mnt()).unwrap();
    let old_packs = objects(&server, "rot", "packs");
    let old_chain = chain_objects(&server, "rot");
    assert!(!old_packs.is_empty() && !old_chain.is_empty());

    f.start_rotation("1M");
    // Written under the new key, then durable points mid-conversion: the
    // bucket gets the new keystore and a head sealed under the new key.
    std::fs::write(f.mnt().join("after"), file(99)).unwrap();
    fsync_tree(&f.mnt()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    fsync_tree(&f.mnt()).unwrap();
    let st = f.status();
    assert_eq!(st["conversion"]["state"], "converting", "{st}");
    // The host dies mid-conversion; the store comes back from the bucket.
    f.kill_daemon();
    attach(&f, &server, "rot");
    f.mount(); // resumes the conversion (at its limit of 1 MiB/s)
    f.set_conversion_rate("0");
    f.wait_for_conversion();
    let st = f.status();
    assert_eq!(
        st["conversion"]["max_rate"], 0,
        "the limit was not lifted: {st}"
    );
    let check = || {
        diff(&repo.join("src"), &f.mnt().join("tree"));
        for i in 0..8 {
            assert!(std::fs::read(f.mnt().join(format!("r{i}"))).unwrap() == file(i));
        }
        assert!(std::fs::read(f.mnt().join("after")).unwrap() == file(99));
    };
    check();
    f.unmount();

    // Nothing the bucket held before the rotation is left in it, and its
    // keystore copy no longer carries the old key.
    let packs = objects(&server, "rot", "packs");
    assert!(!packs.is_empty());
    assert!(
        packs.is_disjoint(&old_packs),
        "packs from before the rotation remain"
    );
    assert!(chain_objects(&server, "rot").is_disjoint(&old_chain));
    let ks = std::fs::read_to_string(server.data_dir().join(BUCKET).join("rot/keystore")).unwrap();
    assert!(
        !ks.contains("retiring"),
        "the bucket's keystore keeps the old key"
    );
    // What the bucket alone restores is all under the new key.
    attach(&f, &server, "rot");
    let (records, metadata) = f.scan_generations();
    assert_eq!(records, vec![r#"{"Key":1}"#.to_string()]);
    assert_eq!(metadata, vec!["key generation 1".to_string()]);
    f.mount();
    check();
    // A second rotation without a crash: the running daemon switches the
    // bucket to the new key too, so the bucket alone still restores it.
    let pw = f.pw();
    f.ok(&[
        "encryption",
        "rotate-key",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    f.unmount();
    assert!(objects(&server, "rot", "packs").is_disjoint(&packs));
    attach(&f, &server, "rot");
    let (records, metadata) = f.scan_generations();
    assert_eq!(records, vec![r#"{"Key":2}"#.to_string()]);
    assert_eq!(metadata, vec!["key generation 2".to_string()]);
    f.mount();
    check();
    f.unmount();
}
