//! `<store>/datastore.toml`: format version, store id and the parameters
//! every reader of the store must agree on, and where its bucket mirror
//! lives. Holds no secrets.
//!
//! Invariant: written atomically (temp file, fsync, rename, fsync dir); a
//! file with an unknown format version is refused, never guessed at. A
//! store is moved to the current version before anything only the current
//! version can read is written to it (`upgrade_format`), so an older build
//! refuses it rather than misreading it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crypto::FingerprintAlg;

pub const CONFIG_FILE: &str = "datastore.toml";
/// 2: inode rows may hold their file's extents; 3: and their directory's
/// entries (docs/FORMAT.md).
pub const FORMAT_VERSION: u32 = 4;
/// The oldest format this build reads (and upgrades when it writes).
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// LZ4 effort bounds: 0 = fast mode, 1..=12 = LZ4 HC levels.
pub const MAX_COMPRESSION_LEVEL: u8 = 12;
/// The level a new store gets (LZ4 HC 1: the measured choice, see
/// engine/compress.rs).
pub const DEFAULT_COMPRESSION_LEVEL: u8 = 1;

/// Why `datastore.toml` could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is malformed: {message}", path.display())]
    Malformed { path: PathBuf, message: String },
    #[error("{} has format version {found}, this build reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("{}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: InvalidEngineConfig,
    },
}

/// Engine parameters no reader of the store could agree on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEngineConfig {
    #[error("chunk sizes must satisfy 64 <= min <= avg <= max <= 16 MiB")]
    ChunkSizes,
    #[error(
        "compression_level must be between 0 (LZ4 fast) and {MAX_COMPRESSION_LEVEL} (LZ4 HC max)"
    )]
    CompressionLevel,
    #[error("segment_size must be between 1 MiB and 4 GiB")]
    SegmentSize,
    #[error("an encrypted store needs keyed fingerprints")]
    UnkeyedFingerprints,
    #[error("an unencrypted store fingerprints with plain blake3")]
    KeyedWithoutCipher,
    #[error("unknown cipher {0:?}")]
    UnknownCipher(String),
}

/// A remote URL that names no bucket.
#[derive(Debug, thiserror::Error)]
pub enum RemoteUrlError {
    #[error("remote {0:?} is not an s3://BUCKET/PREFIX URL")]
    NotS3(String),
    #[error("remote {0:?} names no bucket")]
    NoBucket(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// FastCDC v2020 minimum / average / maximum chunk size in bytes.
    pub chunk_min: u32,
    pub chunk_avg: u32,
    pub chunk_max: u32,
    /// A segment is sealed once it would grow past this many bytes.
    pub segment_size: u64,
    pub fingerprint: FingerprintAlg,
    /// Record payload cipher: "aes-xts-256", or "none" for a store made
    /// with `init --no-encryption` (no keystore; metadata not sealed either).
    pub cipher: String,
    /// LZ4 effort: 0 = fast mode, 1..=12 = high-compression levels (see
    /// engine/compress.rs). Same block format at every level, so this only
    /// affects new records. Written to datastore.toml only when not the
    /// default, which keeps such files readable by builds that predate it.
    #[serde(
        default = "default_compression_level",
        skip_serializing_if = "is_default_compression_level"
    )]
    pub compression_level: u8,
}

fn default_compression_level() -> u8 {
    DEFAULT_COMPRESSION_LEVEL
}

fn is_default_compression_level(level: &u8) -> bool {
    *level == default_compression_level()
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            chunk_min: 16 * 1024,
            chunk_avg: 64 * 1024,
            chunk_max: 256 * 1024,
            segment_size: 32 << 20,
            fingerprint: FingerprintAlg::Blake3Keyed,
            cipher: "aes-xts-256".into(),
            compression_level: default_compression_level(),
        }
    }
}

