//! The keystore of one store: keyslots, startup and shipping modes, FIPS
//! mode, and the verbs that change them (ZFS/LUKS2 style: each one small,
//! each one rewraps or destroys, none touches data).
//!
//! Invariants:
//! - A slot wraps the volume key with AES-256-GCM under a KEK; the AAD binds
//!   the wrap to the store id, slot id, slot kind and KDF parameters, so a
//!   slot cannot be moved or have its cost lowered without failing to open.
//! - Unlock pays the full KDF for every slot it tries: there is no check
//!   that can reject a wrong password before the KDF has run.
//! - The last password slot is never removed (nor the recovery slot by
//!   `remove_password`).
//! - In shipping mode no boot slot and no boot-key file exist.
//! - In FIPS mode `validated` every slot uses PBKDF2 and self-tests pass
//!   before any key is unwrapped.
//! - Slots always wrap the newest key generation. While a conversion runs,
//!   the retiring key is kept only wrapped under the newest key (AES-256-GCM
//!   under a KBKDF key from it), so every slot change covers both; finishing
//!   the conversion rewrites the file and its backup without it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::error::KeystoreError;
use crate::file::{
    decode_hex, destroy_file, KeystoreFile, Retiring, RetiringKey, Shipping, Slot, SlotKind,
    StartupMode,
};
use crate::kdf::Kdf;
use crate::provider::{FipsMode, Provider, GCM_NONCE_LEN, GCM_TAG_LEN};
use crate::secmem::{harden_process, LockedBox};
use crate::selftest::{self, KatSet};
use crate::volume::{VolumeKey, VOLUME_KEY_LEN};

/// Minimum password length in FIPS mode `validated` (SP 800-132 guidance as
/// applied by the validated module's PBKDF2 service).
pub const FIPS_MIN_PASSWORD: usize = 14;
/// Minimum password length otherwise (NIST SP 800-63B's floor for
/// user-chosen secrets). The recovery key is 32 random bytes.
pub const MIN_PASSWORD: usize = 8;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random<const N: usize>(provider: Provider) -> Result<[u8; N], KeystoreError> {
    let mut b = [0u8; N];
    provider.fill_random(&mut b)?;
    Ok(b)
}

/// A 256-bit recovery key, shown once, in 16 groups of 4 hex digits.
pub struct RecoveryKey(Zeroizing<String>);

