//! A real mount for tests: a store in a temporary directory, its mount
//! point, the password file, and the `datastore` verbs on them. Dropping the
//! fixture unmounts (lazily if it must), so a failed test leaves no mount.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PW: &str = "mount test password 42";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// Environment every `datastore` command of this fixture gets.
    pub env: Vec<(String, String)>,
    /// The store directory is a tmpfs of this fixture's (unmounted on drop).
    pub store_tmpfs: bool,
}

impl Fixture {
    /// A fresh store (`init` plus `init_args`) and an empty mount point.
    pub fn new(init_args: &[&str]) -> Self {
        Self::with_env(init_args, Vec::new())
    }

    /// `new`, with `env` set for every command (remote credentials).
    pub fn with_env(init_args: &[&str], env: Vec<(String, String)>) -> Self {
        Self::build(init_args, env, None)
    }

    /// `new`, with the store directory (and so `daemon.log`) on a tmpfs of
    /// `size` (as `mount -o size=` takes it), to run out of space.
    pub fn with_store_on_tmpfs(size: &str) -> Self {
        Self::build(&[], Vec::new(), Some(size))
    }

    /// Grows (or shrinks) the store's tmpfs.
    pub fn resize_store_tmpfs(&self, size: &str) {
        assert!(self.store_tmpfs);
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.store())
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount the store's tmpfs with size={size}");
    }

    fn build(init_args: &[&str], env: Vec<(String, String)>, tmpfs: Option<&str>) -> Self {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: the mount tests need FUSE"
        );
        // SAFETY: getuid has no preconditions.
        assert_eq!(unsafe { libc::getuid() }, 0, "the mount tests need root");
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
            env,
            store_tmpfs: tmpfs.is_some(),
        };
        std::fs::create_dir(f.mnt()).unwrap();
        if let Some(size) = tmpfs {
            std::fs::create_dir(f.store()).unwrap();
            let ok = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(f.store())
                .status()
                .unwrap()
                .success();
            assert!(ok, "mount a tmpfs for the store");
        }
        std::fs::write(f.pw(), format!("{PW}\n")).unwrap();
        let pw = f.pw();
        let mut args = vec!["init", "--password-file", pw.to_str().unwrap()];
        args.extend_from_slice(init_args);
        f.ok(&args);
        f
    }
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    pub fn pw(&self) -> PathBuf {
        self.dir.path().join("pw")
    }
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut all: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all.extend_from_slice(env);
        super::datastore_env(self.dir.path(), &self.store(), args, &all)
    }
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
    pub fn mount(&self) {
        self.ok(&[
            "mount",
            self.mnt().to_str().unwrap(),
            "--password-file",
            self.pw().to_str().unwrap(),
        ]);
    }
    pub fn mount_locked(&self) {
        let out = self.ok(&["mount", self.mnt().to_str().unwrap()]);
        assert!(out.contains("locked"), "{out}");
    }
    pub fn unmount(&self) {
        self.ok(&["unmount", self.mnt().to_str().unwrap()]);
    }
    /// The daemon serving this mount (the background `mount` process).
    pub fn daemon_pid(&self) -> Option<i32> {
        let mnt = self.mnt();
        let want = mnt.to_str().unwrap().as_bytes();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            if args.contains(&&b"mount"[..]) && args.contains(&want) {
                return Some(pid);
            }
        }
        None
    }
    /// SIGKILL of the daemon (a crash), then a lazy unmount of what it left.
    pub fn kill_daemon(&self) {
        let pid = self.daemon_pid().expect("daemon running");
        // SAFETY: kill(2) on a pid we just found.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        // Gone once it is reaped, or a zombie whose other threads have all
        // exited: only then is its file table (the control socket) closed.
        // Its cmdline empties earlier, while it still exits.
        let alive = || {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
            !zombie || threads > 1
        };
        let t = std::time::Instant::now();
        while alive() && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
    }
    /// `status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }
    /// `encryption rotate-key --max-rate RATE --no-wait`: its output.
    fn rotate_key_no_wait(&self, max_rate: &str) -> String {
        let pw = self.pw();
        self.ok(&[
            "encryption",
            "rotate-key",
            "--password-file",
            pw.to_str().unwrap(),
            "--max-rate",
            max_rate,
            "--no-wait",
        ])
    }
    /// Starts a key rotation that the mounted daemon runs in the background.
    pub fn start_rotation(&self, max_rate: &str) {
        let out = self.rotate_key_no_wait(max_rate);
        assert!(out.contains("converting"), "{out}");
    }
    /// The same command while a conversion runs: changes its rate limit
    /// ("0": none).
    pub fn set_conversion_rate(&self, max_rate: &str) {
        let out = self.rotate_key_no_wait(max_rate);
        assert!(out.contains("Rate limit"), "{out}");
    }
    /// Waits (at most 5 minutes) until the daemon's conversion is done.
    pub fn wait_for_conversion(&self) {
        let t = std::time::Instant::now();
        loop {
            let st = self.status();
            let state = st["conversion"]["state"].as_str().unwrap_or("").to_string();
            if state == "done" {
                return;
            }
            let log =
                || std::fs::read_to_string(self.store().join("daemon.log")).unwrap_or_default();
            assert!(
                state == "converting" || state == "finishing",
                "{st}\ndaemon.log:\n{}",
                log()
            );
            assert!(
                t.elapsed().as_secs() < 300,
                "no end: {st}\ndaemon.log:\n{}",
                log()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    /// `encryption scan` (not mounted): the key generations holding records
    /// (as the index names them) and metadata values; asserts that every
    /// record in the segment files, indexed or not, agrees.
    pub fn scan_generations(&self) -> (Vec<String>, Vec<String>) {
        let scan: serde_json::Value =
            serde_json::from_str(&self.ok(&["encryption", "scan", "--json"])).unwrap();
        let list = |v: &serde_json::Value, f: &dyn Fn(&serde_json::Value) -> String| {
            v.as_array().unwrap().iter().map(f).collect::<Vec<String>>()
        };
        let records = list(&scan["records"]["by_generation"], &|c| {
            c["generation"].to_string()
        });
        let in_files = list(&scan["segments"]["records_by_generation"], &|c| {
            c[0].to_string()
        });
        assert_eq!(in_files, records, "{scan}");
        let metadata = list(&scan["metadata"], &|m| m[0].as_str().unwrap().to_string());
        (records, metadata)
    }
    pub fn is_mounted(&self) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let m = self.mnt();
        info.lines()
            .any(|l| l.split(' ').nth(4) == Some(m.to_str().unwrap()))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if self.is_mounted() {
            let _ = self.run(&["unmount", self.mnt().to_str().unwrap()]);
        }
        if self.is_mounted() {
            let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
        }
        if self.store_tmpfs {
            let _ = Command::new("umount").arg(self.store()).status();
        }
    }
}

/// `diff -r` of two trees (symlinks compared as links).
pub fn diff(a: &Path, b: &Path) {
    let o = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "trees differ:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
