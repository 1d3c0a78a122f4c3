//! Command-line interface: argument parsing (clap), one module per command
//! group, and the mapping of failures to exit codes (see `exit`).

mod conversion;
mod encryption;
pub use crate::exit;
mod import;
mod maintenance;
mod mount;
mod secrets;
mod store;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use exit::{Exit, Failure};

#[derive(Parser, Debug)]
#[command(
    name = "datastore",
    version,
    about = "Encrypted, deduplicating datastore"
)]
pub struct Cli {
    /// Store directory.
    #[arg(
        long,
        global = true,
        env = "DATASTORE_STORE",
        default_value = "/var/lib/datastore"
    )]
    pub store: PathBuf,
    /// Read the password from this file (first line) instead of a prompt or stdin.
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Where a store's bucket mirror is. Credentials come from the usual AWS
/// environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...).
#[derive(clap::Args, Debug, Clone)]
pub struct RemoteArgs {
    /// s3://BUCKET/PREFIX: mirror the store to this bucket (write-through).
    #[arg(long)]
    pub remote: Option<String>,
    /// Endpoint URL of an S3-compatible server (MinIO, Garage, Ceph RGW...).
    #[arg(long, requires = "remote")]
    pub endpoint: Option<String>,
    /// Region (default: $AWS_REGION / $AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, requires = "remote")]
    pub region: Option<String>,
    /// Keep at most this much data locally (e.g. 64M, 20G); older data is
    /// read back from the bucket when needed. Default: keep everything.
    #[arg(long, requires = "remote", value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// While the bucket is unreachable, accept at most this much new data
    /// locally (then writes fail with ENOSPC until it is back). Default: no
    /// limit but the local disk.
    #[arg(long, requires = "remote", value_parser = parse_size)]
    pub max_backlog: Option<u64>,
}

/// A size argument that is not a number of bytes (with K/M/G/T) at or
/// above the option's minimum.
#[derive(Debug, thiserror::Error)]
#[error("{given:?} is not a size of at least {min_mib}M (like 64M or 20G)")]
pub struct SizeArgError {
    given: String,
    min_mib: u64,
}

/// "64M", "20G", "1048576" -> bytes.
fn parse_size(s: &str) -> Result<u64, SizeArgError> {
    parse_size_at_least(s, 8 << 20)
}

fn parse_size_at_least(s: &str, min: u64) -> Result<u64, SizeArgError> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        Some((i, 'T' | 't')) => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n >= min)
        .ok_or_else(|| SizeArgError {
            given: s.to_string(),
            min_mib: min >> 20,
        })
}

