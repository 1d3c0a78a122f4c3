//! The control socket's server: binds it (root-only), reads one request
//! per connection (`protocol`) and answers it. Unlock, lock, conversion
//! and shutdown are carried out here; import and scrub run on threads of
//! their own.

use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{set_owner_only, DaemonError, Shared, SOCKET};
use crate::exit::{Exit, Failure};
use crate::poison::RecoverRw;
use crate::session::keys;
use crate::session::protocol::{self, Request};

/// The pause after a refused unlock.
const FAILED_UNLOCK_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds the socket (replacing a stale one) and serves it on a thread.
pub fn start(shared: Arc<Shared>) -> Result<PathBuf, DaemonError> {
    let path = shared.store.join(SOCKET);
    if UnixStream::connect(&path).is_ok() {
        return Err(DaemonError::Usage(format!(
            "a daemon already answers on {}",
            path.display()
        )));
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| DaemonError::Io {
        what: format!("bind {}", path.display()),
        source,
    })?;
    set_owner_only(&path).map_err(|source| DaemonError::Io {
        what: "chmod control socket".into(),
        source,
    })?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if let Err(e) = handle(&shared, conn) {
                crate::log_line!("datastore: control request failed: {e}");
            }
        }
    });
    Ok(path)
}

fn answer(stream: &mut UnixStream, r: Result<String, Failure>) -> std::io::Result<()> {
    stream.write_all(protocol::encode_reply(&r).as_bytes())
}

fn handle(shared: &Arc<Shared>, mut stream: UnixStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let (request, password) = match Request::read(&mut reader)? {
        Ok(r) => r,
        Err(f) => return answer(&mut stream, Err(f)),
    };
    let password = password.unwrap_or_default();
    match request {
        // Long requests run on threads of their own, so status, lock and
        // the rest keep answering (requests are otherwise served one at a
        // time).
        Request::Import { source, dest } => {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let r = super::import::run(&shared, &source, &dest);
                if let Err(e) = answer(&mut stream, r) {
                    crate::log_line!("datastore: control request failed: {e}");
                }
            });
            Ok(())
        }
        Request::Scrub => {
            let engine = shared.engine.clone();
            std::thread::spawn(move || {
                let _ = answer(&mut stream, scrub(&engine));
            });
            Ok(())
        }
        Request::Unlock => {
            let r = unlock(shared, &password);
            if let Err(f) = &r {
                refused_unlock(&stream, f);
            }
            answer(&mut stream, r)
        }
        Request::Lock => answer(&mut stream, lock(shared)),
        Request::ConvertRate { max_rate } => answer(&mut stream, set_rate(shared, max_rate)),
        Request::Convert { max_rate } => {
            answer(&mut stream, convert(shared, password.as_bytes(), max_rate))
        }
        Request::Status => answer(&mut stream, status(shared)),
        Request::Shutdown => answer(&mut stream, shutdown(shared)),
    }
}

fn json(value: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string(value).map_err(|e| Failure::new(Exit::Error, e.to_string()))
}

fn status(shared: &Shared) -> Result<String, Failure> {
    json(&shared.status().map_err(Failure::from)?)
}

fn scrub(engine: &crate::engine::Engine) -> Result<String, Failure> {
    json(&engine.scrub_committed().map_err(Failure::from)?)
}

fn unlock(shared: &Shared, password: &str) -> Result<String, Failure> {
    if shared.volume().is_some() {
        return Ok("already unlocked".to_string());
    }
    match keys::unlock_with_password(&shared.store, &shared.engine, password.as_bytes()) {
        Ok(v) => {
            *shared.volume.write_locked() = Some(v);
            shared.page_fill.resume();
            crate::log_line!("datastore: unlocked");
            shared.resume_conversion();
            Ok("unlocked".to_string())
        }
        Err(e) => Err(Failure::from(e)),
    }
}

/// Logs a refused unlock with its peer, then pauses: requests are served
/// one at a time, so at most one password guess per FAILED_UNLOCK_PAUSE,
/// however many connections try.
fn refused_unlock(stream: &UnixStream, f: &Failure) {
    let who = crate::fsutil::peer_credentials(stream)
        .map_or("an unknown process".into(), |(pid, uid)| {
            format!("uid {uid} pid {pid}")
        });
    crate::log_line!("datastore: unlock refused ({who}): {}", f.message);
    std::thread::sleep(FAILED_UNLOCK_PAUSE);
}

fn lock(shared: &Shared) -> Result<String, Failure> {
    shared.stop_conversion();
    shared.page_fill.pause();
    let Some(v) = shared.volume.write_locked().take() else {
        return Ok("already locked".to_string());
    };
    if let Err(e) = v.sync_all() {
        *shared.volume.write_locked() = Some(v);
        shared.page_fill.resume();
        return Err(Failure::new(
            Exit::Io,
            format!("flush before lock failed: {e}"),
        ));
    }
    shared.engine.set_crypto(None);
    if let Some(r) = shared.engine.remote() {
        r.clear_key();
    }
    // Drop the kernel's cached pages of every file it may have read, so
    // nothing is served while locked (page fills are paused: none lands
    // after this).
    for ino in v.cached_inodes() {
        shared.page_fill.invalidate(ino);
    }
    drop(v);
    crate::log_line!("datastore: locked");
    Ok("locked".to_string())
}

fn set_rate(shared: &Shared, max_rate: u64) -> Result<String, Failure> {
    let Some(v) = shared.volume() else {
        return Err(Failure::new(Exit::Error, "locked: no conversion runs"));
    };
    v.set_counters(&[(crate::session::conversion::MAX_RATE, Some(max_rate))]);
    Ok("limit set".to_string())
}

/// Syncs before answering, so `unmount` can say whether what was written
/// reached the store; the unmount goes ahead either way.
fn shutdown(shared: &Shared) -> Result<String, Failure> {
    let synced = match shared.volume() {
        Some(v) => v.sync_all().and_then(|_| v.persist()),
        None => Ok(()),
    };
    shared.shutdown.store(true, Ordering::SeqCst);
    synced.map(|_| "shutting down".into()).map_err(|e| {
        Failure::new(
            Exit::Io,
            format!(
                "the final sync failed ({e}): changes since the last successful commit are lost; files committed before are intact"
            ),
        )
    })
}

/// Switches a live volume to the keystore's newest key (the CLI has just
/// begun a conversion) and starts converting. The password unlocks the
/// keystore again: the new key exists only wrapped under it.
fn convert(shared: &Shared, password: &[u8], max_rate: Option<u64>) -> Result<String, Failure> {
    let Some(v) = shared.volume() else {
        return Ok("locked: the conversion starts at the next unlock".into());
    };
    if shared.job().is_some_and(|j| j.is_running()) {
        return Ok("already converting".into());
    }
    let keys = keys::keys_with_password(&shared.store, password)?;
    let current = v.engine().keys().map(|k| k.current.generation).ok();
    if current != Some(keys.ring.current.generation) {
        v.rekey(keys.ring.clone(), &|first| keys.sealer(first))
            .map_err(|e| Failure::new(Exit::Io, format!("cannot switch keys: {e}")))?;
        if let (Some(r), Some((current, retiring))) = (v.engine().remote(), keys.mirror.clone()) {
            r.rekey(current, retiring);
        }
    }
    if let Some(rate) = max_rate {
        v.set_counters(&[(crate::session::conversion::MAX_RATE, Some(rate))]);
    }
    shared.resume_conversion();
    Ok("converting".into())
}
