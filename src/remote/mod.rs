//! The remote mirror: a store's encrypted chunk records and metadata kept in
//! an S3-compatible bucket (AWS S3, MinIO, Garage, Ceph RGW, s3s-fs...)
//! through the `object_store` crate, so the bucket alone restores the store
//! (`datastore attach`).
//!
//! Bucket layout under the configured prefix (object names carry no file
//! names, sizes or fingerprints):
//! - `keystore`: the keystore file (wrapped key slots only, as on disk).
//! - `config`, `head`, `ckpt/<seq>`, `jrnl/<seq>`: sealed blobs (see `blob`)
//!   of the store config, of the newest metadata object and its base, of
//!   metadata checkpoints (the whole metadata database, which also lists
//!   the packs) and of journal entries (changed blocks; see `journal`).
//! - `packs/<32 hex, random>`: a byte range of one local segment file, i.e.
//!   whole encrypted chunk records as the local store holds them.
//!
//! Credentials come from the usual AWS environment variables
//! (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, ...) or,
//! when those are unset, the shared credentials file (AWS_SHARED_CREDENTIALS_FILE
//! or ~/.aws/credentials, profile AWS_PROFILE or `default`); the store
//! directory holds only the bucket URL, endpoint and region.
//!
//! Invariant (see `sync`): `head` names a checkpoint only after every pack
//! that checkpoint lists is in the bucket, and a pack is deleted only after a
//! checkpoint that no longer lists it is the head.

pub mod blob;
pub mod cache;
pub mod journal;
pub mod sync;

use crate::poison::Recover;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keystore::{GcmKey, KeystoreError, LockedBox, Provider};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStoreExt, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};

pub use crate::config::RemoteConfig;

/// What the mirror needs of the local store it mirrors (the engine
/// implements it, so the mirror does not depend on the engine): the index,
/// where segment files are, which one is being appended to, reading one,
/// and dropping a cached read handle before a file goes.
pub trait LocalStore {
    fn meta(&self) -> &crate::meta::Meta;
    fn store_dir(&self) -> &std::path::Path;
    fn segments_dir(&self) -> &std::path::Path;
    fn active_segment(&self) -> u64;
    fn forget_reader(&self, id: u64);
    /// A segment's read handle.
    fn segment_file(&self, id: u64) -> std::io::Result<std::sync::Arc<std::fs::File>>;
    /// Bytes the local segment files take.
    fn local_segment_bytes(&self) -> std::io::Result<u64>;
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote {op} of {object} at {endpoint} failed: {cause}")]
    Io {
        op: &'static str,
        object: String,
        endpoint: String,
        cause: String,
    },
    #[error("remote: {0}")]
    Config(String),
    #[error("remote: {0}")]
    Url(#[from] crate::config::RemoteUrlError),
    #[error("remote: the store is locked (the mirror key is not loaded)")]
    Locked,
    #[error(transparent)]
    Key(#[from] KeystoreError),
    #[error("remote: local store: {0}")]
    Local(String),
}

/// Figures `status` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RemoteStatus {
    pub url: String,
    pub endpoint: String,
    /// Bytes of committed local records not yet in the bucket.
    pub backlog_bytes: u64,
    pub uploaded_bytes: u64,
    pub checkpoint: u64,
    /// Local segment bytes and the configured limit (None: unlimited).
    pub cached_bytes: u64,
    pub cache_limit: Option<u64>,
    pub max_backlog: Option<u64>,
    pub fetched_bytes: u64,
    pub evicted_bytes: u64,
    pub last_error: Option<String>,
}

/// A mirror sealing key: the provider it runs through and the key.
pub type MirrorKey = (Provider, Arc<LockedBox<GcmKey>>);

struct MirrorKeys {
    current: MirrorKey,
    retiring: Option<MirrorKey>,
}

pub struct Remote {
    cfg: RemoteConfig,
    prefix: String,
    s3: AmazonS3,
    rt: tokio::runtime::Runtime,
    keys: Mutex<Option<MirrorKeys>>,
    /// The next upload starts a new chain with a full checkpoint (the
    /// sealing key changed); read and cleared under the `keys` lock.
    new_chain: std::sync::atomic::AtomicBool,
    backlog: AtomicU64,
    uploaded: AtomicU64,
    last_error: Mutex<Option<String>>,
    checkpoint: AtomicU64,
    last_read: Mutex<std::collections::HashMap<u64, std::time::Instant>>,
    shipped: Mutex<Option<journal::Shipped>>,
    fetching: Mutex<()>,
    cached: AtomicU64,
    fetched: AtomicU64,
    evicted: AtomicU64,
}

/// Keys from an AWS shared credentials file (secrets zeroized on drop).
struct SharedCredentials {
    key_id: String,
    secret: zeroize::Zeroizing<String>,
    token: Option<zeroize::Zeroizing<String>>,
}

/// The profile's keys from AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials.
fn shared_credentials() -> Option<SharedCredentials> {
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials"))
        })?;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).ok()?);
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    parse_credentials(&text, &profile)
}

