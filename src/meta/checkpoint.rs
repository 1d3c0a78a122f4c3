//! The second copy of the metadata database, `meta/checkpoint`: a base
//! image of `index.redb` followed by delta frames (the blocks that changed
//! since the frame before), each frame taken between transactions right
//! after a durable commit. `datastore repair` replays it when `index.redb`
//! is lost, damaged or older than it. Format: docs/FORMAT.md, "Checkpoint".
//!
//! Owns: the file's format; writing a base (temp file, fsync, rename,
//! directory fsync); appending a delta (append, fdatasync); the digests of
//! the image as last written (to find changed blocks); replaying base and
//! deltas into a database file; the newest sequence number.
//!
//! Invariants: a frame counts only when its header and body checksums hold
//! and it follows a counted frame; the first bad frame ends the replay
//! (every later delta depends on it). Sequence numbers increase frame by
//! frame; each frame's image holds its own sequence number (the caller
//! commits it before the image is read), so a database holding a smaller
//! one is older than the checkpoint. The file names its store. Reading the
//! image is `stage` (the caller holds the commit lock); compressing and
//! writing is `finish` (without it).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Block size of images and deltas.
pub const BLOCK: usize = 64 << 10;
const FILE_MAGIC: &[u8; 8] = b"DSCHKPT1";
const FILE_HEADER_LEN: u64 = 32;
const FRAME_MAGIC: &[u8; 4] = b"DSCF";
const FRAME_HEADER_LEN: usize = 48;
pub const KIND_BASE: u8 = 1;
const KIND_DELTA: u8 = 2;
const FORM_ZERO: u8 = 0;
const FORM_RAW: u8 = 1;
const FORM_LZ4: u8 = 2;
/// A body larger than this is damage (no database here is this large).
const MAX_BODY: u64 = 1 << 40;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Damaged(String),
}

type Result<T> = std::result::Result<T, CheckpointError>;

fn damaged(why: impl Into<String>) -> CheckpointError {
    CheckpointError::Damaged(why.into())
}

/// `meta/checkpoint` beside the database file `index`.
pub fn path(index: &Path) -> PathBuf {
    index.with_file_name("checkpoint")
}

/// The byte copy earlier builds wrote (`checkpoint.redb`); read by repair
/// when there is no `checkpoint`, removed when a base is written.
pub fn legacy_path(index: &Path) -> PathBuf {
    index.with_file_name("checkpoint.redb")
}

fn file_header(store_id: &[u8; 16]) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[12..28].copy_from_slice(store_id);
    let crc = crc32c::crc32c(&h[..28]);
    h[28..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// One frame's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    pub kind: u8,
    pub seq: u64,
    /// Unix seconds when it was taken.
    pub time: u64,
    pub db_len: u64,
    pub body_len: u64,
}

