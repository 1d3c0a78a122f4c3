//! `encryption set` on a store with data, and `encryption rotate-key`: the
//! keystore side of a conversion (new key, slots rewrapped, the old key
//! kept wrapped under the new one), then the conversion of every chunk and
//! metadata value by the mounted daemon, or by this process when the store
//! is not mounted, with a progress bar in the foreground.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keystore::{FipsMode, KatSet, Keystore};
use zeroize::Zeroizing;

use super::exit::{Exit, Failure};
use super::mount::control;
use super::secrets::SecretReader;
use super::store::{load_config, open_keystore};
use super::{boot_key_dir, kdf_options, Cli, ConversionArgs};
use crate::engine::Engine;
use crate::session::conversion::{self, Progress, MAX_RATE};
use crate::session::keys::{self, fingerprint_alg};
use crate::session::protocol::Request;

/// Points datastore.toml at the keystore's new mode (the keystore was
/// written first and stays the authority if this write is lost).
fn save_config_for(cli: &Cli, mode: FipsMode) -> Result<(), Failure> {
    let mut cfg = load_config(&cli.store)?;
    cfg.engine.cipher = "aes-xts-256".into();
    cfg.engine.fingerprint = fingerprint_alg(mode);
    cfg.save(&cli.store)
        .map_err(|e| Failure::new(Exit::Io, format!("cannot write datastore.toml: {e}")))
}

fn print_recovery(rk: &keystore::RecoveryKey) {
    crate::say!("New recovery key (the old one no longer works; shown once):");
    crate::say!("  {}", rk.as_str());
}

/// An unencrypted store gets a keystore (new password) and is converted.
pub fn encrypt_plain_store(cli: &Cli, mode: FipsMode, how: ConversionArgs) -> Result<(), Failure> {
    let cfg = load_config(&cli.store)?;
    let password = SecretReader::new().read("New password", cli.password_file.as_deref(), true)?;
    let (_ks, _vk, rk) = Keystore::create_for_plain_store(
        &cli.store,
        &cfg.store_id,
        &boot_key_dir(),
        password.as_bytes(),
        mode,
        &kdf_options(),
    )?;
    save_config_for(cli, mode)?;
    crate::say!("Encryption on (FIPS mode {mode:?}): new data is encrypted from now on; converting the existing data.");
    print_recovery(&rk);
    run(cli, &password, how)
}

/// A new key (rotation, or a FIPS mode switch) for an encrypted store.
pub fn begin(cli: &Cli, mode: FipsMode, how: ConversionArgs) -> Result<(), Failure> {
    let mut ks = open_keystore(&cli.store)?;
    let password = SecretReader::new().read("Password", cli.password_file.as_deref(), false)?;
    let (_vk, rk) = ks.begin_conversion(
        password.as_bytes(),
        mode,
        &KatSet::embedded(),
        &kdf_options(),
    )?;
    save_config_for(cli, mode)?;
    crate::say!(
        "New volume key (generation {}, FIPS mode {mode:?}): new data uses it from now on; converting the existing data.",
        ks.generation()
    );
    print_recovery(&rk);
    run(cli, &password, how)
}

pub fn rotate_key(cli: &Cli, how: ConversionArgs) -> Result<(), Failure> {
    load_config(&cli.store)?;
    if !keys::has_keystore(&cli.store) {
        return Err(Failure::new(
            Exit::Refused,
            "this store is not encrypted: use `datastore encryption set --fips-mode ...` to encrypt it",
        ));
    }
    let ks = open_keystore(&cli.store)?;
    if ks.retiring().is_some() {
        return continue_conversion(cli, how);
    }
    begin(cli, ks.fips_mode(), how)
}

/// A conversion already runs: watch it in the daemon, or (not mounted)
/// resume it here.
pub fn continue_conversion(cli: &Cli, how: ConversionArgs) -> Result<(), Failure> {
    if control(&cli.store, &Request::Status, None)?.is_some() {
        crate::say!("A conversion is already running in the mounted daemon.");
        if let Some(rate) = how.max_rate {
            control(&cli.store, &Request::ConvertRate { max_rate: rate }, None)?;
            crate::say!("{}", rate_line(rate));
        }
        if !how.no_wait {
            return wait_for_daemon(cli);
        }
        return Ok(());
    }
    crate::say!("A conversion was interrupted; resuming it here.");
    let password = SecretReader::new().read("Password", cli.password_file.as_deref(), false)?;
    offline(cli, &password, how)
}

