//! The daemon's web endpoints (`mount --http ADDR`): the dashboard page,
//! its data as JSON (`/api/status`), and Prometheus metrics (`/metrics`).
//! Every request must carry the token (`Authorization: Bearer TOKEN` or
//! `?token=TOKEN`): `--http-token-file`, or by default `<store>/http-token`,
//! readable by root only. A non-loopback address needs `--http-token-file`. Nothing
//! served names a file, a key or a password; the page loads nothing from
//! the internet.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use super::Shared;
use crate::metrics;
use crate::session::status::Status;

const PAGE: &str = include_str!("dashboard.html");

/// Where to listen and the token non-loopback listeners require.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub addr: SocketAddr,
    pub token: Option<zeroize::Zeroizing<String>>,
}

/// Why the web endpoints could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("--http {0} is not a loopback address: give --http-token-file too")]
    NoToken(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot start the http thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Status(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Key(#[from] keystore::KeystoreError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl HttpOptions {
    /// Refuses a non-loopback address without a token.
    pub fn new(
        addr: SocketAddr,
        token: Option<zeroize::Zeroizing<String>>,
    ) -> Result<Self, HttpError> {
        if !addr.ip().is_loopback() && token.is_none() {
            return Err(HttpError::NoToken(addr));
        }
        Ok(HttpOptions { addr, token })
    }
}

#[derive(Serialize)]
struct Shield {
    /// green, amber, red or grey.
    state: &'static str,
    label: String,
}

#[derive(Serialize)]
struct ApiStatus {
    #[serde(flatten)]
    status: Status,
    shield: Shield,
    fips_mode: String,
    startup_mode: String,
    shipping_mode: bool,
    free_bytes: u64,
    read_bytes: u64,
    write_bytes: u64,
    history: Vec<metrics::Sample>,
    /// Background jobs (conversion, gc, scrub) running now.
    jobs: Vec<String>,
}

/// What the keystore says about the store's keys (None: not encrypted).
struct KeyState {
    validated: bool,
    converting_from: Option<String>,
}

fn shield(st: &Status, keys: Option<&KeyState>) -> Shield {
    let module = st.crypto_module.as_ref();
    let Some(keys) = keys else {
        return Shield {
            state: "red",
            label: "Not encrypted: file data and metadata are stored in the clear".into(),
        };
    };
    if st.locked {
        return Shield {
            state: "grey",
            label: "Locked: no key is loaded".into(),
        };
    }
    if let Some(from) = &keys.converting_from {
        return Shield {
            state: "amber",
            label: format!("Converting from {from}: not all data is under the new key yet"),
        };
    }
    match (keys.validated, module) {
        (true, Some(m)) if m.fips_mode && m.power_on_self_tests && m.known_answer_tests.passed => {
            Shield {
                state: "green",
                label: format!(
                    "Encrypted, FIPS validated ({}), self-tests passed, unlocked",
                    m.name
                ),
            }
        }
        (true, _) => Shield {
            state: "red",
            label: "FIPS mode validated but the module check failed".into(),
        },
        (false, _) => Shield {
            state: "amber",
            label: "Encrypted (AES-XTS-256), FIPS mode disabled".into(),
        },
    }
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    crate::fsutil::statvfs(dir).map_or(0, |s| s.f_bavail * s.f_frsize)
}

fn api_status(shared: &Shared) -> Result<ApiStatus, HttpError> {
    let status = shared.status()?;
    let info = if crate::session::keys::has_keystore(&shared.store) {
        let ks = keystore::Keystore::open(&shared.store, &crate::paths::boot_key_dir())?;
        Some(ks.info())
    } else {
        None
    };
    let keys = info.as_ref().map(|i| KeyState {
        validated: i.fips_mode == keystore::FipsMode::Validated,
        converting_from: i.converting_from.clone(),
    });
    let jobs = status
        .conversion
        .iter()
        .filter(|p| p.state == "converting" || p.state == "finishing")
        .map(|p| format!("key conversion: {}", p.line()))
        .collect();
    Ok(ApiStatus {
        shield: shield(&status, keys.as_ref()),
        fips_mode: info.as_ref().map_or("none (not encrypted)".into(), |i| {
            format!("{:?}", i.fips_mode).to_lowercase()
        }),
        startup_mode: info.as_ref().map_or("unlocked (no key)".into(), |i| {
            format!("{:?}", i.startup).to_lowercase()
        }),
        shipping_mode: info.as_ref().is_some_and(|i| i.shipping_mode),
        status,
        free_bytes: free_bytes(&shared.store),
        read_bytes: metrics::READ_BYTES.load(std::sync::atomic::Ordering::Relaxed),
        write_bytes: metrics::WRITE_BYTES.load(std::sync::atomic::Ordering::Relaxed),
        history: metrics::history(),
        jobs,
    })
}

fn metrics_text(shared: &Shared) -> Result<String, HttpError> {
    let a = api_status(shared)?;
    let s = &a.status;
    let mut out = String::new();
    let gauges: [(&str, &str, f64); 10] = [
        (
            "datastore_logical_bytes",
            "Bytes of file data stored (before dedup and compression).",
            s.logical_bytes as f64,
        ),
        (
            "datastore_physical_bytes",
            "Bytes of chunk records on disk.",
            s.physical_bytes as f64,
        ),
        (
            "datastore_free_bytes",
            "Free bytes on the store's file system.",
            a.free_bytes as f64,
        ),
        ("datastore_chunks", "Unique chunks stored.", s.chunks as f64),
        (
            "datastore_dedup_ratio",
            "Logical bytes / unique bytes.",
            s.dedup_ratio,
        ),
        (
            "datastore_compression_ratio",
            "Unique bytes / stored payload bytes.",
            s.compression_ratio,
        ),
        (
            "datastore_locked",
            "1 while no key is loaded.",
            f64::from(u8::from(s.locked)),
        ),
        (
            "datastore_writes_stopped",
            "1 after a failed write (e.g. a full disk) until the store is remounted.",
            f64::from(u8::from(s.writes_stopped.is_some())),
        ),
        (
            "datastore_fips_validated",
            "1 when FIPS mode is validated and the module came up.",
            f64::from(u8::from(a.shield.state == "green")),
        ),
        (
            "datastore_remote_backlog_bytes",
            "Committed bytes not yet in the bucket mirror.",
            s.remote.as_ref().map_or(0.0, |r| r.backlog_bytes as f64),
        ),
    ];
    for (name, help, v) in gauges {
        metrics::write_metric(&mut out, name, "gauge", help, v);
    }
    let stats = shared.engine.stats.snapshot();
    metrics::write_metric(
        &mut out,
        "datastore_dedup_hits_total",
        "counter",
        "Chunks written that were already stored.",
        stats.chunks_in.saturating_sub(stats.chunks_new),
    );
    metrics::render_io(&mut out);
    Ok(out)
}

fn authorized(req: &tiny_http::Request, token: &Option<zeroize::Zeroizing<String>>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let bearer = format!("Bearer {}", token.as_str());
    let header_ok = req
        .headers()
        .iter()
        .any(|h| h.field.equiv("Authorization") && h.value.as_str() == bearer);
    let query_ok = req.url().split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|kv| kv == format!("token={}", token.as_str()))
    });
    header_ok || query_ok
}