impl EngineConfig {
    pub fn validate(&self) -> Result<(), InvalidEngineConfig> {
        let ok = fastcdc::v2020::MINIMUM_MIN <= self.chunk_min
            && self.chunk_min <= self.chunk_avg
            && self.chunk_avg <= self.chunk_max
            && self.chunk_max <= fastcdc::v2020::MAXIMUM_MAX
            && self.chunk_max <= crate::store::record::MAX_PLAIN;
        if !ok {
            return Err(InvalidEngineConfig::ChunkSizes);
        }
        if self.compression_level > MAX_COMPRESSION_LEVEL {
            return Err(InvalidEngineConfig::CompressionLevel);
        }
        if self.segment_size < (1 << 20) || self.segment_size > (1 << 32) {
            return Err(InvalidEngineConfig::SegmentSize);
        }
        match (self.cipher.as_str(), self.fingerprint) {
            ("aes-xts-256", FingerprintAlg::Blake3) => {
                Err(InvalidEngineConfig::UnkeyedFingerprints)
            }
            ("none", f) if f != FingerprintAlg::Blake3 => {
                Err(InvalidEngineConfig::KeyedWithoutCipher)
            }
            ("aes-xts-256" | "none", _) => Ok(()),
            (other, _) => Err(InvalidEngineConfig::UnknownCipher(other.to_string())),
        }
    }

    /// Whether records and metadata are encrypted (false only for stores
    /// made with `init --no-encryption` and not converted yet).
    pub fn encrypted(&self) -> bool {
        self.cipher != "none"
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub format_version: u32,
    pub store_id: String,
    pub engine: EngineConfig,
    /// The bucket this store mirrors to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteConfig>,
    /// The intent log's directory when it is not `<store>/intent` (another
    /// device, like a ZFS SLOG: `init --log-dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<PathBuf>,
}

impl StoreConfig {
    pub fn new(store_id: String, engine: EngineConfig) -> Self {
        StoreConfig {
            format_version: FORMAT_VERSION,
            store_id,
            engine,
            remote: None,
            log_dir: None,
        }
    }

    /// The store id as 16 bytes (its 32 hex digits; a malformed id, which
    /// `init` never writes, is hashed to 16 bytes instead).
    /// Where the store's intent log lives.
    pub fn intent_log_dir(&self, store: &Path) -> PathBuf {
        self.log_dir
            .clone()
            .unwrap_or_else(|| crate::paths::intent_log_dir(store))
    }

    pub fn id_bytes(&self) -> [u8; 16] {
        match hex::decode(&self.store_id)
            .ok()
            .and_then(|b| b.try_into().ok())
        {
            Some(b) => b,
            None => blake3::hash(self.store_id.as_bytes()).as_bytes()[..16]
                .try_into()
                .expect("16 bytes"),
        }
    }

    pub fn load(store: &Path) -> Result<Self, ConfigError> {
        let path = store.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let cfg: StoreConfig = match toml::from_str(&text) {
            Ok(cfg) => cfg,
            Err(e) => {
                let message = e.message().to_string();
                return Err(ConfigError::Malformed { path, message });
            }
        };
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&cfg.format_version) {
            let found = cfg.format_version;
            return Err(ConfigError::Version { path, found });
        }
        if let Err(source) = cfg.engine.validate() {
            return Err(ConfigError::Invalid { path, source });
        }
        Ok(cfg)
    }

    /// Moves an older store's format version to the current one (nothing
    /// else changes: this build reads both forms side by side).
    pub fn upgrade_format(store: &Path) -> Result<(), ConfigError> {
        let mut cfg = Self::load(store)?;
        if cfg.format_version < FORMAT_VERSION {
            cfg.format_version = FORMAT_VERSION;
            cfg.save(store).map_err(|source| ConfigError::Write {
                path: store.join(CONFIG_FILE),
                source,
            })?;
        }
        Ok(())
    }

    pub fn save(&self, store: &Path) -> std::io::Result<()> {
        let text = toml::to_string_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&store.join(CONFIG_FILE), text.as_bytes())
    }
}

/// Where the mirror lives (kept in datastore.toml; no credentials).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// `s3://BUCKET/PREFIX`.
    pub url: String,
    /// Endpoint URL for S3-compatible servers (None: AWS).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Local cache size in bytes (None: keep everything locally).
    #[serde(default)]
    pub cache_bytes: Option<u64>,
    /// Most committed bytes not yet in the bucket before writes are refused
    /// (ENOSPC) while it is unreachable (None: the local disk is the limit).
    #[serde(default)]
    pub max_backlog: Option<u64>,
}

impl RemoteConfig {
    /// (bucket, prefix) of the URL, or a one-line error.
    pub fn bucket_and_prefix(&self) -> Result<(String, String), RemoteUrlError> {
        let rest = self
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| RemoteUrlError::NotS3(self.url.clone()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(RemoteUrlError::NoBucket(self.url.clone()));
        }
        Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
    }

    pub(crate) fn endpoint_name(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| "AWS S3".into())
    }
}