impl FrameInfo {
    fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[..4].copy_from_slice(FRAME_MAGIC);
        h[4] = self.kind;
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        h[16..24].copy_from_slice(&self.time.to_le_bytes());
        h[24..32].copy_from_slice(&self.db_len.to_le_bytes());
        h[32..40].copy_from_slice(&self.body_len.to_le_bytes());
        let crc = crc32c::crc32c(&h[..40]);
        h[40..44].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn decode(h: &[u8; FRAME_HEADER_LEN]) -> Option<Self> {
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(h[40..44].try_into().expect("4 bytes"));
        let valid = &h[..4] == FRAME_MAGIC
            && crc32c::crc32c(&h[..40]) == crc
            && matches!(h[4], KIND_BASE | KIND_DELTA)
            && u64_at(32) <= MAX_BODY;
        valid.then(|| FrameInfo {
            kind: h[4],
            seq: u64_at(8),
            time: u64_at(16),
            db_len: u64_at(24),
            body_len: u64_at(32),
        })
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn digest(block: &[u8]) -> [u8; 32] {
    // Finds changed blocks; protects nothing (the frames' CRCs catch
    // damage), so it is not a cryptographic operation of the store.
    *blake3::hash(block).as_bytes()
}

/// Reads block `i` of `db` (shorter at the end of the file).
fn read_block(db: &File, len: u64, i: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let at = (i * BLOCK) as u64;
    let size = (len - at).min(BLOCK as u64) as usize;
    buf.resize(size, 0);
    db.read_exact_at(buf, at)
}

/// Appends one body entry for block `index` holding `block`.
fn encode_block(out: &mut Vec<u8>, index: usize, block: &[u8]) {
    out.extend_from_slice(&(index as u64).to_le_bytes());
    if block.iter().all(|b| *b == 0) {
        out.push(FORM_ZERO);
        out.extend_from_slice(&0u32.to_le_bytes());
        return;
    }
    let packed = lz4_flex::block::compress(block);
    let (form, bytes) = match packed.len() < block.len() {
        true => (FORM_LZ4, &packed[..]),
        false => (FORM_RAW, block),
    };
    out.push(form);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// What the writer knows of the checkpoint file, once it wrote a base.
struct Written {
    digests: Vec<[u8; 32]>,
    base_bytes: u64,
    delta_bytes: u64,
}

/// Writes a store's checkpoint: one per open store, one frame at a time.
pub struct CheckpointWriter {
    path: PathBuf,
    store_id: [u8; 16],
    written: Option<Written>,
}

/// An image read under the commit lock, to be written by `finish`.
pub enum Staged {
    /// Nothing changed since the last frame.
    Nothing,
    /// A base, already in the temp file (not yet durable or in place).
    Base {
        tmp: PathBuf,
        digests: Vec<[u8; 32]>,
        bytes: u64,
    },
    /// The changed blocks, raw.
    Delta {
        info: FrameInfo,
        blocks: Vec<(usize, Vec<u8>)>,
        digests: Vec<[u8; 32]>,
    },
}

impl CheckpointWriter {
    pub fn new(index: &Path, store_id: [u8; 16]) -> Self {
        CheckpointWriter {
            path: path(index),
            store_id,
            written: None,
        }
    }

    /// Reads the database file `db` (the caller holds the commit lock and
    /// has just committed `seq` durably): a base when `base` is set, when
    /// this writer wrote none yet, or when the deltas since the last base
    /// outgrew half of it; else the blocks that changed.
    pub fn stage(&self, db: &Path, seq: u64, base: bool) -> Result<Staged> {
        let file = File::open(db)?;
        let len = file.metadata()?.len();
        let blocks = (len as usize).div_ceil(BLOCK);
        match &self.written {
            Some(w) if !base && w.delta_bytes <= w.base_bytes / 2 => {
                self.stage_delta(&file, len, blocks, seq, w)
            }
            _ => self.stage_base(&file, len, blocks, seq),
        }
    }

    fn stage_delta(
        &self,
        file: &File,
        len: u64,
        blocks: usize,
        seq: u64,
        w: &Written,
    ) -> Result<Staged> {
        let mut digests = Vec::with_capacity(blocks);
        let mut changed = Vec::new();
        let mut buf = Vec::with_capacity(BLOCK);
        for i in 0..blocks {
            read_block(file, len, i, &mut buf)?;
            let d = digest(&buf);
            if w.digests.get(i) != Some(&d) {
                changed.push((i, buf.clone()));
            }
            digests.push(d);
        }
        if changed.is_empty() && digests.len() == w.digests.len() {
            return Ok(Staged::Nothing);
        }
        let info = FrameInfo {
            kind: KIND_DELTA,
            seq,
            time: now_secs(),
            db_len: len,
            body_len: 0,
        };
        Ok(Staged::Delta {
            info,
            blocks: changed,
            digests,
        })
    }

    /// Streams the whole image into the temp file (compressed block by
    /// block), so memory stays flat whatever the database's size.
    fn stage_base(&self, file: &File, len: u64, blocks: usize, seq: u64) -> Result<Staged> {
        let tmp = self.path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let staged = self.write_base(file, len, blocks, seq, &tmp);
        if staged.is_err() {
            // A full disk must not stay fuller by a partial copy.
            let _ = std::fs::remove_file(&tmp);
        }
        staged
    }

    fn write_base(
        &self,
        file: &File,
        len: u64,
        blocks: usize,
        seq: u64,
        tmp: &Path,
    ) -> Result<Staged> {
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)?;
        let mut out = BufWriter::new(out);
        out.write_all(&file_header(&self.store_id))?;
        out.write_all(&[0u8; FRAME_HEADER_LEN])?;
        let (mut digests, mut body_crc, mut body_len) = (Vec::with_capacity(blocks), 0u32, 0u64);
        let (mut buf, mut entry) = (Vec::with_capacity(BLOCK), Vec::with_capacity(BLOCK + 16));
        for i in 0..blocks {
            read_block(file, len, i, &mut buf)?;
            digests.push(digest(&buf));
            entry.clear();
            encode_block(&mut entry, i, &buf);
            body_crc = crc32c::crc32c_append(body_crc, &entry);
            body_len += entry.len() as u64;
            out.write_all(&entry)?;
        }
        out.write_all(&body_crc.to_le_bytes())?;
        let mut out = out.into_inner().map_err(|e| e.into_error())?;
        let info = FrameInfo {
            kind: KIND_BASE,
            seq,
            time: now_secs(),
            db_len: len,
            body_len,
        };
        out.seek(SeekFrom::Start(FILE_HEADER_LEN))?;
        out.write_all(&info.encode())?;
        Ok(Staged::Base {
            tmp: tmp.to_path_buf(),
            digests,
            bytes: FILE_HEADER_LEN + FRAME_HEADER_LEN as u64 + body_len + 4,
        })
    }

    /// Makes a staged frame durable: a base replaces the file, a delta is
    /// appended to it. Returns whether anything was written.
    pub fn finish(&mut self, staged: Staged) -> Result<bool> {
        match staged {
            Staged::Nothing => Ok(false),
            Staged::Base {
                tmp,
                digests,
                bytes,
            } => {
                let durable = File::open(&tmp).and_then(|f| f.sync_all());
                if let Err(e) = durable.and_then(|_| std::fs::rename(&tmp, &self.path)) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.into());
                }
                if let Some(dir) = self.path.parent() {
                    let _ = std::fs::remove_file(legacy_path(&dir.join("index.redb")));
                    crate::fsutil::sync_dir(dir)?;
                }
                self.written = Some(Written {
                    digests,
                    base_bytes: bytes,
                    delta_bytes: 0,
                });
                Ok(true)
            }
            Staged::Delta {
                mut info,
                blocks,
                digests,
            } => {
                let mut body = Vec::new();
                for (i, block) in &blocks {
                    encode_block(&mut body, *i, block);
                }
                info.body_len = body.len() as u64;
                let mut frame = info.encode().to_vec();
                frame.extend_from_slice(&body);
                frame.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
                // Never through a symlink someone planted in its place.
                let appended = OpenOptions::new()
                    .append(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&self.path)
                    .and_then(|mut f| f.write_all(&frame).and_then(|_| f.sync_data()));
                if let Err(e) = appended {
                    // Part of a frame may be there: the next frame is a
                    // base, which replaces the file.
                    self.written = None;
                    return Err(e.into());
                }
                let w = self.written.as_mut().expect("a delta follows a base");
                w.digests = digests;
                w.delta_bytes += frame.len() as u64;
                Ok(true)
            }
        }
    }
}

