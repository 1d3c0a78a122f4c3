//! `datastore mount|unmount|unlock|lock|status`: start the daemon (in the
//! background unless `--foreground`), and talk to it over its control
//! socket.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keystore::StartupMode;
use zeroize::Zeroizing;

use super::exit::{Exit, Failure};
use super::secrets::SecretReader;
use super::store::{load_config, open_keystore};
use super::{print_json, Cli};
use crate::daemon::{self, DaemonError, SOCKET};
use crate::engine::Engine;
use crate::session::protocol::{self, Request};
use crate::session::status;

fn daemon_failure(e: DaemonError) -> Failure {
    match e {
        DaemonError::Usage(m) => Failure::new(Exit::Usage, m),
        DaemonError::Engine(e) => Failure::from(e),
        DaemonError::Unlock(e) => Failure::from(e),
        DaemonError::Io { .. } => Failure::new(Exit::Io, e.to_string()),
    }
}

/// The password for a mount: none when the startup mode opens by itself;
/// a prompt on a TTY; `--password-file`; otherwise none (mount locked).
fn mount_password(cli: &Cli) -> Result<Option<Zeroizing<String>>, Failure> {
    if !crate::session::keys::has_keystore(&cli.store)
        && !load_config(&cli.store)?.engine.encrypted()
    {
        return Ok(None); // an unencrypted store needs no password
    }
    let ks = open_keystore(&cli.store)?;
    let boot_opens = ks.startup() == StartupMode::Unlocked && !ks.in_shipping_mode();
    if boot_opens && cli.password_file.is_none() {
        return Ok(None);
    }
    if cli.password_file.is_some() || std::io::stdin().is_terminal() {
        return SecretReader::new()
            .read("Password", cli.password_file.as_deref(), false)
            .map(Some);
    }
    Ok(None)
}

/// `mount --http ADDR [--http-token-file FILE]`.
#[derive(Clone, Debug, Default)]
pub struct HttpArgs {
    pub addr: Option<std::net::SocketAddr>,
    pub token_file: Option<PathBuf>,
}

impl HttpArgs {
    fn options(&self, store: &Path) -> Result<Option<daemon::http::HttpOptions>, Failure> {
        let Some(addr) = self.addr else {
            return Ok(None);
        };
        let token = match &self.token_file {
            // The store's own token is for loopback listeners only.
            None if !addr.ip().is_loopback() => None,
            None => Some(store_token(store)?),
            Some(f) => {
                let text = Zeroizing::new(std::fs::read_to_string(f).map_err(|e| {
                    Failure::new(Exit::Usage, format!("cannot read {}: {e}", f.display()))
                })?);
                let line = text.lines().next().unwrap_or("").trim().to_string();
                if line.len() < 16 {
                    return Err(Failure::new(
                        Exit::Usage,
                        format!(
                            "the token in {} must be at least 16 characters",
                            f.display()
                        ),
                    ));
                }
                Some(Zeroizing::new(line))
            }
        };
        daemon::http::HttpOptions::new(addr, token)
            .map(Some)
            .map_err(|e| Failure::new(Exit::Usage, e.to_string()))
    }
}

/// The web endpoints' token when none was given: `<store>/http-token`
/// (made on first use: 32 random bytes as hex, mode 0600, owned by root
/// like the store), so only who can read the store directory can read the
/// dashboard and its figures (which reveal dedup: an oracle for whether
/// some data is stored).
fn store_token(store: &Path) -> Result<Zeroizing<String>, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = store.join(HTTP_TOKEN);
    let refused = |m: String| Failure::new(Exit::Refused, m);
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(mut f) => {
            let meta = f
                .metadata()
                .map_err(|e| refused(format!("{}: {e}", path.display())))?;
            crate::fsutil::check_private(&path, &meta).map_err(|e| refused(e.to_string()))?;
            if meta.mode() & 0o077 != 0 {
                return Err(refused(format!(
                    "{} is readable by others (mode {:o}): refused (chmod 600 it)",
                    path.display(),
                    meta.mode() & 0o7777
                )));
            }
            let mut text = Zeroizing::new(String::new());
            f.read_to_string(&mut text)
                .map_err(|e| refused(format!("{}: {e}", path.display())))?;
            let line = text.lines().next().unwrap_or("").trim();
            if line.len() < 16 {
                return Err(refused(format!(
                    "{} holds no token of 16 characters or more",
                    path.display()
                )));
            }
            Ok(Zeroizing::new(line.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = Zeroizing::new([0u8; 32]);
            keystore::Provider::DEFAULT.fill_random(&mut raw[..])?;
            let token = Zeroizing::new(hex::encode(&raw[..]));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| {
                    Failure::new(Exit::Io, format!("cannot create {}: {e}", path.display()))
                })?;
            f.write_all(format!("{}\n", token.as_str()).as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| {
                    Failure::new(Exit::Io, format!("cannot write {}: {e}", path.display()))
                })?;
            Ok(token)
        }
        Err(e) => Err(refused(format!("{}: {e}", path.display()))),
    }
}

