//! `datastore status`: capacity, data reduction, lock state and encryption
//! summary, from a running daemon or, when none runs, from the store.

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, IndexSummary};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub mounted: bool,
    pub mountpoint: Option<String>,
    pub locked: bool,
    pub logical_bytes: u64,
    pub physical_bytes: u64,
    pub unique_bytes: u64,
    pub dedup_ratio: f64,
    pub compression_ratio: f64,
    pub total_reduction: f64,
    pub chunks: u64,
    pub segments: u64,
    pub encryption: String,
    /// The validated crypto module as this process brought it up.
    #[serde(default)]
    pub crypto_module: Option<keystore::ModuleStatus>,
    /// The module's services this process used, with the indicator's verdicts.
    #[serde(default)]
    pub crypto_services: Vec<keystore::provider::services::ServiceCount>,
    /// The bucket mirror (figures from the daemon when mounted).
    #[serde(default)]
    pub remote: Option<crate::remote::RemoteStatus>,
    /// A key conversion (encryption set / rotate-key): running in the
    /// daemon, or as recorded in the store when not mounted.
    #[serde(default)]
    pub conversion: Option<super::conversion::Progress>,
    /// Why the store stopped accepting changes (the failed write, e.g. a
    /// full disk): committed files stay readable; remount to resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_stopped: Option<String>,
    /// The intent log of synchronous writes.
    #[serde(default)]
    pub intent_log: IntentLogStatus,
}

/// Records and flushes since the mount (0 when not mounted), and the bytes
/// the log's files hold on disk now.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IntentLogStatus {
    pub records: u64,
    pub flushes: u64,
    pub bytes: u64,
}

fn intent_log_status(store: &std::path::Path) -> IntentLogStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = match crate::config::StoreConfig::load(store) {
        Ok(cfg) => cfg.intent_log_dir(store),
        Err(_) => crate::paths::intent_log_dir(store),
    };
    let bytes = crate::store::intent_log::list_files(&dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    IntentLogStatus {
        records: crate::metrics::INTENT_RECORDS.load(Relaxed),
        flushes: crate::metrics::INTENT_FLUSHES.load(Relaxed),
        bytes,
    }
}

pub fn collect(
    engine: &Engine,
    mountpoint: Option<String>,
    locked: bool,
) -> Result<Status, crate::engine::EngineError> {
    let s: IndexSummary = engine.index_summary()?;
    let encryption =
        encryption_summary(engine.store_dir()).unwrap_or_else(|e| format!("unknown ({e})"));
    Ok(Status {
        mounted: mountpoint.is_some(),
        mountpoint,
        locked,
        logical_bytes: s.logical_bytes,
        physical_bytes: s.physical_bytes,
        unique_bytes: s.unique_bytes,
        dedup_ratio: s.dedup_ratio(),
        compression_ratio: s.compression_ratio(),
        total_reduction: if s.physical_bytes == 0 {
            1.0
        } else {
            s.logical_bytes as f64 / s.physical_bytes as f64
        },
        chunks: s.live_chunks,
        segments: s.segments,
        encryption,
        crypto_module: keystore::gate::module_status().and_then(Result::ok),
        crypto_services: keystore::provider::services::snapshot(),
        remote: match engine.remote() {
            Some(r) => Some(r.status()),
            None => crate::config::StoreConfig::load(engine.store_dir())
                .ok()
                .and_then(|c| c.remote)
                .map(|c| crate::remote::RemoteStatus {
                    url: c.url,
                    endpoint: c.endpoint.unwrap_or_else(|| "AWS S3".into()),
                    ..Default::default()
                }),
        },
        conversion: super::conversion::recorded_progress(engine),
        writes_stopped: engine.stopped(),
        intent_log: intent_log_status(engine.store_dir()),
    })
}

/// One line for `status`: what protects the data.
pub fn encryption_summary(store: &std::path::Path) -> Result<String, super::keys::UnlockError> {
    let encrypted = crate::config::StoreConfig::load(store)?.engine.encrypted();
    if !super::keys::has_keystore(store) && !encrypted {
        return Ok("none (store not encrypted)".into());
    }
    let ks = keystore::Keystore::open(store, &crate::paths::boot_key_dir())?;
    let info = ks.info();
    Ok(format!(
        "AES-XTS-256; FIPS mode {:?}; startup {:?}; shipping mode {}",
        info.fips_mode,
        info.startup,
        if info.shipping_mode { "on" } else { "off" }
    )
    .to_lowercase())
}