/// Checks the file header: the magic, its CRC, the store.
fn check_file_header(f: &mut File, store_id: &[u8; 16]) -> Result<()> {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    f.read_exact(&mut h)
        .map_err(|_| damaged("shorter than its header"))?;
    let crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
    if &h[..8] != FILE_MAGIC || crc32c::crc32c(&h[..28]) != crc {
        return Err(damaged("not a checkpoint file (bad header)"));
    }
    if &h[12..28] != store_id {
        return Err(damaged("it belongs to another store"));
    }
    Ok(())
}

/// Reads the next frame header, or None at the end or at damage.
fn next_header(f: &mut File) -> Option<FrameInfo> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    f.read_exact(&mut h).ok()?;
    FrameInfo::decode(&h)
}

/// The sequence number of the newest frame whose header is intact (a
/// cheap walk over headers; bodies are not read). None: no file.
pub fn newest_seq(index: &Path, store_id: &[u8; 16]) -> Result<Option<u64>> {
    let mut f = match File::open(path(index)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    check_file_header(&mut f, store_id)?;
    let mut newest = None;
    while let Some(info) = next_header(&mut f) {
        newest = Some(info.seq);
        f.seek(SeekFrom::Current(info.body_len as i64 + 4))?;
    }
    Ok(newest)
}

/// What a replay used.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The frames applied (the base first).
    pub frames: Vec<FrameInfo>,
    /// Why the replay stopped before the end of the file, if it did.
    pub stopped: Option<String>,
    /// The stop was at a frame that is complete but fails its checksum or
    /// cannot be applied (damage), not at an incomplete last frame (a
    /// crash while appending: the next open starts a new base anyway).
    pub damaged: bool,
    /// Where the last frame applied ends in the file.
    pub end: u64,
}

