//! Provider tests: the two providers agree byte for byte on random inputs,
//! the validated one refuses what the module does not approve, and every
//! service it ran was reported approved.

use super::*;

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn key64(seed: u64) -> [u8; 64] {
    bytes(seed, 64).try_into().unwrap()
}

#[test]
fn default_xts_round_trips_units_of_any_length() {
    let x = Provider::DEFAULT.xts256(&key64(1)).unwrap();
    for len in [16usize, 17, 33, 4095, 65_536] {
        let plain = bytes(len as u64, len);
        let mut buf = plain.clone();
        x.encrypt_unit(&mut buf, &[3; 16]).unwrap();
        assert_ne!(buf, plain);
        x.decrypt_unit(&mut buf, &[3; 16]).unwrap();
        assert_eq!(buf, plain);
    }
}

#[test]
fn the_default_provider_refuses_equal_xts_halves() {
    assert!(Provider::DEFAULT.xts256(&[7u8; 64]).is_err());
}

#[test]
fn kbkdf_of_the_default_provider_is_hmac_of_counter_and_info() {
    let p = Provider::DEFAULT;
    let k = p.kbkdf_hmac_sha256(b"key", b"info").unwrap();
    let h = p.hmac_sha256(b"key").unwrap();
    assert_eq!(k, h.sign(&[&[0, 0, 0, 1], b"info"]).unwrap());
}

#[cfg(feature = "fips")]
mod module {
    use super::*;
    use crate::selftest::KatSet;

    fn validated() -> Provider {
        crate::gate::validated(&KatSet::embedded()).expect("the FIPS module comes up")
    }

    #[test]
    fn the_module_names_itself_and_reports_fips_mode() {
        validated();
        let status = crate::gate::module_status().unwrap().unwrap();
        assert!(status.name.starts_with("AWS-LC FIPS "), "{}", status.name);
        assert!(status.fips_mode && status.power_on_self_tests);
        assert!(status.known_answer_tests.passed);
    }

    #[test]
    fn xts_through_the_module_matches_the_default_provider() {
        let v = validated();
        let lens = [
            16usize,
            17,
            31,
            32,
            100,
            4096,
            4097,
            65_535,
            65_536,
            262_143,
            1 << 20,
        ];
        for (i, &len) in lens.iter().enumerate() {
            for seed in 0..4u64 {
                let s = seed * 100 + i as u64;
                let key = key64(s + 1_000);
                let tweak: [u8; 16] = bytes(s + 2_000, 16).try_into().unwrap();
                let plain = bytes(s + 3_000, len);
                let (soft, module) = (
                    Provider::DEFAULT.xts256(&key).unwrap(),
                    v.xts256(&key).unwrap(),
                );
                let mut a = plain.clone();
                soft.encrypt_unit(&mut a, &tweak).unwrap();
                let mut b = plain.clone();
                module.encrypt_unit(&mut b, &tweak).unwrap();
                assert_eq!(a, b, "ciphertexts differ at length {len}");
                module.decrypt_unit(&mut a, &tweak).unwrap();
                assert_eq!(
                    a, plain,
                    "module cannot decrypt default ciphertext at {len}"
                );
                soft.decrypt_unit(&mut b, &tweak).unwrap();
                assert_eq!(b, plain);
            }
        }
    }

    #[test]
    fn the_module_refuses_out_of_range_xts_units_and_equal_halves() {
        let v = validated();
        assert!(v.xts256(&[9u8; 64]).is_err());
        let x = v.xts256(&key64(5)).unwrap();
        assert!(x.encrypt_unit(&mut [0u8; 15], &[0; 16]).is_err());
        assert!(x
            .encrypt_unit(&mut vec![0u8; (16 << 20) + 1], &[0; 16])
            .is_err());
    }

