//! A real Garage server (the self-hosted S3-compatible store; `cargo install
//! garage`, done by scripts/test.sh) for the compatibility test: one node on
//! loopback ports, sqlite metadata, a bucket `bkt` and a key allowed on it.
//! Dropping it stops the server.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Garage {
    pub dir: tempfile::TempDir,
    pub s3_port: u16,
    key_id: String,
    secret: String,
    child: Child,
}

fn binary() -> PathBuf {
    super::installed_tool("garage", "cargo install garage")
}

impl Garage {
    pub fn start() -> Self {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let (s3_port, rpc_port) = (super::free_port(), super::free_port());
        let secret: String = super::random_bytes(rand_seed(), 32)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let d = dir.path();
        let cfg = format!(
            "metadata_dir = \"{m}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"garage\"\n\
             api_bind_addr = \"127.0.0.1:{s3_port}\"\nroot_domain = \".s3.garage.localhost\"\n",
            m = d.join("meta").display(),
            data = d.join("data").display(),
        );
        let cfg_path = d.join("garage.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        std::fs::set_permissions(
            &cfg_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&cfg_path)
            .arg("server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", rpc_port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "garage did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let cli = |args: &[&str]| -> Output {
            let o = Command::new(binary())
                .arg("-c")
                .arg(&cfg_path)
                .args(args)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "garage {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            o
        };
        let status = String::from_utf8(cli(&["status"]).stdout).unwrap();
        let node = status
            .lines()
            .find(|l| l.contains("NO ROLE"))
            .and_then(|l| l.split_whitespace().next())
            .expect("the node id")
            .to_string();
        cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        cli(&["layout", "apply", "--version", "1"]);
        cli(&["bucket", "create", "bkt"]);
        let key = String::from_utf8(cli(&["key", "create", "datastore"]).stdout).unwrap();
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("{name} missing from: {key}"))
        };
        let (key_id, secret) = (field("Key ID:"), field("Secret key:"));
        cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            "bkt",
            "--key",
            "datastore",
        ]);
        Garage {
            dir,
            s3_port,
            key_id,
            secret,
            child,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret.clone()),
        ]
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