impl RemoteArgs {
    pub fn config(&self) -> Option<crate::remote::RemoteConfig> {
        self.remote.as_ref().map(|url| crate::remote::RemoteConfig {
            url: url.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            cache_bytes: self.cache_size,
            max_backlog: self.max_backlog,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new store (asks for a password twice; prints the recovery key once).
    Init {
        #[arg(long, value_enum, default_value_t = FipsArg::Disabled)]
        fips_mode: FipsArg,
        /// Dedup and compress, but encrypt nothing (no password; data and
        /// metadata in the clear). `encryption set` converts it later.
        #[arg(long, conflicts_with_all = ["fips_mode", "remote"])]
        no_encryption: bool,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Keep the intent log of synchronous writes in DIR (an absolute
        /// path, e.g. on a faster device) instead of STORE/intent.
        #[arg(long, value_name = "DIR")]
        log_dir: Option<PathBuf>,
    },
    /// Recreate a store from its bucket (the host or its drive was lost):
    /// asks for the password, restores keystore, metadata and data.
    Attach {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Encryption settings and keys.
    Encryption {
        #[command(subcommand)]
        command: EncryptionCommand,
    },
    /// Mount the store at MOUNTPOINT (creating the store on first use).
    Mount {
        mountpoint: PathBuf,
        /// Stay attached (for systemd) instead of returning once mounted.
        #[arg(long)]
        foreground: bool,
        /// Internal: the background parent passes the password on stdin.
        #[arg(long, hide = true)]
        password_stdin: bool,
        /// Serve the dashboard and /metrics at ADDR (e.g. 127.0.0.1:9750).
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// File whose first line is the token every web request must carry
        /// (required for a non-loopback --http address).
        #[arg(long, requires = "http")]
        http_token_file: Option<PathBuf>,
    },
    /// Flush everything and unmount.
    Unmount { mountpoint: PathBuf },
    /// Copy a local file or tree into a running mount as `cp -a SRC DEST`
    /// would (contents, owners, modes, times, xattrs and ACLs, symlinks,
    /// hard links, device nodes), without a FUSE round trip per file.
    /// DEST is a new path inside a datastore mount. Root only.
    Import { source: PathBuf, dest: PathBuf },
    /// Unlock a running mount (password prompt, --password-file or stdin).
    Unlock,
    /// Flush, drop the keys, and refuse file access until unlocked again.
    Lock,
    /// Capacity, data reduction, lock state, encryption summary.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check every record of every segment (CRCs; works without the key).
    Scrub {
        /// Also decrypt every record and check its keyed fingerprint (asks
        /// for the password): finds records altered with a valid CRC.
        #[arg(long)]
        verify_data: bool,
        #[arg(long)]
        json: bool,
    },
    /// Verify every chunk the index references (header and CRC; works
    /// without the key) and mark the ones that fail as damaged, so the next
    /// write of the same data (a restore from a backup) stores a good copy
    /// instead of deduplicating onto the bad one. Not while mounted.
    Repair {
        /// Only report what would be marked.
        #[arg(long)]
        dry_run: bool,
        /// Also name the files that use a damaged chunk (asks for the
        /// password; not with --dry-run).
        #[arg(long, conflicts_with = "dry_run")]
        list_files: bool,
        #[arg(long)]
        json: bool,
    },
    /// Compact segments whose live fraction is below THRESHOLD (works without the key).
    Gc {
        #[arg(long, default_value_t = 0.5)]
        threshold: f64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum EncryptionCommand {
    /// What protects the data right now.
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Change the FIPS mode, or encrypt an unencrypted store: converts
    /// every chunk and metadata value while the store stays usable (asks
    /// for the password; a new one for an unencrypted store).
    Set {
        #[arg(long, value_enum)]
        fips_mode: FipsArg,
        #[command(flatten)]
        conversion: ConversionArgs,
    },
    /// Count records and metadata values by the key generation they are
    /// under (proves a conversion left nothing behind; not while mounted).
    Scan {
        #[arg(long)]
        json: bool,
    },
    /// New volume key: every chunk and metadata value is re-encrypted and
    /// the old key destroyed at the end; the recovery key is reissued.
    RotateKey {
        #[command(flatten)]
        conversion: ConversionArgs,
    },
    /// Add, change or remove a password.
    Password {
        #[command(subcommand)]
        command: PasswordCommand,
    },
    /// Startup mode: `locked` needs the password after every start,
    /// `unlocked` keeps a root-only boot key outside the store.
    Startup {
        #[arg(value_enum)]
        mode: StartupArg,
    },
    /// Destroy every stored unwrapping secret except the password and
    /// recovery slots; the next start is locked.
    ShippingMode,
}

/// How a conversion runs.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ConversionArgs {
    /// Convert at most this many bytes per second (e.g. 50M; 0: no limit).
    /// Default: full speed while the filesystem is idle, a quarter duty
    /// cycle while it serves reads and writes. Given again while a
    /// conversion runs, it changes that conversion's limit.
    #[arg(long, value_parser = parse_rate)]
    pub max_rate: Option<u64>,
    /// Return once the conversion has started (it continues in the mounted
    /// daemon; `encryption show` and `status` report progress).
    #[arg(long)]
    pub no_wait: bool,
}

fn parse_rate(s: &str) -> Result<u64, SizeArgError> {
    if s == "0" {
        return Ok(0);
    }
    parse_size_at_least(s, 1 << 20)
}

#[derive(Subcommand, Debug)]
pub enum PasswordCommand {
    /// Add a password slot (asks for a current password, then the new one).
    Add {
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// Change a password (asks for the current one, then the new one).
    Change {
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// Remove the password slot that the given password opens.
    Remove,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FipsArg {
    Validated,
    Disabled,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StartupArg {
    Locked,
    Unlocked,
}

pub use crate::paths::boot_key_dir;

/// Target time of one KDF run for new keyslots (default 1 s).
pub fn kdf_options() -> keystore::SlotOptions {
    let ms = std::env::var("DATASTORE_KDF_TARGET_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000u64);
    keystore::SlotOptions {
        kdf_target: Duration::from_millis(ms),
    }
}

/// Runs the command; returns the process exit code.
pub fn run(mut cli: Cli) -> i32 {
    // An absolute store path: the daemon records it in the mount table, and
    // `unmount` from another directory must find it there.
    if let Ok(abs) = std::path::absolute(&cli.store) {
        cli.store = abs;
    }
    let result = match &cli.command {
        Command::Init {
            no_encryption: true,
            log_dir,
            ..
        } => store::init_unencrypted(&cli)
            .and_then(|()| store::set_log_dir(&cli.store, log_dir.as_deref())),
        Command::Init {
            fips_mode,
            remote,
            log_dir,
            ..
        } => store::init(&cli, *fips_mode, remote.config())
            .and_then(|_| store::set_log_dir(&cli.store, log_dir.as_deref())),
        Command::Attach { remote } => store::attach(&cli, remote.config()),
        Command::Encryption { command } => encryption::run(&cli, command),
        Command::Mount {
            mountpoint,
            foreground,
            password_stdin,
            http,
            http_token_file,
        } => mount::mount(
            &cli,
            mountpoint,
            *foreground,
            *password_stdin,
            mount::HttpArgs {
                addr: *http,
                token_file: http_token_file.clone(),
            },
        ),
        Command::Unmount { mountpoint } => mount::unmount(mountpoint),
        Command::Import { source, dest } => import::import(source, dest),
        Command::Unlock => mount::unlock(&cli),
        Command::Lock => mount::lock(&cli),
        Command::Status { json } => mount::status(&cli, *json),
        Command::Scrub { verify_data, json } => maintenance::scrub(&cli, *verify_data, *json),
        Command::Gc { threshold, json } => maintenance::gc(&cli, *threshold, *json),
        Command::Repair {
            dry_run,
            list_files,
            json,
        } => maintenance::repair(&cli, *dry_run, *list_files, *json),
    };
    match result {
        Ok(()) => Exit::Ok as i32,
        Err(f) => {
            // Also the daemon's last words, into daemon.log: a full disk
            // must not turn the documented exit code into a panic's.
            crate::log_line!("datastore: {}", f.message);
            f.code as i32
        }
    }
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    let s =
        serde_json::to_string_pretty(v).map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
    crate::say!("{s}");
    Ok(())
}