impl Replayed {
    /// The newest frame applied.
    pub fn newest(&self) -> &FrameInfo {
        self.frames.last().expect("a replay applies its base")
    }
}

/// Checks every frame (both checksums); the replay `restore` would do,
/// without writing anything.
pub fn verify(index: &Path, store_id: &[u8; 16]) -> Result<Replayed> {
    replay(index, store_id, &mut |_, _| Ok(()))
}

/// Cuts the checkpoint file after the frames a replay applied (what
/// follows cannot be applied, and its numbers would make the restored
/// database look older than its checkpoint).
pub fn cut_after(index: &Path, replayed: &Replayed) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path(index))?;
    f.set_len(replayed.end)?;
    f.sync_all()?;
    Ok(())
}

/// Writes the image the checkpoint holds to `dest` (a new file): the base
/// and every intact delta after it, in order.
pub fn restore(index: &Path, store_id: &[u8; 16], dest: &Path) -> Result<Replayed> {
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dest)?;
    let replayed = replay(index, store_id, &mut |info, body| {
        apply(&out, info, body)?;
        Ok(())
    })?;
    out.sync_all()?;
    Ok(replayed)
}

type Apply<'a> = dyn FnMut(&FrameInfo, &[u8]) -> Result<()> + 'a;

fn replay(index: &Path, store_id: &[u8; 16], apply: &mut Apply) -> Result<Replayed> {
    let mut f = File::open(path(index))?;
    check_file_header(&mut f, store_id)?;
    let mut frames: Vec<FrameInfo> = Vec::new();
    let end = f.metadata()?.len();
    let mut applied_end = FILE_HEADER_LEN;
    let (stopped, is_damage) = loop {
        let at = f.stream_position()?;
        let Some(info) = next_header(&mut f) else {
            break match end - at {
                0 => (None, false),
                n if n < FRAME_HEADER_LEN as u64 => {
                    (Some(format!("an incomplete frame at byte {at}")), false)
                }
                _ => (Some(format!("a damaged frame header at byte {at}")), true),
            };
        };
        let first = frames.is_empty();
        if first != (info.kind == KIND_BASE) || frames.last().is_some_and(|l| l.seq >= info.seq) {
            break (Some(format!("a frame out of order at byte {at}")), true);
        }
        let mut body = vec![0u8; info.body_len as usize + 4];
        if f.read_exact(&mut body).is_err() {
            break (Some(format!("an incomplete frame at byte {at}")), false);
        }
        let (body, crc) = body.split_at(info.body_len as usize);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            break (
                Some(format!("a damaged frame at byte {at} (CRC mismatch)")),
                true,
            );
        }
        match apply(&info, body) {
            Ok(()) => {}
            // Writing the image failed (a full disk): no damage here.
            Err(CheckpointError::Io(e)) => return Err(e.into()),
            Err(e) => {
                let why = format!("a frame at byte {at} that cannot be applied ({e})");
                break (Some(why), true);
            }
        }
        frames.push(info);
        applied_end = f.stream_position()?;
    };
    if frames.is_empty() {
        return Err(damaged(stopped.unwrap_or_else(|| "no base image".into())));
    }
    Ok(Replayed {
        frames,
        stopped,
        damaged: is_damage,
        end: applied_end,
    })
}

