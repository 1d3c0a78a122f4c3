//! The kernel's page cache on a real mount (root and /dev/fuse required):
//! a random read leaves the rest of its chunk cached by the kernel,
//! nothing cached that way ever outlives a write, a truncate or a lock,
//! and a long sequential stream keeps only its last GiB cached.

mod common;

use common::mounted::Fixture;

use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

const PAGE: usize = 4096;

/// Which pages of `file` (of `len` bytes) the kernel holds in its page
/// cache (mincore of a read-only mapping; mapping faults nothing in).
fn resident_pages(file: &File, len: usize) -> Vec<bool> {
    // SAFETY: a fresh read-only shared mapping of an open file, unmapped
    // before returning; `vec` has one byte per page as mincore requires.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let mut vec = vec![0u8; len.div_ceil(PAGE)];
        let rc = libc::mincore(map, len, vec.as_mut_ptr());
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        libc::munmap(map, len);
        vec.iter().map(|b| b & 1 == 1).collect()
    }
}

/// Drops the file's clean pages from the kernel's cache, so the next reads
/// reach the daemon.
fn drop_cached(file: &File) {
    // SAFETY: an open descriptor; advice only.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

fn read_page(file: &File, at: u64) -> Vec<u8> {
    let mut buf = vec![0u8; PAGE];
    let n = file.read_at(&mut buf, at).unwrap();
    buf.truncate(n);
    buf
}

/// A file of `len` random bytes written through the mount and synced.
fn write_file(path: &Path, seed: u64, len: usize) -> Vec<u8> {
    let data = common::random_bytes(seed, len);
    let f = File::create(path).unwrap();
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    data
}

#[test]
fn a_random_read_leaves_the_rest_of_its_chunk_in_the_page_cache() {
    let f = Fixture::new(&[]);
    f.mount();
    let path = f.mnt().join("file");
    let len = 8 << 20;
    let data = write_file(&path, 1, len);
    let r = File::open(&path).unwrap();
    assert!(
        resident_pages(&r, len).iter().all(|p| !p),
        "a fresh open starts cold"
    );
    let at = 3 << 20;
    assert_eq!(read_page(&r, at as u64), data[at..at + PAGE]);
    // The fill runs after the reply: wait for the neighbours to appear.
    let deadline = Instant::now() + Duration::from_secs(10);
    let resident = loop {
        let pages = resident_pages(&r, len);
        let n = pages.iter().filter(|p| **p).count();
        if n > 2 || Instant::now() > deadline {
            break pages;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let count = resident.iter().filter(|p| **p).count();
    // Chunks are 16-256 KiB: at least the whole pages of the read's chunk,
    // and nothing far from it.
    assert!(count >= 3, "only {count} page(s) cached after a 4 KiB read");
    assert!(count <= 2 * (256 << 10) / PAGE, "{count} pages cached");
    let first = resident.iter().position(|p| *p).unwrap();
    let last = resident.iter().rposition(|p| *p).unwrap();
    assert!(first * PAGE <= at && at < (last + 1) * PAGE);
    assert!(at - first * PAGE <= 256 << 10 && (last + 1) * PAGE - at <= 256 << 10);
    // What the kernel now answers on its own is the file's content.
    let mut all = vec![0u8; len];
    r.read_exact_at(&mut all, 0).unwrap();
    assert!(all == data, "cached pages differ from the file");
}

#[test]
fn writes_and_truncates_right_after_random_reads_are_never_undone_by_the_cache() {
    let f = Fixture::new(&[]);
    f.mount();
    let path = f.mnt().join("file");
    let len = 4 << 20;
    let mut data = write_file(&path, 2, len);
    let r = File::open(&path).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    // A read (its chunk queued for the page cache), then at once a write
    // next to it through another handle: the write must win, every time.
    for round in 0..300u64 {
        // A few reads elsewhere first, so fills are still queued when the
        // write comes.
        drop_cached(&r);
        for _ in 0..8 {
            let other = next(len / PAGE) * PAGE;
            assert!(read_page(&r, other as u64) == data[other..other + PAGE]);
        }
        let at = next(len / PAGE - 4) * PAGE;
        assert!(
            read_page(&r, at as u64) == data[at..at + PAGE],
            "round {round}"
        );
        let target = at + PAGE * (1 + next(3));
        let fresh = common::random_bytes(1000 + round, PAGE);
        let w = OpenOptions::new().write(true).open(&path).unwrap();
        w.write_all_at(&fresh, target as u64).unwrap();
        drop(w);
        data[target..target + PAGE].copy_from_slice(&fresh);
        assert!(
            read_page(&r, target as u64) == fresh,
            "round {round}: the page written at {target} reads back old content"
        );
    }
    // Give any fill still queued time to land, then check the whole file.
    std::thread::sleep(Duration::from_millis(300));
    let mut all = vec![0u8; len];
    r.read_exact_at(&mut all, 0).unwrap();
    assert!(all == data, "the file differs from what was written");

    // Truncate by path (no write handle) right after a read near the end:
    // a late fill must not bring the old size or tail back.
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut size = len;
    for round in 0..300 {
        drop_cached(&r);
        for _ in 0..8 {
            let other = next(size / PAGE - 1) * PAGE;
            assert!(read_page(&r, other as u64) == data[other..other + PAGE]);
        }
        let at = (size / PAGE - 2) * PAGE;
        assert!(read_page(&r, at as u64) == data[at..at + PAGE]);
        size -= PAGE + 123 + round;
        // SAFETY: a valid C string.
        let rc = unsafe { libc::truncate(cpath.as_ptr(), size as libc::off_t) };
        assert_eq!(rc, 0, "truncate: {}", std::io::Error::last_os_error());
        assert_eq!(r.metadata().unwrap().len(), size as u64, "round {round}");
        let past = read_page(&r, size as u64);
        assert!(
            past.is_empty(),
            "round {round}: {} bytes past the end",
            past.len()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(r.metadata().unwrap().len(), size as u64);
    let mut all = vec![0u8; size + PAGE];
    let mut got = 0;
    while let Ok(n) = r.read_at(&mut all[got..], got as u64) {
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, size, "reads end at the truncated size");
    assert!(all[..size] == data[..size]);
}

#[test]
fn lock_drops_cached_pages_of_open_files() {
    let f = Fixture::new(&[]);
    f.mount();
    let path = f.mnt().join("secret");
    let data = write_file(&path, 3, 1 << 20);
    let r = File::open(&path).unwrap();
    let mut all = vec![0u8; data.len()];
    r.read_exact_at(&mut all, 0).unwrap();
    assert!(all == data);
    assert!(resident_pages(&r, data.len()).iter().all(|p| *p));
    f.ok(&["lock"]);
    assert!(
        resident_pages(&r, data.len()).iter().all(|p| !p),
        "plaintext pages still cached after lock"
    );
    let err = r.read_at(&mut all, 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    f.ok(&["unlock", "--password-file", f.pw().to_str().unwrap()]);
    r.read_exact_at(&mut all, 0).unwrap();
    assert!(all == data);
}

const MIB: usize = 1 << 20;

/// Block `i` of a streamed file: one shared random MiB stamped with `i`
/// (most of it deduplicates, so writing a GiB stays quick).
fn stream_block(base: &[u8], i: usize) -> Vec<u8> {
    let mut block = base.to_vec();
    block[..8].copy_from_slice(&(i as u64).to_le_bytes());
    block
}

/// The share of `pages` in [from, to) (bytes) that is cached.
fn share_resident(pages: &[bool], from: usize, to: usize) -> f64 {
    let span = &pages[from / PAGE..to / PAGE];
    span.iter().filter(|p| **p).count() as f64 / span.len() as f64
}

/// Waits (the drops run after the replies) until the first 96 MiB of a
/// streamed `file` are no longer cached, then asserts that they are not
/// and that most of its last 512 MiB are.
fn assert_only_tail_cached(file: &File, len: usize, how: &str) {
    let head = 96 * MIB;
    let deadline = Instant::now() + Duration::from_secs(20);
    let pages = loop {
        let pages = resident_pages(file, len);
        if share_resident(&pages, 0, head) == 0.0 || Instant::now() > deadline {
            break pages;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let cached = share_resident(&pages, 0, head);
    assert_eq!(cached, 0.0, "{how} head still cached");
    let tail = share_resident(&pages, len - 512 * MIB, len);
    assert!(tail > 0.9, "only {tail:.2} of the {how} tail cached");
}

#[test]
fn a_long_sequential_stream_keeps_only_its_last_gib_cached() {
    let f = Fixture::new(&[]);
    f.mount();
    let base = common::random_bytes(4, MIB);
    let blocks = 1024 + 160;
    let len = blocks * MIB;

    // Written sequentially through a readable handle (so it is cached).
    let path = f.mnt().join("stream");
    let w = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    for i in 0..blocks {
        w.write_all_at(&stream_block(&base, i), (i * MIB) as u64)
            .unwrap();
    }
    w.sync_all().unwrap();
    assert_only_tail_cached(&w, len, "written");
    drop(w);

    // Read sequentially from cold: the same, and every byte is the file's.
    let r = File::open(&path).unwrap();
    drop_cached(&r);
    let mut buf = vec![0u8; MIB];
    for i in 0..blocks {
        r.read_exact_at(&mut buf, (i * MIB) as u64).unwrap();
        assert!(buf == stream_block(&base, i), "block {i} differs");
    }
    assert_only_tail_cached(&r, len, "read");
    // A dropped page is read again from the volume.
    r.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == stream_block(&base, 0));

    // A file shorter than the window stays cached whole.
    let short = f.mnt().join("short");
    let data = write_file(&short, 5, 256 * MIB);
    let r = File::open(&short).unwrap();
    drop_cached(&r);
    let mut all = vec![0u8; data.len()];
    for (i, piece) in all.chunks_mut(MIB).enumerate() {
        r.read_exact_at(piece, (i * MIB) as u64).unwrap();
    }
    assert!(all == data);
    std::thread::sleep(Duration::from_millis(500));
    let cached = share_resident(&resident_pages(&r, data.len()), 0, data.len());
    assert!(cached > 0.99, "only {cached:.2} of a short file cached");
}
