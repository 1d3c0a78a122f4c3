//! A real S3-compatible server for tests: s3s-fs (installed by
//! scripts/test.sh) on a free loopback port, serving a temporary directory
//! with one bucket, `bkt`. Dropping it stops the server.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "bkt";
const ACCESS_KEY: &str = "datastore-test";
const SECRET_KEY: &str = "datastore-test-secret";

pub struct S3Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    super::installed_tool("s3s-fs", "cargo install s3s-fs")
}

impl S3Server {
    pub fn start() -> Self {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::create_dir(dir.path().join(BUCKET)).unwrap();
        let port = super::free_port();
        let mut s = S3Server {
            dir,
            port,
            child: None,
        };
        s.resume();
        s
    }

    /// Starts the server again on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "s3s-fs did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (an outage); `resume` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Credentials and region as the usual AWS variables.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// `init` arguments for a store mirrored under `prefix`.
    pub fn init_args(&self, prefix: &str) -> Vec<String> {
        vec![
            "--remote".into(),
            format!("s3://{BUCKET}/{prefix}"),
            "--endpoint".into(),
            self.endpoint(),
        ]
    }

    /// Bytes under the server's data directory (objects and its metadata).
    pub fn data_bytes(&self) -> u64 {
        super::dir_bytes(self.dir.path())
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
