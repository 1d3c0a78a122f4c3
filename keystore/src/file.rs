//! The on-disk keystore: `<store>/keystore/keystore.json` and its backup
//! copy `keystore.json.bak`. JSON, versioned, parsed defensively (unknown
//! fields refused, every hex field length-checked before use). Holds only
//! wrapped keys, salts, nonces and parameters: never a plain key.
//!
//! Invariant: every save writes the backup first and the main file second,
//! each atomically (temp file, fsync, rename, fsync dir), so at any crash
//! point at least one of the two is a complete, current-or-previous copy.
//! Every save also writes `checksum`, BLAKE3 of the file's content without
//! it: a copy whose checksum does not match is damaged and the other copy
//! is used. (Against accidental damage only: tampering with a wrapped key
//! is caught by its AES-GCM tag, and a checksum has no key.)

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::KeystoreError;
use crate::kdf::Kdf;
use crate::provider::FipsMode;

pub const FORMAT_NAME: &str = "datastore-keystore";
pub const FORMAT_VERSION: u32 = 1;
pub const FILE_NAME: &str = "keystore.json";
pub const BACKUP_NAME: &str = "keystore.json.bak";
const MAX_FILE: u64 = 1 << 20;
const MAX_SLOTS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartupMode {
    Locked,
    Unlocked,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotKind {
    Password,
    Recovery,
    Boot,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shipping {
    pub previous_startup: StartupMode,
    pub since: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    pub id: u32,
    pub kind: SlotKind,
    pub created: u64,
    /// None for the boot slot (its KEK is a random key in the boot-key file).
    pub kdf: Option<Kdf>,
    pub salt: String,
    pub nonce: String,
    pub wrapped: String,
}

/// While a conversion runs: what the data not converted yet is under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retiring {
    /// When the conversion began (unix seconds).
    pub since: u64,
    /// The retiring volume key, wrapped under the current one; None when
    /// the data was not encrypted at all.
    pub key: Option<RetiringKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiringKey {
    pub generation: u16,
    /// The FIPS mode the retiring key was used in (its records need that
    /// mode's algorithms to be read).
    pub fips_mode: FipsMode,
    pub nonce: String,
    pub wrapped: String,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeystoreFile {
    pub format: String,
    pub version: u32,
    pub store_id: String,
    pub fips_mode: FipsMode,
    pub startup: StartupMode,
    pub shipping: Option<Shipping>,
    pub next_slot_id: u32,
    pub slots: Vec<Slot>,
    /// Generation of the volume key the slots wrap (0 for a store's first
    /// key; each rotation or FIPS switch adds one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u16,
    /// Present only while a conversion to the current key runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring: Option<Retiring>,
    /// "blake3:" and the hex BLAKE3 of the compact JSON of this file with
    /// no checksum (absent in files written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

pub fn decode_hex(field: &str, v: &str, len: usize) -> Result<Vec<u8>, KeystoreError> {
    let b = hex::decode(v).map_err(|_| KeystoreError::Corrupt(format!("{field} is not hex")))?;
    if b.len() != len {
        return Err(KeystoreError::Corrupt(format!(
            "{field} has {} bytes, expected {len}",
            b.len()
        )));
    }
    Ok(b)
}

impl KeystoreFile {
    /// Structural checks beyond what serde enforces.
    pub fn validate(&self) -> Result<(), KeystoreError> {
        let bad = |w: String| Err(KeystoreError::Corrupt(w));
        if self.format != FORMAT_NAME {
            return bad(format!("not a keystore file (format {:?})", self.format));
        }
        if self.version != FORMAT_VERSION {
            return bad(format!(
                "keystore version {} is not supported (this build reads {FORMAT_VERSION})",
                self.version
            ));
        }
        if self.slots.is_empty() || self.slots.len() > MAX_SLOTS {
            return bad(format!("{} keyslots", self.slots.len()));
        }
        let mut ids = std::collections::HashSet::new();
        for s in &self.slots {
            if !ids.insert(s.id) || s.id >= self.next_slot_id {
                return bad(format!("slot id {} repeated or out of range", s.id));
            }
            match (s.kind, &s.kdf) {
                (SlotKind::Boot, None) => {}
                (SlotKind::Boot, Some(_)) | (_, None) => {
                    return bad(format!("slot {} has the wrong KDF shape", s.id))
                }
                (_, Some(k)) => k.validate()?,
            }
            decode_hex("salt", &s.salt, 16)?;
            decode_hex("nonce", &s.nonce, 12)?;
            decode_hex("wrapped", &s.wrapped, crate::volume::VOLUME_KEY_LEN + 16)?;
        }
        if let Some(RetiringKey {
            generation,
            nonce,
            wrapped,
            ..
        }) = self.retiring.as_ref().and_then(|r| r.key.as_ref())
        {
            if *generation >= self.generation {
                return bad(format!(
                    "retiring key generation {generation} is not older than the current {}",
                    self.generation
                ));
            }
            decode_hex("retiring nonce", nonce, 12)?;
            decode_hex("retiring key", wrapped, crate::volume::VOLUME_KEY_LEN + 16)?;
        }
        if !self.slots.iter().any(|s| s.kind != SlotKind::Boot) {
            return bad("no password or recovery slot".into());
        }
        Ok(())
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, KeystoreError> {
        let f: KeystoreFile = serde_json::from_slice(bytes)
            .map_err(|e| KeystoreError::Corrupt(format!("unreadable keystore: {e}")))?;
        if let Some(stored) = &f.checksum {
            if *stored != f.content_checksum()? {
                return Err(KeystoreError::Corrupt(
                    "checksum mismatch: the file is damaged".into(),
                ));
            }
        }
        f.validate()?;
        Ok(f)
    }

    /// The checksum of this content (see the module comment).
    fn content_checksum(&self) -> Result<String, KeystoreError> {
        let mut plain = self.clone();
        plain.checksum = None;
        let bytes = serde_json::to_vec(&plain)
            .map_err(|e| KeystoreError::Corrupt(format!("serialise: {e}")))?;
        Ok(format!("blake3:{}", blake3::hash(&bytes).to_hex()))
    }

    /// What is wrong with each copy on disk (empty: both parse and match
    /// their checksums). For scrub.
    pub fn check_copies(dir: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        for name in [FILE_NAME, BACKUP_NAME] {
            let p = dir.join(name);
            match std::fs::read(&p) {
                Err(e) => problems.push(format!("{}: {e}", p.display())),
                Ok(b) => {
                    if let Err(e) = Self::parse(&b) {
                        problems.push(format!("{}: {e}", p.display()));
                    }
                }
            }
        }
        problems
    }

    /// Loads the main file, falling back to the backup; says which it used.
    pub fn load(dir: &Path) -> Result<(Self, bool), KeystoreError> {
        let main = dir.join(FILE_NAME);
        let backup = dir.join(BACKUP_NAME);
        let read = |p: &Path| -> Result<Option<KeystoreFile>, KeystoreError> {
            match std::fs::metadata(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(KeystoreError::io(p, e)),
                Ok(m) if m.len() > MAX_FILE => {
                    return Err(KeystoreError::Corrupt(format!(
                        "{} is too large",
                        p.display()
                    )))
                }
                Ok(_) => {}
            }
            let b = std::fs::read(p).map_err(|e| KeystoreError::io(p, e))?;
            Self::parse(&b).map(Some)
        };
        match read(&main) {
            Ok(Some(f)) => Ok((f, false)),
            main_result => match read(&backup) {
                Ok(Some(f)) => Ok((f, true)),
                Ok(None) => match main_result {
                    Err(e) => Err(e),
                    _ => Err(KeystoreError::NotFound(dir.to_path_buf())),
                },
                Err(e) => Err(main_result.err().unwrap_or(e)),
            },
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), KeystoreError> {
        self.validate()?;
        let mut sealed = self.clone();
        sealed.checksum = Some(self.content_checksum()?);
        let bytes = serde_json::to_vec_pretty(&sealed)
            .map_err(|e| KeystoreError::Corrupt(format!("serialise: {e}")))?;
        write_atomic(&dir.join(BACKUP_NAME), &bytes)?;
        write_atomic(&dir.join(FILE_NAME), &bytes)
    }
}

/// Atomic replace with mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), KeystoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = path.with_extension("tmp");
    let io = |e| KeystoreError::io(path, e);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// Overwrites a file's bytes, fsyncs, unlinks it and fsyncs its directory.
pub fn destroy_file(path: &Path) -> Result<(), KeystoreError> {
    let io = |e| KeystoreError::io(path, e);
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
        Ok(m) => {
            let mut f = OpenOptions::new().write(true).open(path).map_err(io)?;
            f.write_all(&vec![0u8; m.len() as usize]).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
    }
    std::fs::remove_file(path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}
