//! The control socket: one request per connection, a command line, then
//! (for unlock) one password line; the answer is `ok ...` or
//! `err <exit code> <message>` on one line, or the status as JSON.

use crate::poison::RecoverRw;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{keys, set_owner_only, DaemonError, Shared, SOCKET};
use crate::exit::{Exit, Failure};

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
    match r {
        Ok(s) => writeln!(stream, "ok {s}"),
        Err(f) => writeln!(stream, "err {} {}", f.code as i32, f.message),
    }
}

fn handle(shared: &Arc<Shared>, mut stream: UnixStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut cmd = String::new();
    reader.read_line(&mut cmd)?;
    match cmd.trim() {
        "import" => {
            // Two more lines: the source and the destination (absolute).
            let mut src = String::new();
            let mut dest = String::new();
            reader.read_line(&mut src)?;
            reader.read_line(&mut dest)?;
            let src = PathBuf::from(src.trim_end_matches('\n'));
            let dest = PathBuf::from(dest.trim_end_matches('\n'));
            // An import can take long: on its own thread, so status, lock
            // and the rest keep answering.
            let shared = shared.clone();
            std::thread::spawn(move || {
                let r = super::import::run(&shared, &src, &dest);
                if let Err(e) = answer(&mut stream, r) {
                    crate::log_line!("datastore: control request failed: {e}");
                }
            });
            Ok(())
        }
        "unlock" => {
            let mut pw = Zeroizing::new(String::new());
            reader.read_line(&mut pw)?;
            while pw.ends_with('\n') || pw.ends_with('\r') {
                pw.pop();
            }
            let r = if shared.volume().is_some() {
                Ok("already unlocked".to_string())
            } else {
                match keys::unlock_with_password(&shared.store, &shared.engine, pw.as_bytes()) {
                    Ok(v) => {
                        *shared.volume.write_locked() = Some(v);
                        shared.page_fill.resume();
                        crate::log_line!("datastore: unlocked");
                        shared.resume_conversion();
                        Ok("unlocked".to_string())
                    }
                    Err(keys::UnlockError::Key(k)) => Err(Failure::from(k)),
                    Err(e) => Err(Failure::new(Exit::Error, e.to_string())),
                }
            };
            if let Err(f) = &r {
                let who = crate::fsutil::peer_credentials(&stream)
                    .map_or("an unknown process".into(), |(pid, uid)| {
                        format!("uid {uid} pid {pid}")
                    });
                crate::log_line!("datastore: unlock refused ({who}): {}", f.message);
                // Requests are served one at a time: at most one password
                // guess per FAILED_UNLOCK_PAUSE, however many connections try.
                std::thread::sleep(FAILED_UNLOCK_PAUSE);
            }
            answer(&mut stream, r)
        }
        "lock" => {
            shared.stop_conversion();
            shared.page_fill.pause();
            let v = shared.volume.write_locked().take();
            let r = match v {
                None => Ok("already locked".to_string()),
                Some(v) => match v.sync_all() {
                    Ok(()) => {
                        shared.engine.set_crypto(None);
                        if let Some(r) = shared.engine.remote() {
                            r.clear_key();
                        }
                        // Drop the kernel's cached pages of every file it
                        // may have read, so nothing is served while locked
                        // (page fills are paused: none lands after this).
                        for ino in v.cached_inodes() {
                            shared.page_fill.invalidate(ino);
                        }
                        drop(v);
                        crate::log_line!("datastore: locked");
                        Ok("locked".to_string())
                    }
                    Err(e) => {
                        *shared.volume.write_locked() = Some(v);
                        shared.page_fill.resume();
                        Err(Failure::new(
                            Exit::Io,
                            format!("flush before lock failed: {e}"),
                        ))
                    }
                },
            };
            answer(&mut stream, r)
        }
        cmd if cmd.starts_with("convert-rate") => {
            let rate = cmd
                .strip_prefix("convert-rate")
                .unwrap_or("")
                .trim()
                .parse();
            let r = match (shared.volume(), rate) {
                (_, Err(_)) => Err(Failure::new(Exit::Usage, "convert-rate needs a number")),
                (None, _) => Err(Failure::new(Exit::Error, "locked: no conversion runs")),
                (Some(v), Ok(rate)) => {
                    v.set_counters(&[(super::conversion::MAX_RATE, Some(rate))]);
                    Ok("limit set".to_string())
                }
            };
            answer(&mut stream, r)
        }
        cmd if cmd.starts_with("convert") => {
            let mut pw = Zeroizing::new(String::new());
            reader.read_line(&mut pw)?;
            while pw.ends_with('\n') || pw.ends_with('\r') {
                pw.pop();
            }
            let rate = cmd
                .strip_prefix("convert")
                .unwrap_or("")
                .trim()
                .parse()
                .ok();
            let r = convert(shared, pw.as_bytes(), rate);
            answer(&mut stream, r)
        }
        "scrub" => {
            // On a thread of its own: a scrub reads every segment, and
            // requests are otherwise served one at a time.
            let engine = shared.engine.clone();
            std::thread::spawn(move || {
                let r = engine
                    .scrub_committed()
                    .map_err(Failure::from)
                    .and_then(|r| {
                        serde_json::to_string(&r)
                            .map_err(|e| Failure::new(Exit::Error, e.to_string()))
                    });
                let _ = answer(&mut stream, r);
            });
            Ok(())
        }
        "status" => {
            let r = shared.status().map_err(Failure::from).and_then(|s| {
                serde_json::to_string(&s).map_err(|e| Failure::new(Exit::Error, e.to_string()))
            });
            answer(&mut stream, r)
        }
        "shutdown" => {
            // Sync before answering, so `unmount` can say whether what was
            // written reached the store; the unmount goes ahead either way.
            let synced = match shared.volume() {
                Some(v) => v.sync_all().and_then(|_| v.persist()),
                None => Ok(()),
            };
            shared.shutdown.store(true, Ordering::SeqCst);
            answer(
                &mut stream,
                synced.map(|_| "shutting down".into()).map_err(|e| {
                    Failure::new(
                        Exit::Io,
                        format!(
                            "the final sync failed ({e}): changes since the last successful commit are lost; files committed before are intact"
                        ),
                    )
                }),
            )
        }
        other => answer(
            &mut stream,
            Err(Failure::new(
                Exit::Usage,
                format!("unknown control command {other:?}"),
            )),
        ),
    }
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
    let keys = match keys::keys_with_password(&shared.store, password) {
        Ok(k) => k,
        Err(keys::UnlockError::Key(k)) => return Err(Failure::from(k)),
        Err(e) => return Err(Failure::new(Exit::Error, e.to_string())),
    };
    let current = v.engine().keys().map(|k| k.current.generation).ok();
    if current != Some(keys.ring.current.generation) {
        v.rekey(keys.ring.clone(), &|first| keys.sealer(first))
            .map_err(|e| Failure::new(Exit::Io, format!("cannot switch keys: {e}")))?;
        if let (Some(r), Some((current, retiring))) = (v.engine().remote(), keys.mirror.clone()) {
            r.rekey(current, retiring);
        }
    }
    if let Some(rate) = max_rate {
        v.set_counters(&[(super::conversion::MAX_RATE, Some(rate))]);
    }
    shared.resume_conversion();
    Ok("converting".into())
}