/// The file `store_token` keeps the web token in.
pub const HTTP_TOKEN: &str = "http-token";

pub fn mount(
    cli: &Cli,
    mountpoint: &Path,
    foreground: bool,
    password_stdin: bool,
    http: HttpArgs,
) -> Result<(), Failure> {
    if !foreground {
        clear_stale_mount(mountpoint)?;
    }
    if !mountpoint.is_dir() {
        return Err(Failure::new(
            Exit::Usage,
            format!("mount point {} is not a directory", mountpoint.display()),
        ));
    }
    check_mountpoint_apart(mountpoint, &cli.store)?;
    let mut new_password = None;
    if !cli.store.join(crate::config::CONFIG_FILE).exists() && !password_stdin {
        // First use of the store: create it (password prompt), then mount
        // with that password.
        super::store::check_new_store_dir(&cli.store)?;
        crate::say!("No store at {}: creating it.", cli.store.display());
        new_password = Some(super::store::init(cli, super::FipsArg::Disabled, None)?);
    }
    load_config(&cli.store)?;
    // Checked before anything starts: a bad --http is a usage error.
    let http_options = http.options(&cli.store)?;
    let password = if password_stdin {
        password_line()?
    } else if new_password.is_some() {
        new_password
    } else {
        mount_password(cli)?
    };
    if foreground {
        return daemon::serve(&cli.store, mountpoint, password, http_options, |locked| {
            crate::say!("ready{}", if locked { " locked" } else { "" });
            let _ = std::io::stdout().flush();
        })
        .map_err(daemon_failure);
    }
    mount_in_background(cli, mountpoint, password, &http)
}

/// The password the background parent hands its daemon on standard input
/// (an empty line: none).
fn password_line() -> Result<Option<Zeroizing<String>>, Failure> {
    let mut line = Zeroizing::new(String::new());
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure::new(Exit::Io, format!("cannot read password: {e}")))?;
    while line.ends_with('\n') {
        line.pop();
    }
    Ok((!line.is_empty()).then_some(line))
}

/// Re-runs this program in the foreground, detached, and waits until it
/// says the mount is ready (or fails: then its last log line and exit code
/// are this command's).
fn mount_in_background(
    cli: &Cli,
    mountpoint: &Path,
    password: Option<Zeroizing<String>>,
    http: &HttpArgs,
) -> Result<(), Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure::new(Exit::Io, e.to_string()))?;
    let log_path = cli.store.join("daemon.log");
    let log = crate::fsutil::open_private_log(&log_path).map_err(|e| {
        Failure::new(
            Exit::Refused,
            format!("cannot open {}: {e}", log_path.display()),
        )
    })?;
    let mut cmd = Command::new(exe);
    cmd.arg("--store")
        .arg(&cli.store)
        .arg("mount")
        .arg(mountpoint)
        .arg("--foreground")
        .arg("--password-stdin")
        .args(http.addr.map(|a| format!("--http={a}")))
        .args(
            http.token_file
                .as_ref()
                .map(|f| format!("--http-token-file={}", f.display())),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: `detach_child` makes only async-signal-safe calls, as code
    // between fork and exec must.
    unsafe {
        cmd.pre_exec(detach_child);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::new(Exit::Io, format!("cannot start the daemon: {e}")))?;
    {
        let mut stdin = child.stdin.take().expect("piped");
        let line = Zeroizing::new(format!(
            "{}\n",
            password.as_deref().map(|s| s.as_str()).unwrap_or("")
        ));
        let _ = stdin.write_all(line.as_bytes());
    }
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut first = String::new();
    let _ = out.read_line(&mut first);
    if first.starts_with("ready") {
        let locked = first.contains("locked");
        crate::say!(
            "Mounted {} at {}{}.",
            cli.store.display(),
            mountpoint.display(),
            if locked {
                " (locked: run `datastore unlock`)"
            } else {
                ""
            }
        );
        return Ok(());
    }
    Err(daemon_exit(child, &log_path))
}

/// Why a background daemon exited before it was ready: the last line of
/// its log (past its timestamp and "datastore: ") and its exit code.
fn daemon_exit(mut child: std::process::Child, log_path: &Path) -> Failure {
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return Failure::new(Exit::Io, e.to_string()),
    };
    let mut log_tail = String::new();
    if let Ok(mut f) = std::fs::File::open(log_path) {
        let _ = f.read_to_string(&mut log_tail);
    }
    let last = log_tail.lines().last().unwrap_or("the daemon exited");
    let last = last
        .split_once("datastore: ")
        .map_or(last, |(_, message)| message)
        .to_string();
    let code = match status.code() {
        Some(0) | None => Exit::Error,
        Some(c) => Exit::from_code(c),
    };
    Failure::new(code, last)
}