impl RecoveryKey {
    fn generate(provider: Provider) -> Result<(Self, Zeroizing<[u8; 32]>), KeystoreError> {
        let raw = Zeroizing::new(random::<32>(provider)?);
        let hex = Zeroizing::new(hex::encode(&raw[..]));
        let grouped: Vec<&str> = (0..16).map(|i| &hex[i * 4..i * 4 + 4]).collect();
        Ok((RecoveryKey(Zeroizing::new(grouped.join("-"))), raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 32 key bytes if `text` is a recovery key (dashes and spaces
    /// ignored, any case).
    fn parse(text: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
        let clean: Zeroizing<Vec<u8>> = Zeroizing::new(
            text.iter()
                .filter(|c| !matches!(c, b'-' | b' '))
                .map(|c| c.to_ascii_lowercase())
                .collect(),
        );
        if clean.len() != 64 {
            return None;
        }
        let mut out = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(&clean[..], &mut out[..]).ok()?;
        Some(out)
    }
}

/// Options for new slots.
#[derive(Clone, Copy, Debug)]
pub struct SlotOptions {
    /// Target time of one KDF run when calibrating.
    pub kdf_target: Duration,
}

impl Default for SlotOptions {
    fn default() -> Self {
        SlotOptions {
            kdf_target: Duration::from_secs(1),
        }
    }
}

/// What `encryption show` reports about the keystore (no secrets).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeystoreInfo {
    pub fips_mode: FipsMode,
    pub startup: StartupMode,
    pub shipping_mode: bool,
    pub slots: Vec<SlotInfo>,
    pub boot_key_file: Option<String>,
    pub loaded_from_backup: bool,
    /// Generation of the volume key the slots wrap.
    pub generation: u16,
    /// While a conversion runs: what the unconverted data is under.
    pub converting_from: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotInfo {
    pub id: u32,
    pub kind: SlotKind,
    pub created: u64,
    pub kdf: String,
}

pub struct Keystore {
    dir: PathBuf,
    boot_dir: PathBuf,
    file: KeystoreFile,
    loaded_from_backup: bool,
}

impl Keystore {
    pub fn dir_of(store: &Path) -> PathBuf {
        store.join("keystore")
    }

    fn boot_key_path(&self) -> PathBuf {
        self.boot_dir.join(format!("{}.key", self.file.store_id))
    }

    fn aad(&self, slot_id: u32, kind: SlotKind, kdf: &Option<Kdf>) -> Vec<u8> {
        format!(
            "datastore-keystore-v1|{}|{}|{:?}|{}",
            self.file.store_id,
            slot_id,
            kind,
            serde_json::to_string(kdf).unwrap_or_default()
        )
        .into_bytes()
    }

    fn kdf_for_new_slot(&self, opts: &SlotOptions) -> Result<Kdf, KeystoreError> {
        Kdf::calibrate(
            self.provider()?,
            self.file.fips_mode == FipsMode::Validated,
            opts.kdf_target,
        )
    }

    fn check_password_policy(&self, password: &[u8]) -> Result<(), KeystoreError> {
        if password.is_empty() {
            return Err(KeystoreError::Refused("the password is empty".into()));
        }
        if password.len() < MIN_PASSWORD {
            return Err(KeystoreError::Refused(format!(
                "passwords need at least {MIN_PASSWORD} bytes ({FIPS_MIN_PASSWORD} in FIPS mode)"
            )));
        }
        if self.file.fips_mode == FipsMode::Validated && password.len() < FIPS_MIN_PASSWORD {
            return Err(KeystoreError::Refused(format!(
                "FIPS mode needs passwords of at least {FIPS_MIN_PASSWORD} bytes (PBKDF2 passwords must carry enough entropy for the approved service)"
            )));
        }
        Ok(())
    }

    /// Wraps `vk` under `kek` into a new slot.
    fn wrap(
        &self,
        id: u32,
        kind: SlotKind,
        kdf: Option<Kdf>,
        salt: [u8; 16],
        kek: &[u8; 32],
        vk: &VolumeKey,
    ) -> Result<Slot, KeystoreError> {
        let key = LockedBox::try_new_with(|| self.provider()?.aes256_gcm(kek))?;
        let mut buf = Zeroizing::new(Vec::with_capacity(VOLUME_KEY_LEN + GCM_TAG_LEN));
        buf.extend_from_slice(vk.as_bytes());
        let nonce = key.seal_random_nonce(&self.aad(id, kind, &kdf), &mut buf)?;
        Ok(Slot {
            id,
            kind,
            created: now(),
            kdf,
            salt: hex::encode(salt),
            nonce: hex::encode(nonce),
            wrapped: hex::encode(&buf[..]),
        })
    }

    /// Opens a slot with its KEK; Err(WrongPassword) when the tag fails.
    fn unwrap_slot(&self, slot: &Slot, kek: &[u8; 32]) -> Result<VolumeKey, KeystoreError> {
        let provider = self.provider()?;
        let key = LockedBox::try_new_with(|| provider.aes256_gcm(kek))?;
        let nonce: [u8; GCM_NONCE_LEN] = decode_hex("nonce", &slot.nonce, GCM_NONCE_LEN)?
            .try_into()
            .expect("12");
        let mut buf = LockedBox::new([0u8; VOLUME_KEY_LEN + GCM_TAG_LEN])?;
        let wrapped = Zeroizing::new(decode_hex(
            "wrapped",
            &slot.wrapped,
            VOLUME_KEY_LEN + GCM_TAG_LEN,
        )?);
        buf.copy_from_slice(&wrapped);
        match key.open(
            nonce,
            &self.aad(slot.id, slot.kind, &slot.kdf),
            &mut buf[..],
        ) {
            Ok(_) => {}
            Err(KeystoreError::Tampered) => return Err(KeystoreError::WrongPassword),
            Err(e) => return Err(e),
        }
        let mut vk = LockedBox::new([0u8; VOLUME_KEY_LEN])?;
        vk.copy_from_slice(&buf[..VOLUME_KEY_LEN]);
        Ok(VolumeKey::from_locked(vk, provider))
    }

    fn new_secret_slot(
        &mut self,
        kind: SlotKind,
        secret: &[u8],
        vk: &VolumeKey,
        opts: &SlotOptions,
    ) -> Result<Slot, KeystoreError> {
        let kdf = self.kdf_for_new_slot(opts)?;
        let salt = random::<16>(self.provider()?)?;
        let kek = kdf.derive(self.provider()?, secret, &salt)?;
        let id = self.file.next_slot_id;
        self.file.next_slot_id += 1;
        self.wrap(id, kind, Some(kdf), salt, &kek, vk)
    }

    /// Creates the keystore of a new store. Returns the volume key and the
    /// recovery key (to be shown once).
    pub fn create(
        store: &Path,
        store_id: &str,
        boot_dir: &Path,
        password: &[u8],
        fips: FipsMode,
        opts: &SlotOptions,
    ) -> Result<(Keystore, VolumeKey, RecoveryKey), KeystoreError> {
        Self::create_with(store, store_id, boot_dir, password, fips, opts, None)
    }

    /// Creates the keystore of an unencrypted store that is being converted
    /// to encrypted form: the same as `create`, and marked as converting
    /// from plain data (in one write).
    pub fn create_for_plain_store(
        store: &Path,
        store_id: &str,
        boot_dir: &Path,
        password: &[u8],
        fips: FipsMode,
        opts: &SlotOptions,
    ) -> Result<(Keystore, VolumeKey, RecoveryKey), KeystoreError> {
        let retiring = Retiring {
            since: now(),
            key: None,
        };
        Self::create_with(
            store,
            store_id,
            boot_dir,
            password,
            fips,
            opts,
            Some(retiring),
        )
    }

    fn create_with(
        store: &Path,
        store_id: &str,
        boot_dir: &Path,
        password: &[u8],
        fips: FipsMode,
        opts: &SlotOptions,
        retiring: Option<Retiring>,
    ) -> Result<(Keystore, VolumeKey, RecoveryKey), KeystoreError> {
        let dir = Self::dir_of(store);
        if dir.join(crate::file::FILE_NAME).exists() || dir.join(crate::file::BACKUP_NAME).exists()
        {
            return Err(KeystoreError::Refused(format!(
                "{} already holds a keystore",
                dir.display()
            )));
        }
        let provider = crate::gate::for_mode(fips, &KatSet::embedded())?;
        let mut ks = Keystore {
            dir,
            boot_dir: boot_dir.to_path_buf(),
            file: KeystoreFile {
                format: crate::file::FORMAT_NAME.into(),
                version: crate::file::FORMAT_VERSION,
                store_id: store_id.into(),
                fips_mode: fips,
                startup: StartupMode::Locked,
                shipping: None,
                next_slot_id: 0,
                slots: Vec::new(),
                generation: 0,
                retiring,
                checksum: None,
            },
            loaded_from_backup: false,
        };
        ks.check_password_policy(password)?;
        let vk = VolumeKey::generate(provider)?;
        let slot = ks.new_secret_slot(SlotKind::Password, password, &vk, opts)?;
        ks.file.slots.push(slot);
        let (rk, raw) = RecoveryKey::generate(provider)?;
        let slot = ks.new_secret_slot(SlotKind::Recovery, &raw[..], &vk, opts)?;
        ks.file.slots.push(slot);
        std::fs::create_dir_all(&ks.dir).map_err(|e| KeystoreError::io(&ks.dir, e))?;
        set_mode(&ks.dir, 0o700)?;
        ks.file.save(&ks.dir)?;
        Ok((ks, vk, rk))
    }

    pub fn open(store: &Path, boot_dir: &Path) -> Result<Keystore, KeystoreError> {
        let dir = Self::dir_of(store);
        let (file, loaded_from_backup) = KeystoreFile::load(&dir)?;
        Ok(Keystore {
            dir,
            boot_dir: boot_dir.to_path_buf(),
            file,
            loaded_from_backup,
        })
    }

    pub fn fips_mode(&self) -> FipsMode {
        self.file.fips_mode
    }

    /// Writes the loaded content to both files again (`datastore repair`
    /// after `KeystoreFile::check_copies` found one damaged).
    pub fn write_both_copies(&self) -> Result<(), KeystoreError> {
        self.file.save(&self.dir)
    }

    /// The id of the store this keystore belongs to.
    pub fn store_id(&self) -> &str {
        &self.file.store_id
    }

    /// When the main file was damaged and the backup was loaded: writes
    /// the backup's content to both again. Returns whether it did.
    pub fn restore_main_copy(&self) -> Result<bool, KeystoreError> {
        if !self.loaded_from_backup {
            return Ok(false);
        }
        self.file.save(&self.dir)?;
        Ok(true)
    }

    pub fn startup(&self) -> StartupMode {
        self.file.startup
    }

    pub fn in_shipping_mode(&self) -> bool {
        self.file.shipping.is_some()
    }

    /// The provider this store's FIPS mode needs (in validated mode this
    /// brings the module up once per process, or refuses).
    pub fn provider(&self) -> Result<Provider, KeystoreError> {
        crate::gate::for_mode(self.file.fips_mode, &KatSet::embedded())
    }

    /// Before anything is unwrapped: the provider, and in validated mode
    /// `kats` must pass through it.
    fn gate(&self, kats: &KatSet) -> Result<Provider, KeystoreError> {
        let provider = crate::gate::for_mode(self.file.fips_mode, kats)?;
        if provider.is_validated() {
            selftest::require(kats, provider)?;
        }
        Ok(provider)
    }

    /// Tries `secret` against every password slot (and every recovery slot
    /// when it has the recovery-key form). Returns the slot id that opened.
    fn open_with_secret(&self, secret: &[u8]) -> Result<(u32, VolumeKey), KeystoreError> {
        let recovery = RecoveryKey::parse(secret);
        let mut found = None;
        for slot in &self.file.slots {
            let candidate: &[u8] = match (slot.kind, &recovery) {
                (SlotKind::Password, _) => secret,
                (SlotKind::Recovery, Some(raw)) => &raw[..],
                _ => continue,
            };
            let kdf = slot
                .kdf
                .ok_or_else(|| KeystoreError::Corrupt("slot without KDF".into()))?;
            let salt = decode_hex("salt", &slot.salt, 16)?;
            // Every slot is tried even after a match, so the time an attempt
            // takes says nothing about which slot (if any) matched.
            let kek = kdf.derive(self.provider()?, candidate, &salt)?;
            match self.unwrap_slot(slot, &kek) {
                Ok(vk) if found.is_none() => found = Some((slot.id, vk)),
                Ok(_) | Err(KeystoreError::WrongPassword) => {}
                Err(e) => return Err(e),
            }
        }
        found.ok_or(KeystoreError::WrongPassword)
    }

    /// Unlocks with a password or the recovery key. In validated mode the
    /// self-tests run first and a failure refuses. A successful unlock ends
    /// shipping mode (restoring the previous startup mode) and hardens the
    /// process (not dumpable, no core files).
    pub fn unlock(&mut self, secret: &[u8], kats: &KatSet) -> Result<VolumeKey, KeystoreError> {
        self.gate(kats)?;
        let (_, vk) = self.open_with_secret(secret)?;
        harden_process()?;
        if let Some(ship) = self.file.shipping.take() {
            self.file.startup = StartupMode::Locked;
            if ship.previous_startup == StartupMode::Unlocked {
                self.install_boot_slot(&vk)?;
            }
            self.file.save(&self.dir)?;
        }
        Ok(vk)
    }

    /// The volume key `secret` opens, changing nothing (no shipping-mode
    /// exit, no file written): for commands that only read the store.
    pub fn open_key(&self, secret: &[u8], kats: &KatSet) -> Result<VolumeKey, KeystoreError> {
        self.gate(kats)?;
        let (_, vk) = self.open_with_secret(secret)?;
        harden_process()?;
        Ok(vk)
    }

    /// Unlocks without a password through the boot key, when the startup
    /// mode is `unlocked` and shipping mode is off. Ok(None) means a
    /// password is needed.
    pub fn unlock_at_boot(&self, kats: &KatSet) -> Result<Option<VolumeKey>, KeystoreError> {
        if self.file.startup != StartupMode::Unlocked || self.file.shipping.is_some() {
            return Ok(None);
        }
        let Some(slot) = self.file.slots.iter().find(|s| s.kind == SlotKind::Boot) else {
            return Ok(None);
        };
        let path = self.boot_key_path();
        let raw = match std::fs::read(&path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(KeystoreError::io(&path, e)),
        };
        let kek = LockedBox::new_with(|s| {
            let mut k = [0u8; 32];
            if raw.len() == 32 {
                k.copy_from_slice(&raw);
            }
            s.write(k);
        })?;
        if raw.len() != 32 {
            return Err(KeystoreError::Corrupt(format!(
                "{} is not a boot key",
                path.display()
            )));
        }
        self.gate(kats)?;
        let vk = self.unwrap_slot(slot, &kek)?;
        harden_process()?;
        Ok(Some(vk))
    }

    fn install_boot_slot(&mut self, vk: &VolumeKey) -> Result<(), KeystoreError> {
        self.remove_boot_slot()?;
        std::fs::create_dir_all(&self.boot_dir)
            .map_err(|e| KeystoreError::io(&self.boot_dir, e))?;
        set_mode(&self.boot_dir, 0o700)?;
        let key = LockedBox::new(random::<32>(self.provider()?)?)?;
        let id = self.file.next_slot_id;
        self.file.next_slot_id += 1;
        let slot = self.wrap(id, SlotKind::Boot, None, [0u8; 16], &key, vk)?;
        crate::file::write_atomic(&self.boot_key_path(), &key[..])?;
        self.file.slots.push(slot);
        self.file.startup = StartupMode::Unlocked;
        Ok(())
    }

    fn remove_boot_slot(&mut self) -> Result<(), KeystoreError> {
        self.file.slots.retain(|s| s.kind != SlotKind::Boot);
        destroy_file(&self.boot_key_path())
    }

    /// Switches the startup mode. `unlocked` creates a boot slot and its
    /// root-only key file; `locked` destroys both.
    /// `unlocked` needs the volume key (to wrap it for the boot slot).
    pub fn set_startup(
        &mut self,
        mode: StartupMode,
        vk: Option<&VolumeKey>,
    ) -> Result<(), KeystoreError> {
        if self.file.shipping.is_some() {
            return Err(KeystoreError::Refused(
                "the store is in shipping mode: unlock it with a password first".into(),
            ));
        }
        match (mode, vk) {
            (StartupMode::Unlocked, None) => {
                return Err(KeystoreError::Refused(
                    "switching to unlocked startup needs the password".into(),
                ))
            }
            (StartupMode::Unlocked, Some(vk)) => self.install_boot_slot(vk)?,
            (StartupMode::Locked, _) => {
                self.file.startup = StartupMode::Locked;
                // Save first: the slot disappears from the file before its
                // key file is destroyed.
                self.file.slots.retain(|s| s.kind != SlotKind::Boot);
                self.file.save(&self.dir)?;
                self.remove_boot_slot()?;
            }
        }
        self.file.save(&self.dir)
    }

    /// Shipping mode: destroys every persistent unwrapping secret except the
    /// password and recovery slots; the next start is locked.
    pub fn enter_shipping_mode(&mut self) -> Result<(), KeystoreError> {
        if self.file.shipping.is_none() {
            self.file.shipping = Some(Shipping {
                previous_startup: self.file.startup,
                since: now(),
            });
        }
        self.file.startup = StartupMode::Locked;
        self.file.slots.retain(|s| s.kind != SlotKind::Boot);
        self.file.save(&self.dir)?;
        self.remove_boot_slot()?;
        self.file.save(&self.dir)
    }

    /// Adds a password slot (the caller proved access by unlocking).
    pub fn add_password(
        &mut self,
        vk: &VolumeKey,
        new_password: &[u8],
        opts: &SlotOptions,
    ) -> Result<u32, KeystoreError> {
        self.check_password_policy(new_password)?;
        let slot = self.new_secret_slot(SlotKind::Password, new_password, vk, opts)?;
        let id = slot.id;
        self.file.slots.push(slot);
        self.file.save(&self.dir)?;
        Ok(id)
    }

    /// Rewraps the slot that `old` opens under `new` (data untouched).
    pub fn change_password(
        &mut self,
        old: &[u8],
        new: &[u8],
        kats: &KatSet,
        opts: &SlotOptions,
    ) -> Result<(), KeystoreError> {
        self.check_password_policy(new)?;
        self.gate(kats)?;
        let (id, vk) = self.open_with_secret(old)?;
        let pos = self
            .file
            .slots
            .iter()
            .position(|s| s.id == id)
            .expect("slot exists");
        if self.file.slots[pos].kind != SlotKind::Password {
            return Err(KeystoreError::Refused(
                "that is the recovery key; use `password add` to add a password".into(),
            ));
        }
        let slot = self.new_secret_slot(SlotKind::Password, new, &vk, opts)?;
        self.file.slots[pos] = slot;
        self.file.save(&self.dir)
    }

    /// Removes the password slot that `password` opens; refuses to remove
    /// the last password slot (and the recovery slot is no password).
    pub fn remove_password(&mut self, password: &[u8], kats: &KatSet) -> Result<(), KeystoreError> {
        self.gate(kats)?;
        let (id, _vk) = self.open_with_secret(password)?;
        let other_passwords = self
            .file
            .slots
            .iter()
            .filter(|s| s.kind == SlotKind::Password && s.id != id)
            .count();
        if other_passwords == 0 {
            return Err(KeystoreError::Refused(
                "refusing to remove the last password: add another one first (the recovery key is for emergencies)".into(),
            ));
        }
        let kind = self.file.slots.iter().find(|s| s.id == id).map(|s| s.kind);
        if kind != Some(SlotKind::Password) {
            return Err(KeystoreError::Refused(
                "that secret is the recovery key, not a password".into(),
            ));
        }
        self.file.slots.retain(|s| s.id != id);
        self.file.save(&self.dir)
    }

    /// Switches FIPS mode on a keystore: rewraps the password slot that
    /// `password` opens with the new mode's KDF, reissues the recovery key,
    /// and rewraps the boot slot. Refuses when other password slots exist
    /// (their passwords are not known here to rewrap them).
    pub fn set_fips_mode(
        &mut self,
        mode: FipsMode,
        password: &[u8],
        kats: &KatSet,
        opts: &SlotOptions,
    ) -> Result<Option<RecoveryKey>, KeystoreError> {
        if self.file.fips_mode == mode {
            return Ok(None);
        }
        self.check_rewrap(mode, kats)?;
        let (_, vk) = self.open_with_secret(password)?;
        let old = self.file.clone();
        self.file.fips_mode = mode;
        if let Err(e) = self.check_password_policy(password) {
            self.file = old;
            return Err(e);
        }
        let rk = self.replace_slots(password, &vk, opts)?;
        self.file.save(&self.dir)?;
        Ok(Some(rk))
    }

    /// Before slots are rewrapped for `mode`: only one password slot (the
    /// others' passwords are unknown here), and in validated mode the
    /// module and its self-tests must come up; then the current gate.
    fn check_rewrap(&self, mode: FipsMode, kats: &KatSet) -> Result<(), KeystoreError> {
        let passwords = self
            .file
            .slots
            .iter()
            .filter(|s| s.kind == SlotKind::Password)
            .count();
        if passwords > 1 {
            return Err(KeystoreError::Refused(format!(
                "the store has {passwords} password slots and only the one entered can be rewrapped: remove the others first (datastore encryption password remove)"
            )));
        }
        if mode == FipsMode::Validated {
            selftest::require(kats, crate::gate::validated(kats)?)?;
        }
        self.gate(kats).map(drop)
    }

    /// Replaces every slot by a password slot for `password`, a new
    /// recovery slot (returned, to show once) and, if there was one, a new
    /// boot slot, all wrapping `vk` (the caller saves).
    fn replace_slots(
        &mut self,
        password: &[u8],
        vk: &VolumeKey,
        opts: &SlotOptions,
    ) -> Result<RecoveryKey, KeystoreError> {
        let had_boot = self.file.slots.iter().any(|s| s.kind == SlotKind::Boot);
        self.file.slots.clear();
        let slot = self.new_secret_slot(SlotKind::Password, password, vk, opts)?;
        self.file.slots.push(slot);
        let (rk, raw) = RecoveryKey::generate(self.provider()?)?;
        let slot = self.new_secret_slot(SlotKind::Recovery, &raw[..], vk, opts)?;
        self.file.slots.push(slot);
        if had_boot {
            self.install_boot_slot(vk)?;
        }
        Ok(rk)
    }

    /// Generation of the current volume key.
    pub fn generation(&self) -> u16 {
        self.file.generation
    }

    /// What a running conversion converts from, if one runs.
    pub fn retiring(&self) -> Option<&Retiring> {
        self.file.retiring.as_ref()
    }

    fn retiring_aad(&self, generation: u16) -> Vec<u8> {
        format!(
            "datastore-retiring-v1|{}|{}|{}",
            self.file.store_id, self.file.generation, generation
        )
        .into_bytes()
    }

    /// The KEK the retiring key is wrapped under: derived from the newest
    /// volume key, so whoever can unwrap the newest can read the old data.
    fn retiring_kek(current: &VolumeKey) -> Result<LockedBox<[u8; 32]>, KeystoreError> {
        let p = current.provider();
        let mut k = p.kbkdf_hmac_sha256(current.as_bytes(), b"datastore retiring key v1")?;
        let boxed = LockedBox::new(k);
        zeroize::Zeroize::zeroize(&mut k);
        boxed
    }

    /// Starts a conversion to a new volume key (key rotation, or a FIPS
    /// mode switch when `target` differs): unlocks with `password`,
    /// generates the new key with `target`'s provider, rewraps the password
    /// slot (under `target`'s KDF), reissues the recovery key, reinstalls
    /// the boot slot if there was one, and keeps the old key wrapped under
    /// the new one until `finish_conversion`. Refuses while another
    /// conversion runs, and when other password slots exist (their
    /// passwords are not known here to rewrap them).
    pub fn begin_conversion(
        &mut self,
        password: &[u8],
        target: FipsMode,
        kats: &KatSet,
        opts: &SlotOptions,
    ) -> Result<(VolumeKey, RecoveryKey), KeystoreError> {
        if self.file.retiring.is_some() {
            return Err(KeystoreError::Refused(
                "a conversion is already running; it must finish first".into(),
            ));
        }
        let generation = self
            .file
            .generation
            .checked_add(1)
            .filter(|g| *g <= 254)
            .ok_or_else(|| KeystoreError::Refused("key generations exhausted (254)".into()))?;
        self.check_rewrap(target, kats)?;
        let (id, old) = self.open_with_secret(password)?;
        if self
            .file
            .slots
            .iter()
            .any(|s| s.id == id && s.kind != SlotKind::Password)
        {
            return Err(KeystoreError::Refused(
                "enter the password, not the recovery key: the password slot is rewrapped".into(),
            ));
        }
        let before = self.file.clone();
        let result = (|| {
            self.file.fips_mode = target;
            self.check_password_policy(password)?;
            let provider = self.provider()?;
            let new = VolumeKey::generate(provider)?;
            let previous_generation = self.file.generation;
            self.file.generation = generation;
            let kek = Self::retiring_kek(&new)?;
            let key = LockedBox::try_new_with(|| provider.aes256_gcm(&kek))?;
            let mut buf = Zeroizing::new(Vec::with_capacity(VOLUME_KEY_LEN + GCM_TAG_LEN));
            buf.extend_from_slice(old.as_bytes());
            let nonce = key.seal_random_nonce(&self.retiring_aad(previous_generation), &mut buf)?;
            self.file.retiring = Some(Retiring {
                since: now(),
                key: Some(RetiringKey {
                    generation: previous_generation,
                    fips_mode: before.fips_mode,
                    nonce: hex::encode(nonce),
                    wrapped: hex::encode(&buf[..]),
                }),
            });
            let rk = self.replace_slots(password, &new, opts)?;
            self.file.save(&self.dir)?;
            Ok((new, rk))
        })();
        if result.is_err() {
            self.file = before;
        }
        result
    }

    /// The retiring volume key of a running conversion, unwrapped with the
    /// current one (None when no conversion runs or the data was plain).
    /// Its key objects must be made with the provider of the mode it was
    /// used in, which the returned key carries.
    pub fn retiring_key(&self, current: &VolumeKey) -> Result<Option<VolumeKey>, KeystoreError> {
        let Some(rk) = self.file.retiring.as_ref().and_then(|r| r.key.as_ref()) else {
            return Ok(None);
        };
        let kek = Self::retiring_kek(current)?;
        let key = LockedBox::try_new_with(|| current.provider().aes256_gcm(&kek))?;
        let nonce: [u8; GCM_NONCE_LEN] = decode_hex("retiring nonce", &rk.nonce, GCM_NONCE_LEN)?
            .try_into()
            .expect("12");
        let mut buf = LockedBox::new([0u8; VOLUME_KEY_LEN + GCM_TAG_LEN])?;
        buf.copy_from_slice(&Zeroizing::new(decode_hex(
            "retiring key",
            &rk.wrapped,
            VOLUME_KEY_LEN + GCM_TAG_LEN,
        )?));
        key.open(nonce, &self.retiring_aad(rk.generation), &mut buf[..])?;
        let mut vk = LockedBox::new([0u8; VOLUME_KEY_LEN])?;
        vk.copy_from_slice(&buf[..VOLUME_KEY_LEN]);
        let provider = crate::gate::for_mode(rk.fips_mode, &KatSet::embedded())?;
        Ok(Some(VolumeKey::from_locked(vk, provider)))
    }

    /// Ends a conversion: the retiring key leaves the keystore file and its
    /// backup (both rewritten). Call only once no record or metadata value
    /// under it is left.
    pub fn finish_conversion(&mut self) -> Result<(), KeystoreError> {
        if self.file.retiring.take().is_some() {
            self.file.save(&self.dir)?;
        }
        Ok(())
    }

    pub fn info(&self) -> KeystoreInfo {
        KeystoreInfo {
            fips_mode: self.file.fips_mode,
            startup: self.file.startup,
            shipping_mode: self.file.shipping.is_some(),
            slots: self
                .file
                .slots
                .iter()
                .map(|s| SlotInfo {
                    id: s.id,
                    kind: s.kind,
                    created: s.created,
                    kdf: s
                        .kdf
                        .map(|k| k.describe())
                        .unwrap_or_else(|| "boot key file".into()),
                })
                .collect(),
            boot_key_file: self
                .file
                .slots
                .iter()
                .any(|s| s.kind == SlotKind::Boot)
                .then(|| self.boot_key_path().display().to_string()),
            loaded_from_backup: self.loaded_from_backup,
            generation: self.file.generation,
            converting_from: self.file.retiring.as_ref().map(|r| match &r.key {
                Some(k) => format!(
                    "key generation {} (FIPS mode {:?})",
                    k.generation, k.fips_mode
                ),
                None => "unencrypted data".into(),
            }),
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), KeystoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| KeystoreError::io(path, e))
}
