//! `datastore encryption ...`: show, set --fips-mode, password add/change/
//! remove, startup, shipping-mode. Each verb rewraps or destroys key
//! material; none touches data.

use keystore::provider::services::ServiceCount;
use keystore::{FipsMode, KatSet, Provider, StartupMode};
use serde::Serialize;

use super::exit::{Exit, Failure};
use super::secrets::SecretReader;
use super::store::{fips_of, load_config, open_keystore};
use super::{kdf_options, print_json, Cli, EncryptionCommand, PasswordCommand, StartupArg};
use crate::crypto::certificate::certificate_for;
use crate::crypto::FingerprintAlg;
use crate::engine::Engine;
use crate::session::protocol::Request;
use crate::timefmt::utc_from_unix;

pub fn run(cli: &Cli, cmd: &EncryptionCommand) -> Result<(), Failure> {
    match cmd {
        EncryptionCommand::Show { json } => show(cli, *json),
        EncryptionCommand::Set {
            fips_mode,
            conversion,
        } => set_fips(cli, fips_of(*fips_mode), *conversion),
        EncryptionCommand::Scan { json } => scan(cli, *json),
        EncryptionCommand::RotateKey { conversion } => {
            super::conversion::rotate_key(cli, *conversion)
        }
        EncryptionCommand::Password { command } => password(cli, command),
        EncryptionCommand::Startup { mode } => startup(cli, *mode),
        EncryptionCommand::ShippingMode => {
            let mut ks = open_keystore(&cli.store)?;
            ks.enter_shipping_mode()?;
            crate::say!("Shipping mode on: no stored key can open this store; the next start needs the password.");
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct Show {
    encrypted: bool,
    data_cipher: &'static str,
    fingerprint: &'static str,
    metadata_sealing: &'static str,
    key_slot_wrap: &'static str,
    fips_mode: FipsMode,
    compliance: String,
    crypto_implementation: String,
    /// Validated mode: the module as it reported itself (None if it failed
    /// to come up; `module_error` says why).
    crypto_module: Option<keystore::ModuleStatus>,
    module_error: Option<String>,
    /// The certificate docs/FIPS.md ties to this exact module, or why none.
    certificate: Option<String>,
    /// Services used and the module's indicator verdicts.
    services: Vec<ServiceCount>,
    services_source: &'static str,
    self_test: keystore::SelfTestReport,
    keystore: keystore::KeystoreInfo,
    lock_state: String,
    memory_protection: &'static str,
    /// A running key conversion (None when none runs).
    conversion: Option<crate::session::conversion::Progress>,
}

/// What `show` says of an unencrypted store.
#[derive(Serialize)]
struct ShowPlain {
    encrypted: bool,
    fingerprint: &'static str,
    metadata_sealing: &'static str,
    fips_mode: FipsMode,
    compliance: &'static str,
}

/// The progress of a running conversion: the daemon's, or as recorded.
fn conversion_progress(store: &std::path::Path) -> Option<crate::session::conversion::Progress> {
    if let Ok(Some(json)) = super::mount::control(store, &Request::Status, None) {
        let st: crate::session::status::Status = serde_json::from_str(&json).ok()?;
        return st.conversion;
    }
    let engine = Engine::open_read_only(store).ok()?;
    crate::session::conversion::recorded_progress(&engine)
}

/// The module status and services as the mounted daemon reports them.
fn daemon_crypto(
    store: &std::path::Path,
) -> Option<(Option<keystore::ModuleStatus>, Vec<ServiceCount>)> {
    let json = super::mount::control(store, &Request::Status, None).ok()??;
    let st: crate::session::status::Status = serde_json::from_str(&json).ok()?;
    (!st.locked).then_some((st.crypto_module, st.crypto_services))
}

fn show(cli: &Cli, json: bool) -> Result<(), Failure> {
    let cfg = load_config(&cli.store)?;
    if !crate::session::keys::has_keystore(&cli.store) && !cfg.engine.encrypted() {
        return show_plain(json);
    }
    let ks = open_keystore(&cli.store)?;
    let fips = ks.fips_mode();
    let validated = fips == FipsMode::Validated;
    let check = ModuleCheck::run(&cli.store, fips);
    let compliance = converting_compliance(ks.retiring(), validated, check.compliance(fips));
    let s = Show {
        encrypted: true,
        data_cipher: "AES-XTS-256 (two 256-bit keys; one data unit per chunk, tweak from the keyed fingerprint)",
        fingerprint: match cfg.engine.fingerprint {
            FingerprintAlg::Blake3 => "BLAKE3-256 (unkeyed: the store is not encrypted)",
            FingerprintAlg::Blake3Keyed => "keyed BLAKE3-256",
            FingerprintAlg::HmacSha256 => "HMAC-SHA-256",
        },
        metadata_sealing: if validated {
            "AES-256-GCM with module-generated IVs, one key per mount (KBKDF-HMAC-SHA-256 from the metadata key); names as HMAC-SHA-256"
        } else {
            "AES-256-GCM with counter nonces under the metadata key; names as HMAC-SHA-256"
        },
        key_slot_wrap: "AES-256-GCM",
        fips_mode: fips,
        compliance,
        crypto_implementation: check.provider.unwrap_or(Provider::DEFAULT).describe(),
        certificate: if validated { check.certificate() } else { None },
        crypto_module: if validated { check.crypto_module } else { None },
        module_error: check.module_error,
        services: if validated { check.services } else { Vec::new() },
        services_source: check.services_source,
        self_test: check.self_test,
        keystore: ks.info(),
        lock_state: lock_state(&cli.store),
        conversion: conversion_progress(&cli.store),
        memory_protection: "key bytes and key objects in mlock'ed, MADV_DONTDUMP, zeroize-on-drop pages (validated mode: the module's AES-XTS and AES-GCM contexts exist only during a call and are cleansed when freed; the stack is wiped after every module call); a process holding keys sets PR_SET_DUMPABLE 0 and RLIMIT_CORE 0",
    };
    if json {
        return print_json(&s);
    }
    print_show(&s);
    Ok(())
}

/// `show` of a store made with `--no-encryption` (and not converted).
fn show_plain(json: bool) -> Result<(), Failure> {
    let s = ShowPlain {
        encrypted: false,
        fingerprint: "BLAKE3-256 (unkeyed)",
        metadata_sealing: "none: names, sizes, times, xattrs and link targets are stored in the clear",
        fips_mode: FipsMode::Disabled,
        compliance: "NOT ENCRYPTED: file data and metadata are stored in the clear (created with --no-encryption). Encrypt it online with `datastore encryption set --fips-mode validated`.",
    };
    if json {
        return print_json(&s);
    }
    crate::say!("Encryption:        OFF (this store is not encrypted)");
    crate::say!("Fingerprints:      {}", s.fingerprint);
    crate::say!("Metadata:          {}", s.metadata_sealing);
    crate::say!("Compliance:        {}", s.compliance);
    Ok(())
}

/// What this command found of the store's crypto provider: it brings the
/// provider up and runs the known-answer tests through it; the module
/// status and service counts come from the mounted daemon when there is one.
struct ModuleCheck {
    provider: Option<Provider>,
    module_error: Option<String>,
    self_test: keystore::SelfTestReport,
    crypto_module: Option<keystore::ModuleStatus>,
    services: Vec<ServiceCount>,
    services_source: &'static str,
}

impl ModuleCheck {
    fn run(store: &std::path::Path, fips: FipsMode) -> Self {
        let kats = KatSet::embedded();
        let (provider, module_error) = match keystore::gate::for_mode(fips, &kats) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let self_test = match provider {
            Some(p) => keystore::selftest::run(&kats, p),
            None => keystore::SelfTestReport {
                passed: false,
                at: 0,
                results: vec![format!(
                    "not run: {}",
                    module_error.clone().unwrap_or_default()
                )],
            },
        };
        let mut crypto_module = keystore::gate::module_status().and_then(Result::ok);
        let (services, services_source) = match daemon_crypto(store) {
            Some((m, s)) => {
                crypto_module = m.or(crypto_module);
                (s, "the mounted daemon, since it started")
            }
            None => (
                keystore::provider::services::snapshot(),
                "this command's self-test run (the store is not mounted and unlocked)",
            ),
        };
        ModuleCheck {
            provider,
            module_error,
            self_test,
            crypto_module,
            services,
            services_source,
        }
    }

    /// The certificate docs/FIPS.md ties to the module, or why none.
    fn certificate(&self) -> Option<String> {
        self.crypto_module.as_ref().map(|m| match certificate_for(&m.name) {
            Some(c) => format!("{c}, tied to {} in docs/FIPS.md", m.name),
            None => format!(
                "none claimed: no CMVP certificate is documented for {} itself (AWS-LC's v3 certificates #5314/#5298 validate AWS-LC FIPS 3.1.0); check the module's CMVP entry for this version before relying on it (docs/FIPS.md)",
                m.name
            ),
        })
    }

    /// The compliance line for a store in `fips` mode.
    fn compliance(&self, fips: FipsMode) -> String {
        let all_approved =
            !self.services.is_empty() && self.services.iter().all(|c| c.not_approved == 0);
        match (fips, &self.crypto_module, self.self_test.passed) {
            (FipsMode::Validated, Some(m), true) => format!(
                "FIPS mode validated: every cryptographic service runs inside {} with FIPS mode active; module self-tests and the known-answer tests through it passed; {}",
                m.name,
                if all_approved {
                    "every service call so far was reported approved by the module's service indicator"
                } else {
                    "no service call has been counted yet"
                }
            ),
            (FipsMode::Validated, _, _) => format!(
                "FIPS mode validated, but the module check FAILED: unlock is refused ({})",
                self.module_error
                    .clone()
                    .unwrap_or_else(|| "known-answer tests failed".into())
            ),
            (FipsMode::Disabled, _, _) => {
                "FIPS mode disabled: Argon2id and keyed BLAKE3 in use (not a FIPS configuration).".into()
            }
        }
    }
}

/// Converting to validated mode from a non-FIPS key (or from the clear):
/// what is not converted yet is still read with the old algorithms, and
/// the compliance line says so first.
fn converting_compliance(
    retiring: Option<&keystore::Retiring>,
    validated: bool,
    compliance: String,
) -> String {
    match retiring {
        Some(r)
            if validated
                && r.key
                    .as_ref()
                    .is_none_or(|k| k.fips_mode != FipsMode::Validated) =>
        {
            format!(
                "NOT YET: converting to FIPS mode validated; until the conversion is done, data not yet converted is {} ({})",
                if r.key.is_none() {
                    "stored in the clear"
                } else {
                    "read with the previous, non-FIPS algorithms (keyed BLAKE3, the default provider)"
                },
                compliance
            )
        }
        _ => compliance,
    }
}

fn print_show(s: &Show) {
    crate::say!("Encryption:        on, {}", s.data_cipher);
    crate::say!("Key generation:    {}", s.keystore.generation);
    if let Some(from) = &s.keystore.converting_from {
        crate::say!("Converting from:   {from} (its data stays readable until converted)");
    }
    if let Some(c) = &s.conversion {
        crate::say!("Conversion:        {}", c.line());
    }
    crate::say!("Fingerprints:      {}", s.fingerprint);
    crate::say!("Metadata:          {}", s.metadata_sealing);
    crate::say!("Key slots wrapped: {}", s.key_slot_wrap);
    crate::say!("FIPS mode:         {:?}", s.fips_mode);
    print_module(s);
    crate::say!("Compliance:        {}", s.compliance);
    crate::say!("Implementation:    {}", s.crypto_implementation);
    crate::say!(
        "Self-tests:        {} at {} ({} vectors)",
        if s.self_test.passed {
            "passed"
        } else {
            "FAILED"
        },
        utc_from_unix(s.self_test.at),
        s.self_test.results.len()
    );
    print_keys(s);
}

/// The crypto module, its certificate and its service counts.
fn print_module(s: &Show) {
    if let Some(m) = &s.crypto_module {
        crate::say!(
            "Crypto module:     {} (FIPS mode {}; module self-tests {})",
            m.name,
            if m.fips_mode { "active" } else { "NOT active" },
            if m.power_on_self_tests {
                "passed"
            } else {
                "FAILED"
            }
        );
    }
    if let Some(e) = &s.module_error {
        crate::say!("Crypto module:     UNAVAILABLE: {e}");
    }
    if let Some(c) = &s.certificate {
        crate::say!("Certificate:       {c}");
    }
    if s.fips_mode == FipsMode::Validated {
        crate::say!("Services (from {}):", s.services_source);
        for c in &s.services {
            crate::say!(
                "  {:<42} {:>10} approved  {:>3} not approved",
                c.service,
                c.approved,
                c.not_approved
            );
        }
    }
}

/// Startup and shipping modes, lock state, memory protection, key slots.
fn print_keys(s: &Show) {
    crate::say!("Startup mode:      {:?}", s.keystore.startup);
    crate::say!(
        "Shipping mode:     {}",
        if s.keystore.shipping_mode {
            "on"
        } else {
            "off"
        }
    );
    if let Some(f) = &s.keystore.boot_key_file {
        crate::say!("Boot key file:     {f}");
    }
    crate::say!("Lock state:        {}", s.lock_state);
    crate::say!("Memory protection: {}", s.memory_protection);
    crate::say!("Key slots:");
    for slot in &s.keystore.slots {
        crate::say!(
            "  #{:<3} {:<9} created {}  {}",
            slot.id,
            format!("{:?}", slot.kind).to_lowercase(),
            utc_from_unix(slot.created),
            slot.kdf
        );
    }
    if s.keystore.loaded_from_backup {
        crate::say!("WARNING: keystore.json is damaged; loaded from keystore.json.bak (`datastore repair` writes it again)");
    }
}

fn set_fips(cli: &Cli, mode: FipsMode, how: super::ConversionArgs) -> Result<(), Failure> {
    let mut cfg = load_config(&cli.store)?;
    if !crate::session::keys::has_keystore(&cli.store) {
        return super::conversion::encrypt_plain_store(cli, mode, how);
    }
    let mut ks = open_keystore(&cli.store)?;
    if ks.retiring().is_some() {
        return super::conversion::continue_conversion(cli, how);
    }
    if ks.fips_mode() == mode {
        crate::say!("FIPS mode is already {mode:?}.");
        return Ok(());
    }
    if super::mount::control(&cli.store, &Request::Status, None)?.is_some()
        || Engine::open_read_only(&cli.store)?.index_summary()?.chunks > 0
    {
        // Data to convert (or a mount that may be writing some).
        return super::conversion::begin(cli, mode, how);
    }
    let password = SecretReader::new().read("Password", cli.password_file.as_deref(), false)?;
    let recovery = ks.set_fips_mode(
        mode,
        password.as_bytes(),
        &KatSet::embedded(),
        &kdf_options(),
    )?;
    cfg.engine.fingerprint = match mode {
        FipsMode::Validated => FingerprintAlg::HmacSha256,
        FipsMode::Disabled => FingerprintAlg::Blake3Keyed,
    };
    cfg.save(&cli.store)
        .map_err(|e| Failure::new(Exit::Io, format!("cannot write datastore.toml: {e}")))?;
    crate::say!("FIPS mode is now {mode:?}; key slots rewrapped.");
    if let Some(rk) = recovery {
        crate::say!("New recovery key (the old one no longer works; shown once):");
        crate::say!("  {}", rk.as_str());
    }
    Ok(())
}

fn password(cli: &Cli, cmd: &PasswordCommand) -> Result<(), Failure> {
    let mut ks = open_keystore(&cli.store)?;
    let mut reader = SecretReader::new();
    let kats = KatSet::embedded();
    match cmd {
        PasswordCommand::Add { new_password_file } => {
            let current = reader.read("Current password", cli.password_file.as_deref(), false)?;
            let new = reader.read("New password", new_password_file.as_deref(), true)?;
            let vk = ks.unlock(current.as_bytes(), &kats)?;
            let id = ks.add_password(&vk, new.as_bytes(), &kdf_options())?;
            crate::say!("Added password slot #{id}.");
        }
        PasswordCommand::Change { new_password_file } => {
            let current = reader.read("Current password", cli.password_file.as_deref(), false)?;
            let new = reader.read("New password", new_password_file.as_deref(), true)?;
            ks.change_password(current.as_bytes(), new.as_bytes(), &kats, &kdf_options())?;
            crate::say!("Password changed; the old one no longer opens the store.");
        }
        PasswordCommand::Remove => {
            let pw = reader.read("Password to remove", cli.password_file.as_deref(), false)?;
            ks.remove_password(pw.as_bytes(), &kats)?;
            crate::say!("Password slot removed.");
        }
    }
    Ok(())
}

fn startup(cli: &Cli, mode: StartupArg) -> Result<(), Failure> {
    let mut ks = open_keystore(&cli.store)?;
    match mode {
        StartupArg::Locked => {
            ks.set_startup(StartupMode::Locked, None)?;
            crate::say!(
                "Startup mode locked: the boot key was destroyed; every start needs the password."
            );
        }
        StartupArg::Unlocked => {
            let pw = SecretReader::new().read("Password", cli.password_file.as_deref(), false)?;
            let vk = ks.unlock(pw.as_bytes(), &KatSet::embedded())?;
            ks.set_startup(StartupMode::Unlocked, Some(&vk))?;
            crate::say!(
                "Startup mode unlocked: boot key in {}.",
                ks.info().boot_key_file.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// What the store's daemon says of its keys, if one runs.
fn lock_state(store: &std::path::Path) -> String {
    match super::mount::control(store, &Request::Status, None) {
        Ok(Some(json)) => match serde_json::from_str::<serde_json::Value>(&json) {
            Ok(v) if v["locked"] == true => "mounted, locked (no key loaded)".into(),
            Ok(_) => "mounted, unlocked (keys loaded in the daemon)".into(),
            Err(_) => "mounted, state unknown".into(),
        },
        _ => "not mounted (no process holds keys)".into(),
    }
}

#[derive(Serialize)]
struct Scan {
    /// Records the index names, by generation.
    records: crate::engine::GenerationScan,
    /// Every record in the segment files, by generation.
    segments: crate::engine::SegmentScan,
    /// Sealed metadata values by key generation ("unencrypted" = plain form).
    metadata: Vec<(String, u64)>,
}

/// `encryption scan`: what every record and metadata value is under.
fn scan(cli: &Cli, json: bool) -> Result<(), Failure> {
    load_config(&cli.store)?;
    let engine = Engine::open_read_only(&cli.store)?;
    let records = engine.scan_generations()?;
    let segments = engine.walk_generations()?;
    let metadata = crate::volume::count_sealed_in(engine.meta())
        .map_err(|e| Failure::new(Exit::Error, e.to_string()))?
        .into_iter()
        .map(|(g, n)| (g.map_or("untagged".into(), |g| g.to_string()), n))
        .collect();
    let s = Scan {
        records,
        segments,
        metadata,
    };
    if json {
        return print_json(&s);
    }
    for c in &s.records.by_generation {
        crate::say!(
            "records  {:<22} {:>10} live {:>10} dead",
            c.generation.to_string(),
            c.live,
            c.dead
        );
    }
    for (g, n) in &s.segments.records_by_generation {
        crate::say!(
            "segments {:<22} {:>10} records (every record in the files, indexed or not)",
            g.to_string(),
            n
        );
    }
    if s.segments.segments_not_local > 0 {
        crate::say!(
            "segments not local (in the bucket only): {}",
            s.segments.segments_not_local
        );
    }
    for (g, n) in &s.metadata {
        crate::say!("metadata {g:<22} {n:>10} values");
    }
    if s.segments.damaged > 0 {
        crate::say!(
            "damaged spans in segments: {} (run `datastore scrub`)",
            s.segments.damaged
        );
    }
    if s.records.unreadable > 0 {
        crate::say!(
            "unreadable records: {} (run `datastore scrub`)",
            s.records.unreadable
        );
    }
    Ok(())
}