    #[test]
    fn gcm_sealed_by_either_provider_opens_with_the_other() {
        let v = validated();
        let key: [u8; 32] = bytes(77, 32).try_into().unwrap();
        let (soft, module) = (
            Provider::DEFAULT.aes256_gcm(&key).unwrap(),
            v.aes256_gcm(&key).unwrap(),
        );
        for len in [0usize, 1, 15, 16, 1000] {
            let plain = bytes(len as u64 + 9, len);
            let mut buf = plain.clone();
            let nonce = module.seal_random_nonce(b"aad", &mut buf).unwrap();
            let n = soft.open(nonce, b"aad", &mut buf).unwrap();
            assert_eq!(buf[..n], plain[..]);
            let mut buf = plain.clone();
            let nonce = soft.seal_random_nonce(b"aad", &mut buf).unwrap();
            let n = module.open(nonce, b"aad", &mut buf).unwrap();
            assert_eq!(buf[..n], plain[..]);
            buf[0] ^= 1;
            assert!(matches!(
                module.open(nonce, b"aad", &mut buf),
                Err(KeystoreError::Tampered)
            ));
        }
        // Two seals never reuse an IV.
        let (mut a, mut b) = (b"x".to_vec(), b"x".to_vec());
        assert_ne!(
            module.seal_random_nonce(b"", &mut a).unwrap(),
            module.seal_random_nonce(b"", &mut b).unwrap()
        );
    }

    #[test]
    fn macs_and_kdfs_match_the_default_provider() {
        let v = validated();
        let d = Provider::DEFAULT;
        let key = bytes(3, 32);
        let data = bytes(4, 100_000);
        assert_eq!(
            v.hmac_sha256(&key)
                .unwrap()
                .sign(&[&data[..10], &data[10..]])
                .unwrap(),
            d.hmac_sha256(&key).unwrap().sign(&[&data]).unwrap()
        );
        assert_eq!(v.sha256(&data).unwrap(), d.sha256(&data).unwrap());
        assert_eq!(
            v.kbkdf_hmac_sha256(&key, b"label").unwrap(),
            d.kbkdf_hmac_sha256(&key, b"label").unwrap()
        );
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        v.pbkdf2_sha256(1000, &bytes(5, 16), b"a long password!", &mut a)
            .unwrap();
        d.pbkdf2_sha256(1000, &bytes(5, 16), b"a long password!", &mut b)
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn the_module_refuses_what_it_does_not_approve() {
        let v = validated();
        assert!(matches!(
            v.blake3_keyed(&[1; 32]),
            Err(KeystoreError::NotApproved(_))
        ));
        let params = Argon2Params {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        };
        assert!(matches!(
            v.argon2id(params, b"password", &[0; 16], &mut [0; 32]),
            Err(KeystoreError::NotApproved(_))
        ));
        let gcm = v.aes256_gcm(&[2; 32]).unwrap();
        assert!(matches!(
            gcm.seal_with_nonce([0; 12], b"", &mut b"x".to_vec()),
            Err(KeystoreError::NotApproved(_))
        ));
        // A PBKDF2 salt below 16 bytes: the module's indicator says no.
        let r = v.pbkdf2_sha256(1000, b"short", b"a long password!", &mut [0; 32]);
        assert!(matches!(r, Err(KeystoreError::NotApproved(_))), "{r:?}");
    }

    #[test]
    fn every_service_used_was_counted_approved() {
        let v = validated();
        let mut buf = [0u8; 32];
        v.fill_random(&mut buf).unwrap();
        let x = v.xts256(&key64(8)).unwrap();
        x.encrypt_unit(&mut [1u8; 64], &[0; 16]).unwrap();
        let counts = services::snapshot();
        for name in [
            "CTR-DRBG (RAND_bytes)",
            "AES-XTS-256 encrypt",
            "HMAC-SHA-256",
        ] {
            let c = counts
                .iter()
                .find(|c| c.service == name)
                .unwrap_or_else(|| panic!("{name} missing: {counts:?}"));
            assert!(c.approved > 0, "{c:?}");
        }
    }
}
