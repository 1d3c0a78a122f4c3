//! Per-process counts of the validated module's services, as its service
//! indicator reported them: how often each service ran and was reported
//! approved, and how often it was not (each of those was also an error).
//! `encryption show` and the daemon's status print them; tests read them to
//! prove a whole run used approved services only.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    XtsEncrypt,
    XtsDecrypt,
    GcmSeal,
    GcmOpen,
    HmacSha256,
    Sha256,
    Pbkdf2,
    Kbkdf,
    Drbg,
}

const ALL: [Service; 9] = [
    Service::XtsEncrypt,
    Service::XtsDecrypt,
    Service::GcmSeal,
    Service::GcmOpen,
    Service::HmacSha256,
    Service::Sha256,
    Service::Pbkdf2,
    Service::Kbkdf,
    Service::Drbg,
];

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::XtsEncrypt => "AES-XTS-256 encrypt",
            Service::XtsDecrypt => "AES-XTS-256 decrypt",
            Service::GcmSeal => "AES-256-GCM seal (module-generated IV)",
            Service::GcmOpen => "AES-256-GCM open",
            Service::HmacSha256 => "HMAC-SHA-256",
            Service::Sha256 => "SHA-256",
            Service::Pbkdf2 => "PBKDF2-HMAC-SHA-256",
            Service::Kbkdf => "KBKDF (SP 800-108 counter, HMAC-SHA-256)",
            Service::Drbg => "CTR-DRBG (RAND_bytes)",
        }
    }
}

static APPROVED: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];
static NOT_APPROVED: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];

/// Records one completed service call and what the indicator said.
pub fn record(service: Service, approved: bool) {
    let table = if approved { &APPROVED } else { &NOT_APPROVED };
    table[service as usize].fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ServiceCount {
    pub service: String,
    pub approved: u64,
    pub not_approved: u64,
}

/// Every service used so far in this process (count > 0).
pub fn snapshot() -> Vec<ServiceCount> {
    ALL.iter()
        .map(|&s| ServiceCount {
            service: s.name().to_string(),
            approved: APPROVED[s as usize].load(Ordering::Relaxed),
            not_approved: NOT_APPROVED[s as usize].load(Ordering::Relaxed),
        })
        .filter(|c| c.approved + c.not_approved > 0)
        .collect()
}
