//! Keystore must-show 2 with the engine: data written under the volume key
//! reads back after the password changed (rewrap only), and a wrong key
//! set cannot read it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use datastore::config::EngineConfig;
use datastore::crypto::{ChunkCrypto, FingerprintAlg};
use datastore::engine::{Engine, EngineError};
use keystore::{FipsMode, KatSet, Keystore, SlotOptions};

fn crypto_of(vk: &keystore::VolumeKey) -> Arc<ChunkCrypto> {
    Arc::new(
        ChunkCrypto::new(
            vk.provider(),
            vk.xts_key(),
            vk.fingerprint_key(),
            FingerprintAlg::Blake3Keyed,
        )
        .unwrap(),
    )
}

#[test]
fn data_reads_back_after_password_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();
    let boot = dir.path().join("boot");
    let opts = SlotOptions {
        kdf_target: Duration::from_millis(1),
    };
    let (_ks, vk, _rk) = Keystore::create(
        store,
        "s1",
        &boot,
        b"first password",
        FipsMode::Disabled,
        &opts,
    )
    .unwrap();
    Engine::create(store, "s1", &EngineConfig::default()).unwrap();
    let data = common::random_bytes(77, 5 << 20);
    let recipe = {
        let e = Engine::open(store, Some(crypto_of(&vk))).unwrap();
        let r = e.put_bytes(&data).unwrap();
        e.commit(true).unwrap();
        r
    };
    drop(vk);
    let mut ks = Keystore::open(store, &boot).unwrap();
    ks.change_password(
        b"first password",
        b"second password",
        &KatSet::embedded(),
        &opts,
    )
    .unwrap();
    let mut ks = Keystore::open(store, &boot).unwrap();
    assert!(ks.unlock(b"first password", &KatSet::embedded()).is_err());
    let vk = ks.unlock(b"second password", &KatSet::embedded()).unwrap();
    let e = Engine::open(store, Some(crypto_of(&vk))).unwrap();
    assert_eq!(e.read_to_vec(&recipe).unwrap(), data);
    drop(e);
    // Another store's keys cannot read this data: the fingerprint check fails.
    let other = tempfile::tempdir().unwrap();
    let (_k2, vk2, _r2) = Keystore::create(
        other.path(),
        "s2",
        &boot,
        b"other password",
        FipsMode::Disabled,
        &opts,
    )
    .unwrap();
    let e = Engine::open(store, Some(crypto_of(&vk2))).unwrap();
    assert!(matches!(
        e.read_to_vec(&recipe),
        Err(EngineError::Integrity { .. })
    ));
}