/// Writes a frame's blocks into `out` and sets its length.
fn apply(out: &File, info: &FrameInfo, body: &[u8]) -> Result<()> {
    let bad = || damaged("a malformed block entry");
    let mut at = 0;
    let mut block = Vec::with_capacity(BLOCK);
    while at < body.len() {
        let head = body.get(at..at + 13).ok_or_else(bad)?;
        let index = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let form = head[8];
        let len = u32::from_le_bytes(head[9..13].try_into().expect("4 bytes")) as usize;
        let bytes = body.get(at + 13..at + 13 + len).ok_or_else(bad)?;
        at += 13 + len;
        let offset = index.checked_mul(BLOCK as u64).ok_or_else(bad)?;
        if offset >= info.db_len {
            return Err(bad());
        }
        let size = (info.db_len - offset).min(BLOCK as u64) as usize;
        block.clear();
        match form {
            FORM_ZERO => block.resize(size, 0),
            FORM_RAW => block.extend_from_slice(bytes),
            FORM_LZ4 => {
                block.resize(size, 0);
                let n = lz4_flex::block::decompress_into(bytes, &mut block).map_err(|_| bad())?;
                block.truncate(n);
            }
            _ => return Err(bad()),
        }
        if block.len() != size {
            return Err(bad());
        }
        out.write_all_at(&block, offset)?;
    }
    out.set_len(info.db_len)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE: [u8; 16] = [7; 16];

    fn image(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| {
                if i % 3 == 0 {
                    0
                } else {
                    (i % 251) as u8 ^ salt
                }
            })
            .collect()
    }

    /// Writes `db` as the database and a frame of it; returns whether one
    /// was written.
    fn frame(w: &mut CheckpointWriter, dir: &Path, db: &[u8], seq: u64, base: bool) -> bool {
        let index = dir.join("index.redb");
        std::fs::write(&index, db).unwrap();
        let staged = w.stage(&index, seq, base).unwrap();
        w.finish(staged).unwrap()
    }

    fn restored(dir: &Path) -> (Vec<u8>, Replayed) {
        let dest = dir.join("out");
        let r = restore(&dir.join("index.redb"), &STORE, &dest).unwrap();
        (std::fs::read(dest).unwrap(), r)
    }

    #[test]
    fn a_base_and_its_deltas_replay_to_the_newest_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = CheckpointWriter::new(&dir.path().join("index.redb"), STORE);
        let mut db = image(BLOCK * 20 + 100, 1);
        assert!(
            frame(&mut w, dir.path(), &db, 1, false),
            "first frame: a base"
        );
        assert!(!frame(&mut w, dir.path(), &db, 2, false), "nothing changed");
        db[BLOCK * 3 + 5] ^= 0xff;
        db.extend_from_slice(&[9; 1000]);
        assert!(frame(&mut w, dir.path(), &db, 3, false));
        let size_after_delta = std::fs::metadata(path(&dir.path().join("index.redb")))
            .unwrap()
            .len();
        db.truncate(BLOCK * 7 + 3);
        assert!(frame(&mut w, dir.path(), &db, 4, false));
        let (got, r) = restored(dir.path());
        assert!(got == db);
        assert_eq!(r.frames.len(), 3);
        assert_eq!(r.newest().seq, 4);
        assert!(r.stopped.is_none());
        assert!(
            size_after_delta < (BLOCK * 10) as u64,
            "deltas carry changed blocks only"
        );
        assert_eq!(
            newest_seq(&dir.path().join("index.redb"), &STORE).unwrap(),
            Some(4)
        );
    }

    #[test]
    fn a_damaged_or_torn_frame_ends_the_replay_at_the_frame_before() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("index.redb");
        let mut w = CheckpointWriter::new(&index, STORE);
        let first = image(BLOCK * 4, 1);
        frame(&mut w, dir.path(), &first, 1, false);
        let mut second = first.clone();
        second[10] = 0xaa;
        frame(&mut w, dir.path(), &second, 2, false);
        let mut third = second.clone();
        third[BLOCK + 10] = 0xbb;
        frame(&mut w, dir.path(), &third, 3, false);
        let file = path(&index);
        let whole = std::fs::read(&file).unwrap();

        // Torn: the last frame cut short.
        std::fs::write(&file, &whole[..whole.len() - 7]).unwrap();
        let (got, r) = restored(dir.path());
        assert!(got == second);
        assert!(r.stopped.unwrap().contains("incomplete"));

        // A flipped byte in the second frame's body: only the base counts.
        let mut flipped = whole.clone();
        let second_frame = find_frame(&whole, 1);
        flipped[second_frame + FRAME_HEADER_LEN + 20] ^= 1;
        std::fs::write(&file, &flipped).unwrap();
        let (got, r) = restored(dir.path());
        assert!(got == first);
        assert!(r.stopped.unwrap().contains("CRC"));
        assert!(verify(&index, &STORE).unwrap().frames.len() == 1);

        // Another store's checkpoint, or a damaged base: nothing to replay.
        std::fs::write(&file, &whole).unwrap();
        assert!(restore(&index, &[1; 16], &dir.path().join("x")).is_err());
        let mut bad_base = whole.clone();
        bad_base[FILE_HEADER_LEN as usize + FRAME_HEADER_LEN + 30] ^= 1;
        std::fs::write(&file, &bad_base).unwrap();
        assert!(matches!(
            verify(&index, &STORE),
            Err(CheckpointError::Damaged(_))
        ));
    }

    /// The byte offset of frame `n` (0 = the base) in a checkpoint file.
    fn find_frame(file: &[u8], n: usize) -> usize {
        let mut at = FILE_HEADER_LEN as usize;
        for _ in 0..n {
            let h: [u8; FRAME_HEADER_LEN] = file[at..at + FRAME_HEADER_LEN].try_into().unwrap();
            at += FRAME_HEADER_LEN + FrameInfo::decode(&h).unwrap().body_len as usize + 4;
        }
        at
    }

    #[test]
    fn deltas_that_outgrow_half_the_base_start_a_new_base() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("index.redb");
        let mut w = CheckpointWriter::new(&index, STORE);
        let mut db = image(BLOCK * 8, 1);
        frame(&mut w, dir.path(), &db, 1, false);
        for seq in 2..8 {
            db = image(BLOCK * 8, seq as u8);
            frame(&mut w, dir.path(), &db, seq, false);
        }
        let (got, r) = restored(dir.path());
        assert!(got == db);
        assert!(
            r.frames.len() <= 2,
            "a new base came first: {}",
            r.frames.len()
        );
        // The byte copy of earlier builds goes with a new base.
        std::fs::write(legacy_path(&index), b"old").unwrap();
        frame(&mut w, dir.path(), &db, 9, true);
        assert!(!legacy_path(&index).exists());
    }
}
