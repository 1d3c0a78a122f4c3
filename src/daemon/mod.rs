//! The mount process: opens the store (locked or unlocked), serves the FUSE
//! session, answers the root-only control socket (unlock, lock, status,
//! shutdown), commits durably every few seconds, and on SIGTERM/SIGINT or
//! `datastore unmount` syncs everything and unmounts.
//!
//! Invariants: one daemon per store (the engine's flock); the control
//! socket is created mode 0600 inside the store directory; a password that
//! arrives over the socket is held in a zeroizing buffer and never logged.

mod control;
pub mod http;
mod import;

use crate::session::{conversion, keys, status};

use crate::poison::{Recover, RecoverRw};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::engine::Engine;
use crate::fs::{DatastoreFs, PageFill, SharedVolume};

pub const SOCKET: &str = "control.sock";
/// Largest metadata database compacted at unmount: about 3 s of work
/// (100 MB/s measured), well inside the 30 s `datastore unmount` waits.
const COMPACT_AT_EXIT_MAX: u64 = 256 << 20;
/// Group commit interval: changes not fsync'ed become durable this often.
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// How often the blocks of the metadata database that changed go to
/// `meta/checkpoint` while mounted (a whole image goes there at every
/// unmount): `datastore repair` puts back what it holds when the database
/// is lost, so at most this much of committed metadata is lost with it.
pub const JOURNAL_EVERY: Duration = Duration::from_secs(5);
/// After a failed checkpoint frame (a full disk), the next try.
const JOURNAL_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Unlock(#[from] keys::UnlockError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the control thread and the main loop share.
pub struct Shared {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub engine: Arc<Engine>,
    pub volume: SharedVolume,
    pub shutdown: Arc<AtomicBool>,
    /// Fills the kernel's page cache around random reads; `lock` pauses it
    /// and drops the kernel's cached file data through it.
    pub page_fill: Arc<PageFill>,
    /// The key conversion running (or last run) in this daemon.
    pub conversion: std::sync::Mutex<Option<Arc<conversion::Job>>>,
}

impl Shared {
    pub fn volume(&self) -> Option<Arc<crate::volume::Volume>> {
        self.volume.read_locked().clone()
    }

    fn job(&self) -> Option<Arc<conversion::Job>> {
        self.conversion.locked().clone()
    }

    /// Starts (or resumes) the key conversion when the keystore says one
    /// runs and the store is unlocked.
    pub fn resume_conversion(&self) {
        let Some(v) = self.volume() else { return };
        if self.job().is_some_and(|j| j.is_running()) || !conversion::pending(&self.store) {
            return;
        }
        crate::log_line!("datastore: key conversion running");
        *self.conversion.locked() = Some(conversion::start(&self.store, v));
    }

    /// Stops a running conversion (before lock or unmount; it resumes at
    /// the next unlock or mount).
    pub fn stop_conversion(&self) {
        if let Some(j) = self.job() {
            j.stop_and_join();
        }
    }

    /// The status, with the live progress of this daemon's conversion.
    pub fn status(&self) -> Result<status::Status, crate::engine::EngineError> {
        let locked = self.volume().is_none();
        let mut s = status::collect(
            &self.engine,
            Some(self.mountpoint.display().to_string()),
            locked,
        )?;
        if let Some(j) = self.job() {
            s.conversion = Some(j.progress());
        }
        Ok(s)
    }
}

/// Caps glibc's malloc arenas at two (one per core of the machines this
/// is measured on). Write buffers are allocated on the FUSE threads and
/// freed on flush threads; with glibc's default (up to eight arenas per
/// core) the freed memory stays spread over arenas the next allocations
/// do not use. 4 KiB random writes after an 8 GiB sequential write peaked
/// at 564 MiB resident by default and 451 MiB with two arenas, at the same
/// write rate (docs/BENCHMARKS.md).
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tuning; M_ARENA_MAX
    // limits arenas created from now on.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Serves `store` at `mountpoint` until unmounted or signalled. `ready` is
/// called once the mount is live (the background parent waits for it).
pub fn serve(
    store: &Path,
    mountpoint: &Path,
    password: Option<Zeroizing<String>>,
    http: Option<http::HttpOptions>,
    ready: impl FnOnce(bool),
) -> Result<(), DaemonError> {
    limit_malloc_arenas();
    crate::LOG_TIMESTAMPS.store(true, std::sync::atomic::Ordering::Relaxed);
    if !mountpoint.is_dir() {
        return Err(DaemonError::Usage(format!(
            "mount point {} is not a directory",
            mountpoint.display()
        )));
    }
    let shared = open_shared(store, mountpoint, password)?;
    let locked = shared.volume().is_none();
    let socket = control::start(shared.clone())?;
    if let Some(opts) = http {
        http::start(shared.clone(), opts).map_err(|e| DaemonError::Usage(e.to_string()))?;
    }
    let session = mount_fuse(&shared, store, mountpoint)?;
    if locked {
        crate::log_line!(
            "datastore: mounted {} locked: run `datastore unlock`",
            mountpoint.display()
        );
    }
    // Before the mount reports ready: a status right after `mount` returns
    // shows the job running, not "paused (not mounted)".
    shared.resume_conversion();
    ready(locked);
    let mut timers = Timers::new();
    while !shared.shutdown.load(Ordering::SeqCst) && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        crate::metrics::tick();
        timers.tick(&shared);
    }
    shut_down(&shared, session, &socket)
}