/// A datastore mount already at `mountpoint`: one whose daemon died (the
/// kernel answers ENOTCONN) is detached so the mount can go ahead; a live
/// one is refused (no stacked mounts: one unmount would hide the other).
fn clear_stale_mount(mountpoint: &Path) -> Result<(), Failure> {
    let Some(abs) = std::path::absolute(mountpoint).ok() else {
        return Ok(());
    };
    if !datastore_mounts().iter().any(|(mp, _)| *mp == abs) {
        return Ok(());
    }
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            let c = std::ffi::CString::new(abs.as_os_str().as_encoded_bytes())
                .map_err(|_| Failure::new(Exit::Usage, "bad mount point"))?;
            // SAFETY: umount2 with a valid C string.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                let e = std::io::Error::last_os_error();
                return Err(Failure::new(
                    Exit::Io,
                    format!(
                        "{} is a dead datastore mount and cannot be detached: {e}",
                        abs.display()
                    ),
                ));
            }
            crate::say!("Detached the dead datastore mount at {}.", abs.display());
            Ok(())
        }
        _ => Err(Failure::new(
            Exit::InUse,
            format!(
                "{} is already a datastore mount (unmount it first)",
                abs.display()
            ),
        )),
    }
}

/// The mount point may be neither inside the store nor the store or one of
/// its ancestors: the mount would hide the store from its own daemon.
fn check_mountpoint_apart(mountpoint: &Path, store: &Path) -> Result<(), Failure> {
    let abs = |p: &Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
    };
    let (mnt, store_abs) = (abs(mountpoint), abs(store));
    if mnt.starts_with(&store_abs) || store_abs.starts_with(&mnt) {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "mount point {} and store {} overlap: mount elsewhere",
                mountpoint.display(),
                store.display()
            ),
        ));
    }
    Ok(())
}

/// Sends one request to the store's daemon; None when no daemon runs.
pub(crate) fn control(
    store: &Path,
    request: &Request,
    password: Option<&str>,
) -> Result<Option<String>, Failure> {
    let path = store.join(SOCKET);
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(Failure::new(
                Exit::Refused,
                format!(
                    "{}: permission denied (the control socket is root-only)",
                    path.display()
                ),
            ))
        }
        Err(_) => return Ok(None),
    };
    check_peer(&s, &path)?;
    s.write_all(&request.encode(password))
        .map_err(|e| Failure::new(Exit::Io, format!("control socket: {e}")))?;
    let mut reply = String::new();
    BufReader::new(s)
        .read_line(&mut reply)
        .map_err(|e| Failure::new(Exit::Io, format!("control socket: {e}")))?;
    protocol::decode_reply(&reply).map(Some)
}

/// The process at the other end of the control socket must run as root
/// or as us: anyone else listening there could be waiting for a password.
fn check_peer(s: &UnixStream, path: &Path) -> Result<(), Failure> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match crate::fsutil::peer_credentials(s) {
        Some((_, uid)) if uid == 0 || uid == me => Ok(()),
        peer => Err(Failure::new(
            Exit::Refused,
            format!(
                "{} is served by {}, not by root: refused, nothing was sent",
                path.display(),
                peer.map_or("an unknown process".into(), |(pid, uid)| format!(
                    "uid {uid} (pid {pid})"
                )),
            ),
        )),
    }
}

pub(crate) fn no_daemon(store: &Path) -> Failure {
    Failure::new(
        Exit::NotAStore,
        format!(
            "no mount of {} is running (start one with `datastore mount`)",
            store.display()
        ),
    )
}

pub fn unlock(cli: &Cli) -> Result<(), Failure> {
    load_config(&cli.store)?;
    if !cli.store.join(SOCKET).exists() {
        return Err(no_daemon(&cli.store));
    }
    let pw = SecretReader::new().read("Password", cli.password_file.as_deref(), false)?;
    let r = control(&cli.store, &Request::Unlock, Some(pw.as_str()))?
        .ok_or_else(|| no_daemon(&cli.store))?;
    crate::say!("Store {r}.");
    Ok(())
}

pub fn lock(cli: &Cli) -> Result<(), Failure> {
    load_config(&cli.store)?;
    let r = control(&cli.store, &Request::Lock, None)?.ok_or_else(|| no_daemon(&cli.store))?;
    crate::say!("Store {r}.");
    Ok(())
}

/// Finds the store behind a datastore mount point in /proc/self/mountinfo.
fn store_of_mount(mountpoint: &Path) -> Option<PathBuf> {
    let want = std::fs::canonicalize(mountpoint).ok()?;
    datastore_mounts()
        .into_iter()
        .find(|(mp, _)| *mp == want)
        .map(|(_, store)| store)
}