fn rate_line(rate: u64) -> String {
    if rate == 0 {
        "Rate limit removed (automatic throttle).".into()
    } else {
        format!("Rate limit now {} MiB/s.", rate >> 20)
    }
}

/// Hands the conversion to the mounted daemon, or runs it here.
fn run(cli: &Cli, password: &Zeroizing<String>, how: ConversionArgs) -> Result<(), Failure> {
    let request = Request::Convert {
        max_rate: how.max_rate,
    };
    match control(&cli.store, &request, Some(password.as_str()))? {
        Some(reply) => {
            crate::say!("Mounted daemon: {reply}.");
            if how.no_wait || reply.starts_with("locked") {
                return Ok(());
            }
            wait_for_daemon(cli)
        }
        None => offline(cli, password, how),
    }
}

fn offline(cli: &Cli, password: &Zeroizing<String>, how: ConversionArgs) -> Result<(), Failure> {
    let engine = Arc::new(Engine::open(&cli.store, None)?);
    let loaded =
        keys::keys_with_password(&cli.store, password.as_bytes()).map_err(Failure::from)?;
    let vol = keys::load(&engine, loaded).map_err(Failure::from)?;
    if let Some(rate) = how.max_rate {
        vol.set_counters(&[(MAX_RATE, Some(rate))]);
    }
    let job = conversion::start(&cli.store, vol.clone());
    let mut bar = Bar::new();
    while job.is_running() {
        bar.draw(&job.progress());
        std::thread::sleep(Duration::from_millis(200));
    }
    let p = job.progress();
    bar.finish(&p);
    vol.sync_all()
        .map_err(|e| Failure::new(Exit::Io, format!("final commit failed: {e}")))?;
    if engine.remote().is_some() {
        vol.persist().map_err(|e| {
            Failure::new(
                Exit::Io,
                format!("the upload to the bucket mirror failed: {e}"),
            )
        })?;
    }
    outcome(&p)
}

fn wait_for_daemon(cli: &Cli) -> Result<(), Failure> {
    let mut bar = Bar::new();
    loop {
        let Some(json) = control(&cli.store, &Request::Status, None)? else {
            return Err(Failure::new(
                Exit::Error,
                "the daemon stopped; the conversion resumes at the next mount",
            ));
        };
        let st: crate::session::status::Status =
            serde_json::from_str(&json).map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
        match st.conversion {
            Some(p) if p.state == "converting" || p.state == "finishing" => bar.draw(&p),
            Some(p) => {
                bar.finish(&p);
                return outcome(&p);
            }
            None => {
                return Err(Failure::new(
                    Exit::Error,
                    "the daemon reports no conversion (is it locked? run `datastore unlock`)",
                ))
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn outcome(p: &Progress) -> Result<(), Failure> {
    if p.state == "done" {
        crate::say!("Conversion done: every chunk and metadata value is under the new key; the old key is destroyed.");
        Ok(())
    } else {
        Err(Failure::new(
            Exit::Error,
            format!(
                "conversion {} (it resumes at the next mount or run)",
                p.state
            ),
        ))
    }
}

/// A progress bar on a terminal; a line every few seconds otherwise.
struct Bar {
    tty: bool,
    last: Option<Instant>,
}

impl Bar {
    fn new() -> Self {
        Bar {
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn draw(&mut self, p: &Progress) {
        if self.tty {
            let frac = if p.bytes_total > 0 {
                (p.bytes_done as f64 / p.bytes_total as f64).min(1.0)
            } else {
                0.0
            };
            let filled = (frac * 30.0) as usize;
            eprint!(
                "\r[{}{}] {}\x1b[K",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                p.line()
            );
        } else if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.last = Some(Instant::now());
            eprintln!("{}", p.line());
        }
    }

    fn finish(&mut self, p: &Progress) {
        if self.tty {
            eprintln!();
        }
        eprintln!("{}", p.line());
    }
}