/// Opens the engine, unlocks (with `password`, a boot key, or not at all)
/// and installs the signal handlers that end the serve loop.
fn open_shared(
    store: &Path,
    mountpoint: &Path,
    password: Option<Zeroizing<String>>,
) -> Result<Arc<Shared>, DaemonError> {
    let engine = Arc::new(Engine::open(store, None)?);
    let volume = match password {
        Some(pw) => Some(keys::unlock_with_password(store, &engine, pw.as_bytes())?),
        None => keys::unlock_at_boot(store, &engine)?,
    };
    let shared = Arc::new(Shared {
        store: store.to_path_buf(),
        // Canonical (imports compare destinations against it); resolved
        // before the mount covers it.
        mountpoint: std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf()),
        engine,
        volume: Arc::new(RwLock::new(volume)),
        shutdown: Arc::new(AtomicBool::new(false)),
        page_fill: PageFill::new(),
        conversion: std::sync::Mutex::new(None),
    });
    signal_hook::flag::register(signal_hook::consts::SIGTERM, shared.shutdown.clone())
        .and_then(|_| {
            signal_hook::flag::register(signal_hook::consts::SIGINT, shared.shutdown.clone())
        })
        .map_err(|source| DaemonError::Io {
            what: "install signal handlers".into(),
            source,
        })?;
    Ok(shared)
}

/// Mounts the FUSE file system over the shared volume (`REQUEST_THREADS`
/// request threads, one cloned /dev/fuse descriptor each).
fn mount_fuse(
    shared: &Shared,
    store: &Path,
    mountpoint: &Path,
) -> Result<fuser::BackgroundSession, DaemonError> {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("datastore:{}", store.display())),
        fuser::MountOption::Subtype("datastore".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(REQUEST_THREADS);
    config.clone_fd = true;
    let fs = DatastoreFs::new(shared.volume.clone(), shared.page_fill.clone());
    let session =
        fuser::spawn_mount(fs, mountpoint, &config).map_err(|source| DaemonError::Io {
            what: format!("mount {}", mountpoint.display()),
            source,
        })?;
    shared.page_fill.set_notifier(session.notifier());
    Ok(session)
}

/// FUSE request threads: fsyncs of several files (database backends, VM
/// disks) wait in the daemon at once, so one log flush serves them all
/// (group commit); with two threads at most two could.
const REQUEST_THREADS: usize = 8;

/// The serve loop's periodic work: group commit, checkpoint frames, and
/// the bucket's cache and backlog limits.
struct Timers {
    last_commit: Instant,
    last_checkpoint: Instant,
    checkpoint_failing: bool,
}

impl Timers {
    fn new() -> Self {
        Timers {
            last_commit: Instant::now(),
            last_checkpoint: Instant::now(),
            checkpoint_failing: false,
        }
    }

    fn tick(&mut self, shared: &Shared) {
        let checkpoint_wait = match self.checkpoint_failing {
            true => JOURNAL_RETRY,
            false => JOURNAL_EVERY,
        };
        if self.last_checkpoint.elapsed() >= checkpoint_wait {
            self.last_checkpoint = Instant::now();
            self.checkpoint(shared);
        }
        if self.last_commit.elapsed() >= COMMIT_EVERY {
            self.last_commit = Instant::now();
            if let Some(v) = shared.volume() {
                if let Err(e) = v.flush_logged_buffers() {
                    crate::log_line!("datastore: chunking logged writes failed: {e}");
                }
                if let Err(e) = v.commit_if_pending() {
                    crate::log_line!("datastore: periodic commit failed: {e}");
                }
                if shared.engine.mirror_upload_due() {
                    if let Err(e) = v.persist() {
                        crate::log_line!("datastore: upload to the bucket failed: {e}");
                    }
                }
            }
        }
    }

    /// Appends a checkpoint frame; a failure is logged once, then retried
    /// every JOURNAL_RETRY until it works again.
    fn checkpoint(&mut self, shared: &Shared) {
        match shared.engine.journal_checkpoint() {
            Err(e) if !self.checkpoint_failing => {
                crate::log_line!(
                    "datastore: metadata checkpoint failed (retried every minute): {e}"
                );
                self.checkpoint_failing = true;
            }
            Err(_) => {}
            Ok(_) if self.checkpoint_failing => {
                crate::log_line!("datastore: metadata checkpoint written again");
                self.checkpoint_failing = false;
            }
            Ok(_) => {}
        }
    }
}

/// Stops the conversion, syncs, unmounts, and (when all of that worked)
/// compacts the metadata and writes a checkpoint base.
fn shut_down(
    shared: &Shared,
    session: fuser::BackgroundSession,
    socket: &Path,
) -> Result<(), DaemonError> {
    shared.stop_conversion();
    let result = shared
        .volume()
        .map(|v| v.sync_all().and_then(|_| v.persist()));
    let unmounted = if session.guard.is_finished() {
        session.join()
    } else {
        session.umount_and_join()
    };
    let _ = std::fs::remove_file(socket);
    if let (Some(Ok(())), Ok(()), Some(v)) = (&result, &unmounted, shared.volume()) {
        // Nothing writes any more: shed the database's freed pages and
        // half-empty leaves (a crash meanwhile leaves the old file whole).
        match v.compact_metadata(COMPACT_AT_EXIT_MAX) {
            Ok(Some((before, after))) => {
                crate::log_line!("datastore: metadata compacted from {before} to {after} bytes")
            }
            Ok(None) => {}
            Err(e) => crate::log_line!("datastore: metadata not compacted: {e}"),
        }
        if let Err(e) = v.write_checkpoint() {
            crate::log_line!("datastore: metadata checkpoint failed: {e}");
        }
    }
    if let Some(Err(e)) = result {
        return Err(DaemonError::Io {
            what: "final sync".into(),
            source: std::io::Error::other(e),
        });
    }
    unmounted.map_err(|source| DaemonError::Io {
        what: "unmount".into(),
        source,
    })
}

pub(crate) fn set_owner_only(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}