/// A mountinfo field with the kernel's `\ooo` escapes (space, tab,
/// newline, backslash) turned back into bytes.
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Every datastore mount of this machine: (mount point, store).
pub(crate) fn datastore_mounts() -> Vec<(PathBuf, PathBuf)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let unescape = |s: &str| PathBuf::from(std::ffi::OsString::from_vec(unescape_octal(s)));
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mp = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            let store = fields.get(sep + 2)?.strip_prefix("datastore:")?;
            Some((unescape(mp), unescape(store)))
        })
        .collect()
}

/// In the daemon's process between fork and exec: setsid detaches it from
/// our session; close_range closes every descriptor the caller let us
/// inherit (a pipe a script waits on must see EOF when we exit, not when
/// the daemon does).
fn detach_child() -> std::io::Result<()> {
    // SAFETY: setsid has no preconditions (async-signal-safe).
    unsafe { libc::setsid() };
    // SAFETY: closes descriptors 3 and up; nothing in this process uses
    // them after exec (async-signal-safe).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    Ok(())
}

/// True when no process holds the store's lock.
fn store_is_free(store: &Path) -> bool {
    let Ok(f) = std::fs::File::open(store.join("lock")) else {
        return true;
    };
    // Released when `f` closes.
    crate::fsutil::try_flock(&f, true)
}

pub fn unmount(mountpoint: &Path) -> Result<(), Failure> {
    let Some(store) = store_of_mount(mountpoint) else {
        return Err(Failure::new(
            Exit::Usage,
            format!("{} is not a datastore mount", mountpoint.display()),
        ));
    };
    let reply = control(&store, &Request::Shutdown, None);
    if !matches!(reply, Ok(None)) {
        // The daemon syncs (the reply says whether that worked), unmounts
        // and exits; return only once it has released the store, so a
        // mount right after this one succeeds.
        for _ in 0..600 {
            if store_of_mount(mountpoint).is_none() && store_is_free(&store) {
                if let Err(f) = reply {
                    let message = format!("unmounted {}, but {}", mountpoint.display(), f.message);
                    return Err(Failure::new(f.code, message));
                }
                crate::say!("Unmounted {}.", mountpoint.display());
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        return Err(Failure::new(
            Exit::Error,
            "the daemon did not unmount within 30 s",
        ));
    }
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(|_| Failure::new(Exit::Usage, "bad mount point"))?;
    // SAFETY: umount with a valid C string.
    if unsafe { libc::umount(c.as_ptr()) } != 0 {
        return Err(Failure::new(
            Exit::Io,
            format!(
                "umount {}: {}",
                mountpoint.display(),
                std::io::Error::last_os_error()
            ),
        ));
    }
    crate::say!("Unmounted {} (no daemon answered).", mountpoint.display());
    Ok(())
}

pub fn status(cli: &Cli, json: bool) -> Result<(), Failure> {
    load_config(&cli.store)?;
    let st: status::Status = match control(&cli.store, &Request::Status, None)? {
        Some(j) => {
            serde_json::from_str(&j).map_err(|e| Failure::new(Exit::Error, e.to_string()))?
        }
        None => {
            let engine = Engine::open_read_only(&cli.store)?;
            status::collect(&engine, None, true)?
        }
    };
    if json {
        return print_json(&st);
    }
    crate::say!(
        "Mounted:         {}",
        st.mountpoint.as_deref().unwrap_or("no")
    );
    crate::say!(
        "Lock state:      {}",
        if st.locked { "locked" } else { "unlocked" }
    );
    crate::say!("Logical bytes:   {}", st.logical_bytes);
    crate::say!("Physical bytes:  {}", st.physical_bytes);
    crate::say!("Dedup ratio:     {:.2}x", st.dedup_ratio);
    crate::say!("Compression:     {:.2}x", st.compression_ratio);
    crate::say!("Data reduction:  {:.2}x", st.total_reduction);
    crate::say!("Chunks:          {}", st.chunks);
    crate::say!("Segments:        {}", st.segments);
    crate::say!("Encryption:      {}", st.encryption);
    if let Some(why) = &st.writes_stopped {
        crate::say!("Writes stopped:  {why}; committed files stay readable; unmount and mount again to resume");
    }
    if let Some(c) = &st.conversion {
        crate::say!("Conversion:      {}", c.line());
    }
    if let Some(r) = &st.remote {
        crate::say!("Remote:          {} at {}", r.url, r.endpoint);
        crate::say!(
            "Remote backlog:  {} bytes not yet in the bucket; checkpoint {}{}",
            r.backlog_bytes,
            r.checkpoint,
            r.last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
