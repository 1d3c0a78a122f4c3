//! Sealed blobs for the bucket (metadata checkpoints, the store config, the
//! head pointer): AES-256-GCM through the store's crypto provider under the
//! mirror key (KBKDF from the metadata key), in pieces of at most 4 MiB, each
//! with a random (module-generated in validated mode) IV. The AAD binds every
//! piece to the blob's name, its index and the piece count, so pieces cannot
//! be reordered, dropped, or moved to another object.
//!
//! Format: "DSB1" || piece count (u32 LE) || per piece: nonce (12) ||
//! length of ciphertext (u32 LE) || ciphertext || tag (16).

use keystore::provider::{GCM_NONCE_LEN, GCM_TAG_LEN};
use keystore::{GcmKey, KeystoreError};

const MAGIC: &[u8; 4] = b"DSB1";
const PIECE: usize = 4 << 20;

fn aad(name: &str, index: u32, count: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(name.len() + 8);
    a.extend_from_slice(name.as_bytes());
    a.extend_from_slice(&index.to_le_bytes());
    a.extend_from_slice(&count.to_le_bytes());
    a
}

pub fn seal(key: &GcmKey, name: &str, plain: &[u8]) -> Result<Vec<u8>, KeystoreError> {
    let pieces: Vec<&[u8]> = if plain.is_empty() {
        vec![&[][..]]
    } else {
        plain.chunks(PIECE).collect()
    };
    let count = pieces.len() as u32;
    let mut out = Vec::with_capacity(plain.len() + 8 + pieces.len() * 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&count.to_le_bytes());
    for (i, p) in pieces.iter().enumerate() {
        let mut body = p.to_vec();
        let nonce = key.seal_random_nonce(&aad(name, i as u32, count), &mut body)?;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&((body.len() - GCM_TAG_LEN) as u32).to_le_bytes());
        out.extend_from_slice(&body);
    }
    Ok(out)
}

pub fn open(key: &GcmKey, name: &str, sealed: &[u8]) -> Result<Vec<u8>, KeystoreError> {
    let bad = || KeystoreError::Corrupt(format!("remote object {name} is not a sealed blob"));
    if sealed.len() < 8 || &sealed[..4] != MAGIC {
        return Err(bad());
    }
    let count = u32::from_le_bytes(sealed[4..8].try_into().expect("4 bytes"));
    let mut at = 8usize;
    let mut out = Vec::with_capacity(sealed.len());
    for i in 0..count {
        if sealed.len() < at + GCM_NONCE_LEN + 4 {
            return Err(bad());
        }
        let nonce: [u8; GCM_NONCE_LEN] = sealed[at..at + GCM_NONCE_LEN].try_into().expect("12");
        at += GCM_NONCE_LEN;
        let len = u32::from_le_bytes(sealed[at..at + 4].try_into().expect("4")) as usize;
        at += 4;
        let end = at
            .checked_add(len + GCM_TAG_LEN)
            .filter(|&e| e <= sealed.len())
            .ok_or_else(bad)?;
        let mut body = sealed[at..end].to_vec();
        let n = key.open(nonce, &aad(name, i, count), &mut body)?;
        out.extend_from_slice(&body[..n]);
        at = end;
    }
    if at != sealed.len() {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keystore::Provider;

    #[test]
    fn blobs_round_trip_and_refuse_tampering_or_another_name() {
        let key = Provider::DEFAULT.aes256_gcm(&[4; 32]).unwrap();
        for len in [0usize, 1, PIECE, PIECE + 17] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let s = seal(&key, "ckpt/1", &plain).unwrap();
            assert_eq!(open(&key, "ckpt/1", &s).unwrap(), plain);
            assert!(open(&key, "ckpt/2", &s).is_err(), "moved to another name");
            let mut t = s.clone();
            let last = t.len() - 1;
            t[last] ^= 1;
            assert!(open(&key, "ckpt/1", &t).is_err());
            assert!(open(&key, "ckpt/1", &s[..s.len() - 1]).is_err());
        }
    }
}
