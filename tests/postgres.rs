//! PostgreSQL (Debian's) with its data directory on the mount: pgbench
//! runs, postgres is killed -9 mid-run and, separately, the datastore
//! daemon is; after a restart crash recovery succeeds, `pg_checksums` finds
//! every page intact and every transaction pgbench saw committed is there
//! (pgbench's tpcb-like transaction appends one row to pgbench_history).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::mounted::Fixture;

const BIN: &str = "/usr/lib/postgresql/15/bin";
const PORT: &str = "55433";

fn pg(tool: &str, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(Path::new(BIN).join(tool))
        .args(args)
        .output()
        .unwrap()
}

fn pg_ok(tool: &str, args: &[&str]) -> String {
    let o = pg(tool, args);
    assert!(
        o.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Cluster {
    data: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Cluster {
    fn new(f: &Fixture) -> Self {
        assert!(
            Path::new(BIN).join("postgres").exists(),
            "PostgreSQL 15 is missing: scripts/test.sh installs it (apt-get install postgresql)"
        );
        std::fs::set_permissions(f.mnt(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let c = Cluster {
            data: f.mnt().join("pg"),
            socket: f.dir.path().join("sock"),
            log: f.dir.path().join("postgres.log"),
        };
        for d in [&c.data, &c.socket] {
            std::fs::create_dir(d).unwrap();
            Command::new("chown")
                .arg("postgres:")
                .arg(d)
                .status()
                .unwrap();
        }
        Command::new("chmod")
            .arg("777")
            .arg(f.dir.path())
            .status()
            .unwrap();
        pg_ok(
            "initdb",
            &[
                "--no-instructions",
                "--data-checksums",
                "-D",
                c.data.to_str().unwrap(),
            ],
        );
        c
    }

    fn start(&self) {
        let opts = format!(
            "-p {PORT} -k {} -c listen_addresses=''",
            self.socket.display()
        );
        pg_ok(
            "pg_ctl",
            &[
                "-s",
                "-w",
                "-t",
                "120",
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                self.log.to_str().unwrap(),
                "-o",
                &opts,
                "start",
            ],
        );
    }

    fn stop(&self) {
        pg_ok(
            "pg_ctl",
            &[
                "-s",
                "-w",
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "stop",
            ],
        );
    }

    fn psql(&self, sql: &str) -> String {
        let sock = self.socket.to_str().unwrap();
        pg_ok(
            "psql",
            &["-h", sock, "-p", PORT, "-d", "postgres", "-tAc", sql],
        )
        .trim()
        .to_string()
    }

    fn pgbench(&self, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(Path::new(BIN).join("pgbench"))
            .args(["-h", self.socket.to_str().unwrap(), "-p", PORT])
            .args(args)
            .arg("postgres");
        c
    }

    /// The postmaster's pid (from postmaster.pid).
    fn postmaster(&self) -> i32 {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    }

    /// kill -9 of the postmaster and every backend it started.
    fn kill_all(&self, postmaster: i32) {
        let _ = Command::new("pkill")
            .args(["-9", "-P", &postmaster.to_string()])
            .status();
        // SAFETY: kill(2) of a pid read from postmaster.pid.
        unsafe { libc::kill(postmaster, libc::SIGKILL) };
        let t = std::time::Instant::now();
        while Path::new(&format!("/proc/{postmaster}")).exists()
            && t.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn checksums_clean(&self) {
        let out = pg_ok(
            "pg_checksums",
            &["--check", "-D", self.data.to_str().unwrap()],
        );
        assert!(out.contains("Bad checksums:  0"), "{out}");
    }
}

/// Runs pgbench (tpcb-like, 2 clients; `-n`: no vacuum, so it does not
/// empty pgbench_history first) and calls `crash` after `after`;
/// returns the transactions pgbench reported as processed (committed).
fn pgbench_until_crash(c: &Cluster, after: Duration, crash: impl FnOnce()) -> u64 {
    let child: Child = c
        .pgbench(&["-n", "-c", "2", "-j", "2", "-T", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    crash();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("number of transactions actually processed"))
        .unwrap_or_else(|| {
            panic!(
                "pgbench said: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    line.split(':')
        .nth(1)
        .unwrap()
        .trim()
        .split('/')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn history_rows(c: &Cluster) -> u64 {
    c.psql("SELECT count(*) FROM pgbench_history")
        .parse()
        .unwrap()
}

#[test]
fn postgres_survives_kill_9_of_itself_and_of_the_datastore_daemon() {
    let f = Fixture::new(&[]);
    f.mount();
    let c = Cluster::new(&f);
    c.start();
    pg_ok(
        "pgbench",
        &[
            "-q",
            "-i",
            "-s",
            "1",
            "-h",
            c.socket.to_str().unwrap(),
            "-p",
            PORT,
            "postgres",
        ],
    );
    assert_eq!(history_rows(&c), 0);

    // 1. kill -9 of postgres mid-run.
    let postmaster = c.postmaster();
    let committed = pgbench_until_crash(&c, Duration::from_secs(4), || c.kill_all(postmaster));
    assert!(
        committed > 50,
        "pgbench committed only {committed} transactions"
    );
    c.start();
    let rows = history_rows(&c);
    assert!(
        (committed..=committed + 2).contains(&rows),
        "pgbench saw {committed} commits; the table holds {rows} rows"
    );
    let before = rows;

    // 2. kill -9 of the datastore daemon mid-run: postgres loses its files
    // and dies; a new mount replays the intent log, postgres recovers.
    let postmaster = c.postmaster();
    let more = pgbench_until_crash(&c, Duration::from_secs(4), || f.kill_daemon());
    c.kill_all(postmaster);
    f.mount();
    let _ = std::fs::remove_file(c.data.join("postmaster.pid"));
    c.start();
    let rows = history_rows(&c);
    assert!(
        (before + more..=before + more + 2).contains(&rows),
        "pgbench saw {more} more commits after {before}; the table holds {rows} rows"
    );
    c.stop();
    c.checksums_clean();
    f.unmount();
    let scrub = f.ok(&["scrub"]);
    assert!(!scrub.contains("BAD"), "{scrub}");
}