fn respond(req: tiny_http::Request, code: u16, kind: &str, body: String) {
    let header = tiny_http::Header::from_bytes("Content-Type", kind).expect("valid header");
    let resp = tiny_http::Response::from_string(body)
        .with_status_code(code)
        .with_header(header);
    let _ = req.respond(resp);
}

/// Serves until the daemon shuts down (the thread dies with the process).
pub fn start(shared: Arc<Shared>, opts: HttpOptions) -> Result<(), HttpError> {
    let server = tiny_http::Server::http(opts.addr).map_err(|source| HttpError::Listen {
        addr: opts.addr,
        source,
    })?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                if !authorized(&req, &opts.token) {
                    respond(req, 401, "text/plain", "token required\n".into());
                    continue;
                }
                let path = req.url().split('?').next().unwrap_or("/").to_string();
                match path.as_str() {
                    "/" => respond(req, 200, "text/html; charset=utf-8", PAGE.into()),
                    "/api/status" => {
                        match api_status(&shared).and_then(|a| Ok(serde_json::to_string(&a)?)) {
                            Ok(j) => respond(req, 200, "application/json", j),
                            Err(e) => respond(req, 500, "text/plain", format!("{e}\n")),
                        }
                    }
                    "/metrics" => match metrics_text(&shared) {
                        Ok(t) => respond(req, 200, "text/plain; version=0.0.4", t),
                        Err(e) => respond(req, 500, "text/plain", format!("{e}\n")),
                    },
                    _ => respond(req, 404, "text/plain", "not found\n".into()),
                }
            }
        })
        .map_err(HttpError::Thread)?;
    Ok(())
}
