//! The only `unsafe` code of the validated provider: direct calls into
//! AWS-LC's FIPS module (aws-lc-fips-sys, the same crate and version that
//! aws-lc-rs links, so there is one module in the binary) for what aws-lc-rs
//! does not offer: AES-XTS-256 through the EVP API, PBKDF2 without a panic
//! path, the service indicator, the module's self-tests and its name.
//!
//! XTS rules the module sets and this file keeps: one EVP_CipherUpdate per
//! data unit followed by EVP_CipherFinal_ex (the module counts the service
//! as approved only at Final); data units of 16 bytes .. 16 MiB; K1 != K2.
//! A fresh EVP context is made per data unit from the key held in locked
//! memory and freed (the module cleanses it) right after, so no long-lived
//! key schedule sits in the module's heap; the stack the module used is
//! wiped after every call.

use std::ffi::CStr;
use std::os::raw::c_int;

use aws_lc_fips_sys as sys;

use super::services::{self, Service};
use crate::error::KeystoreError;
use crate::xts::{MAX_UNIT, MIN_UNIT};

/// Runs `call`, asks the module's service indicator whether it counted an
/// approved service, records the answer, and turns "not approved" into an
/// error. A call that failed is returned as its own error (it produced no
/// output to vouch for).
pub fn indicated<T>(
    service: Service,
    call: impl FnOnce() -> Result<T, KeystoreError>,
) -> Result<T, KeystoreError> {
    // SAFETY: plain calls into the module's per-thread indicator.
    let before = unsafe { sys::FIPS_service_indicator_before_call() };
    let out = call();
    // SAFETY: as above.
    let after = unsafe { sys::FIPS_service_indicator_after_call() };
    // The module's code may have left key schedule words in stack memory
    // below this frame: wipe them before anything else runs here.
    crate::secmem::scrub_stack_words::<2048>();
    let out = out?;
    let approved = before != after;
    services::record(service, approved);
    if approved {
        Ok(out)
    } else {
        Err(super::not_approved(service.name()))
    }
}

/// The module's own name and version ("AWS-LC FIPS 3.6.0").
pub fn module_name() -> String {
    aws_lc_rs::init();
    // SAFETY: OpenSSL_version returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(sys::OpenSSL_version(sys::OPENSSL_VERSION)) }
        .to_string_lossy()
        .into_owned()
}

/// `FIPS_mode()` == 1.
pub fn fips_mode() -> bool {
    aws_lc_rs::try_fips_mode().is_ok()
}

/// Runs the module's full self-tests now (KATs of every approved
/// algorithm); true when they pass.
pub fn module_self_test() -> bool {
    aws_lc_rs::init();
    // SAFETY: no arguments; returns 1 on success.
    unsafe { sys::BORINGSSL_self_test() == 1 }
}

pub fn pbkdf2_sha256(
    iterations: u32,
    salt: &[u8],
    password: &[u8],
    out: &mut [u8],
) -> Result<(), KeystoreError> {
    aws_lc_rs::init();
    indicated(Service::Pbkdf2, || {
        // SAFETY: pointers and lengths come from live slices.
        let ok = unsafe {
            sys::PKCS5_PBKDF2_HMAC(
                password.as_ptr().cast(),
                password.len(),
                salt.as_ptr(),
                salt.len(),
                iterations,
                sys::EVP_sha256(),
                out.len(),
                out.as_mut_ptr(),
            )
        };
        if ok == 1 {
            Ok(())
        } else {
            Err(KeystoreError::Crypto("the FIPS module refused PBKDF2"))
        }
    })
}

/// An AES-XTS-256 key for the module; the bytes live wherever the owner
/// keeps this value (a `LockedBox`), and are zeroized on drop.
pub struct EvpXts {
    key: [u8; 64],
}

impl Drop for EvpXts {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// Frees an EVP context on every path.
struct Ctx(*mut sys::EVP_CIPHER_CTX);

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: made by EVP_CIPHER_CTX_new; freed once (cleanses it).
        unsafe { sys::EVP_CIPHER_CTX_free(self.0) }
    }
}

impl EvpXts {
    pub fn new(key: &[u8; 64]) -> Self {
        aws_lc_rs::init();
        EvpXts { key: *key }
    }

    /// Encrypts (`encrypt`) or decrypts one data unit in place.
    pub fn transform(
        &self,
        unit: &mut [u8],
        tweak: &[u8; 16],
        encrypt: bool,
    ) -> Result<(), KeystoreError> {
        if !(MIN_UNIT..=MAX_UNIT).contains(&unit.len()) {
            return Err(KeystoreError::Crypto(
                "XTS data unit outside 16 bytes .. 16 MiB",
            ));
        }
        let service = if encrypt {
            Service::XtsEncrypt
        } else {
            Service::XtsDecrypt
        };
        let failed = KeystoreError::Crypto("the FIPS module's AES-XTS-256 failed");
        indicated(service, || {
            // SAFETY: the context is ours until `Ctx` drops it; key, tweak
            // and unit are live for the calls; XTS output length equals
            // input length and is written in place (the module supports
            // in == out for XTS); lengths fit in c_int (<= 16 MiB).
            unsafe {
                let ctx = Ctx(sys::EVP_CIPHER_CTX_new());
                if ctx.0.is_null() {
                    return Err(failed);
                }
                if sys::EVP_CipherInit_ex(
                    ctx.0,
                    sys::EVP_aes_256_xts(),
                    std::ptr::null_mut(),
                    self.key.as_ptr(),
                    tweak.as_ptr(),
                    c_int::from(encrypt),
                ) != 1
                {
                    return Err(failed);
                }
                let mut written: c_int = 0;
                let ptr = unit.as_mut_ptr();
                if sys::EVP_CipherUpdate(ctx.0, ptr, &mut written, ptr, unit.len() as c_int) != 1
                    || written as usize != unit.len()
                {
                    return Err(failed);
                }
                let mut tail: c_int = 0;
                if sys::EVP_CipherFinal_ex(ctx.0, ptr.add(unit.len()), &mut tail) != 1 || tail != 0
                {
                    return Err(failed);
                }
            }
            Ok(())
        })
    }
}