/// The `[profile]` section's aws_access_key_id / aws_secret_access_key /
/// aws_session_token of an INI credentials file.
fn parse_credentials(text: &str, profile: &str) -> Option<SharedCredentials> {
    let mut in_profile = false;
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
        } else if let (true, Some((k, v))) = (in_profile, line.split_once('=')) {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key_id = Some(v),
                "aws_secret_access_key" => secret = Some(zeroize::Zeroizing::new(v)),
                "aws_session_token" => token = Some(zeroize::Zeroizing::new(v)),
                _ => {}
            }
        }
    }
    Some(SharedCredentials {
        key_id: key_id?,
        secret: secret?,
        token,
    })
}

/// Label of the mirror key derived from the metadata key.
const MIRROR_LABEL: &[u8] = b"datastore remote mirror v1";
/// Uploads in flight at once.
pub const PARALLEL_UPLOADS: usize = 4;

impl Remote {
    /// A client for `cfg` (no request is made yet).
    pub fn connect(cfg: &RemoteConfig) -> Result<Remote, RemoteError> {
        let (bucket, prefix) = cfg.bucket_and_prefix()?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(Duration::from_secs(60))
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_allow_http(
                        cfg.endpoint
                            .as_deref()
                            .is_some_and(|e| e.starts_with("http://")),
                    ),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
                ..RetryConfig::default()
            });
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            if let Some(c) = shared_credentials() {
                b = b
                    .with_access_key_id(c.key_id)
                    .with_secret_access_key(c.secret.as_str());
                if let Some(t) = &c.token {
                    b = b.with_token(t.as_str());
                }
            }
        }
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
        }
        if let Some(r) = &cfg.region {
            b = b.with_region(r);
        }
        let s3 = b
            .build()
            .map_err(|e| RemoteError::Config(format!("{}: {e}", cfg.url)))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("remote")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Local(format!("start the remote I/O runtime: {e}")))?;
        Ok(Remote {
            cfg: cfg.clone(),
            prefix,
            s3,
            rt,
            keys: Mutex::new(None),
            new_chain: std::sync::atomic::AtomicBool::new(false),
            backlog: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            last_error: Mutex::new(None),
            checkpoint: AtomicU64::new(0),
            last_read: Mutex::new(Default::default()),
            shipped: Mutex::new(None),
            fetching: Mutex::new(()),
            cached: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &RemoteConfig {
        &self.cfg
    }

    /// The mirror key of a metadata key: AES-256-GCM under a KBKDF of it,
    /// through `provider`.
    pub fn derive_key(
        provider: Provider,
        metadata_key: &[u8; 32],
    ) -> Result<MirrorKey, RemoteError> {
        let key = LockedBox::try_new_with(|| {
            let mut k = provider.kbkdf_hmac_sha256(metadata_key, MIRROR_LABEL)?;
            let gcm = provider.aes256_gcm(&k);
            zeroize::Zeroize::zeroize(&mut k);
            gcm
        })?;
        Ok((provider, Arc::new(key)))
    }

    /// Loads the mirror keys after unlock: the current one seals, and while
    /// a key conversion runs the retiring one still opens what was sealed
    /// before it began.
    pub fn set_keys(&self, current: MirrorKey, retiring: Option<MirrorKey>) {
        *self.keys.locked() = Some(MirrorKeys { current, retiring });
    }

    /// Switches sealing to a new key (a conversion began): the next upload
    /// is a full checkpoint under it, and the chain sealed under the old
    /// key is deleted once the new head is in place.
    pub fn rekey(&self, current: MirrorKey, retiring: Option<MirrorKey>) {
        let mut k = self.keys.locked();
        *k = Some(MirrorKeys { current, retiring });
        self.new_chain.store(true, Ordering::SeqCst);
    }

    /// Makes the next upload a full checkpoint that replaces the current
    /// chain (a conversion ends: no journal entry of the old values stays).
    pub fn start_new_chain(&self) {
        let _k = self.keys.locked();
        self.new_chain.store(true, Ordering::SeqCst);
    }

    /// Drops the retiring key (the conversion is done and the bucket holds
    /// nothing sealed under it).
    pub fn forget_retiring_key(&self) {
        if let Some(k) = self.keys.locked().as_mut() {
            k.retiring = None;
        }
    }

    /// Drops the mirror keys (lock).
    pub fn clear_key(&self) {
        *self.keys.locked() = None;
    }

    /// The sealing key, and whether this upload must start a new chain
    /// (the flag is taken: give it back with `retry_new_chain` on failure).
    fn sealing_key(&self) -> Result<(MirrorKey, bool), RemoteError> {
        let k = self.keys.locked();
        let current = k.as_ref().ok_or(RemoteError::Locked)?.current.clone();
        Ok((current, self.new_chain.swap(false, Ordering::SeqCst)))
    }

    fn retry_new_chain(&self) {
        self.new_chain.store(true, Ordering::SeqCst);
    }

    /// Opens a sealed blob with the current key, or failing that with the
    /// retiring one.
    fn open_blob(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, RemoteError> {
        let (current, retiring) = {
            let k = self.keys.locked();
            let k = k.as_ref().ok_or(RemoteError::Locked)?;
            (k.current.clone(), k.retiring.clone())
        };
        match blob::open(&current.1, name, sealed) {
            Ok(p) => Ok(p),
            Err(first) => match retiring {
                Some(old) => blob::open(&old.1, name, sealed).map_err(|_| first.into()),
                None => Err(first.into()),
            },
        }
    }

    fn path(&self, rel: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn err(&self, op: &'static str, rel: &str, e: impl std::fmt::Display) -> RemoteError {
        RemoteError::Io {
            op,
            object: format!("{}/{rel}", self.cfg.url.trim_end_matches('/')),
            endpoint: self.cfg.endpoint_name(),
            cause: e.to_string(),
        }
    }

    pub fn put(&self, rel: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        let path = self.path(rel);
        self.rt
            .block_on(self.s3.put(&path, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.err("PUT", rel, e))
    }

    /// Uploads several objects, at most PARALLEL_UPLOADS at a time.
    pub fn put_many(&self, objects: Vec<(String, Vec<u8>)>) -> Result<(), RemoteError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let s3 = &self.s3;
        let work = stream::iter(objects.into_iter().map(|(rel, bytes)| {
            let path = self.path(&rel);
            async move {
                s3.put(&path, PutPayload::from(bytes))
                    .await
                    .map(|_| ())
                    .map_err(|e| self.err("PUT", &rel, e))
            }
        }))
        .buffer_unordered(PARALLEL_UPLOADS)
        .try_collect::<Vec<()>>();
        self.rt.block_on(work).map(|_| ())
    }

    /// Downloads several objects (all must exist), PARALLEL_UPLOADS at a
    /// time, in the order asked.
    pub fn get_many(&self, names: &[String]) -> Result<Vec<Vec<u8>>, RemoteError> {
        use futures::stream::{self, StreamExt, TryStreamExt};
        let s3 = &self.s3;
        let work = stream::iter(names.iter().map(|rel| {
            let path = self.path(rel);
            async move {
                let r = s3.get(&path).await.map_err(|e| self.err("GET", rel, e))?;
                let b = r.bytes().await.map_err(|e| self.err("GET", rel, e))?;
                Ok::<_, RemoteError>(b.to_vec())
            }
        }))
        .buffered(PARALLEL_UPLOADS)
        .try_collect::<Vec<Vec<u8>>>();
        self.rt.block_on(work)
    }

    /// The object's bytes; Ok(None) when it does not exist.
    pub fn get(&self, rel: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let path = self.path(rel);
        let r = self.rt.block_on(async {
            match self.s3.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        r.map(|b| b.map(|b| b.to_vec()))
            .map_err(|e| self.err("GET", rel, e))
    }

    pub fn delete(&self, rel: &str) -> Result<(), RemoteError> {
        let path = self.path(rel);
        self.rt
            .block_on(self.s3.delete(&path))
            .map_err(|e| self.err("DELETE", rel, e))
    }

    /// Names (relative to the prefix) of the objects under `rel_dir`.
    pub fn list(&self, rel_dir: &str) -> Result<Vec<String>, RemoteError> {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let dir = self.path(rel_dir);
        let metas: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.s3.list(Some(&dir)).try_collect())
            .map_err(|e| self.err("LIST", rel_dir, e))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        Ok(metas
            .into_iter()
            .map(|m| {
                let s = m.location.to_string();
                s.strip_prefix(&strip).unwrap_or(&s).to_string()
            })
            .collect())
    }

    /// The mirror's write policy: whether a write may be accepted now
    /// (not while the bucket is behind by `max_backlog`; the writer gets
    /// ENOSPC until an upload catches up).
    pub fn admit_write(&self) -> bool {
        !self.backlog_full()
    }

    /// The mirror's upload policy, checked at every group commit: measures
    /// the backlog when a limit is set, and says whether an upload should
    /// run now: local segments outgrow the cache (only what is in the
    /// bucket can be evicted), or writes are held back by the backlog limit
    /// (then every half second while the bucket is away, so it drains as
    /// soon as it returns).
    pub fn upload_due(&self, engine: &dyn LocalStore) -> bool {
        if self.cfg.max_backlog.is_some() {
            if let Err(e) = self.measure_backlog(engine) {
                crate::log_line!("datastore: cannot measure the bucket backlog: {e}");
            }
        }
        let over_cache = self
            .cfg
            .cache_bytes
            .is_some_and(|limit| engine.local_segment_bytes().is_ok_and(|b| b > limit));
        over_cache || self.backlog_full()
    }

    /// Whether writes must wait for the bucket (see `max_backlog`).
    pub fn backlog_full(&self) -> bool {
        self.cfg
            .max_backlog
            .is_some_and(|m| self.backlog.load(Ordering::Relaxed) >= m)
    }

    /// Committed bytes not yet in the bucket, measured now.
    pub fn measure_backlog(&self, engine: &dyn LocalStore) -> Result<u64, RemoteError> {
        let local = |e: crate::meta::MetaError| RemoteError::Local(e.to_string());
        let mut uploaded: std::collections::HashMap<u64, u64> = Default::default();
        for p in engine.meta().remote_packs().map_err(local)? {
            let e = uploaded.entry(p.segment).or_default();
            *e = (*e).max(p.end);
        }
        let backlog = engine
            .meta()
            .segments()
            .map_err(local)?
            .into_iter()
            .map(|(id, c, _)| c.saturating_sub(uploaded.get(&id).copied().unwrap_or(0)))
            .sum();
        self.backlog.store(backlog, Ordering::Relaxed);
        Ok(backlog)
    }

    pub fn status(&self) -> RemoteStatus {
        RemoteStatus {
            url: self.cfg.url.clone(),
            endpoint: self.cfg.endpoint_name(),
            backlog_bytes: self.backlog.load(Ordering::Relaxed),
            uploaded_bytes: self.uploaded.load(Ordering::Relaxed),
            cached_bytes: self.cached.load(Ordering::Relaxed),
            cache_limit: self.cfg.cache_bytes,
            max_backlog: self.cfg.max_backlog,
            fetched_bytes: self.fetched.load(Ordering::Relaxed),
            evicted_bytes: self.evicted.load(Ordering::Relaxed),
            checkpoint: self.checkpoint.load(Ordering::Relaxed),
            last_error: self.last_error.locked().clone(),
        }
    }

    fn note_result<T>(&self, r: Result<T, RemoteError>) -> Result<T, RemoteError> {
        let mut last = self.last_error.locked();
        match &r {
            Ok(_) => *last = None,
            Err(e) => *last = Some(e.to_string()),
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_of_a_shared_credentials_file_is_read() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n[ops]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=E\n";
        let d = parse_credentials(text, "default").unwrap();
        assert_eq!((d.key_id.as_str(), d.secret.as_str()), ("A", "B"));
        assert!(d.token.is_none());
        let o = parse_credentials(text, "ops").unwrap();
        assert_eq!(o.token.as_deref().map(String::as_str), Some("E"));
        assert!(parse_credentials(text, "missing").is_none());
    }

    #[test]
    fn remote_urls_name_a_bucket() {
        let cfg = |url: &str| RemoteConfig {
            url: url.into(),
            endpoint: None,
            region: None,
            cache_bytes: None,
            max_backlog: None,
        };
        assert_eq!(
            cfg("s3://b/p/q/").bucket_and_prefix().unwrap(),
            ("b".to_string(), "p/q".to_string())
        );
        assert!(cfg("http://b/p").bucket_and_prefix().is_err());
        assert!(cfg("s3:///p").bucket_and_prefix().is_err());
    }
}
