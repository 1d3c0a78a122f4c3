//! The gate in front of the validated provider: once per process the FIPS
//! module must report FIPS mode, pass its own power-on self-tests and pass
//! the project's known-answer vectors through its services before any
//! validated `Provider` is handed out. Sits above `provider` and `selftest`
//! (it runs the one through the other), so neither names the other.
//!
//! Invariant: a failed bring-up is remembered for the process; every later
//! request for the validated provider is refused with the same reason.

use std::sync::OnceLock;

use crate::error::{KeystoreError, ModuleError};
use crate::provider::{FipsMode, Provider};
use crate::selftest::{self, KatSet, SelfTestReport};

/// What the validated module said about itself when it was brought up.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ModuleStatus {
    /// The module's own name and version at run time ("AWS-LC FIPS 3.6.0").
    pub name: String,
    /// `FIPS_mode()` reported 1.
    pub fips_mode: bool,
    /// The module's self-tests (`BORINGSSL_self_test`) passed.
    pub power_on_self_tests: bool,
    /// The project's known-answer tests, run through the module.
    pub known_answer_tests: SelfTestReport,
}

static MODULE: OnceLock<Result<ModuleStatus, ModuleError>> = OnceLock::new();

/// Brings up the validated provider once per process: the module must
/// report FIPS mode, pass its own self-tests and pass `kats` through its
/// services. Any failure refuses (and keeps refusing in this process).
pub fn validated(kats: &KatSet) -> Result<Provider, KeystoreError> {
    match MODULE.get_or_init(|| bring_up(kats)) {
        Ok(_) => Ok(Provider::MODULE_UNCHECKED),
        Err(why) => Err(KeystoreError::SelfTest(why.to_string())),
    }
}

/// The provider a store in `mode` must use.
pub fn for_mode(mode: FipsMode, kats: &KatSet) -> Result<Provider, KeystoreError> {
    match mode {
        FipsMode::Validated => validated(kats),
        FipsMode::Disabled => Ok(Provider::DEFAULT),
    }
}

/// The module's status if the validated provider was brought up (or
/// tried) in this process.
pub fn module_status() -> Option<Result<ModuleStatus, ModuleError>> {
    MODULE.get().cloned()
}

#[cfg(feature = "fips")]
fn bring_up(kats: &KatSet) -> Result<ModuleStatus, ModuleError> {
    let identity = crate::provider::bring_up_module()?;
    // Test builds can simulate a failing vector (see `provider::break_test`).
    let broken;
    let kats = if crate::provider::break_test("kat") {
        broken = kats.corrupted();
        &broken
    } else {
        kats
    };
    let report = selftest::run(kats, Provider::MODULE_UNCHECKED);
    if !report.passed {
        let failed = report.results.iter().filter(|l| l.contains("FAILED"));
        return Err(ModuleError::KnownAnswers {
            name: identity.name,
            failed: failed.cloned().collect(),
        });
    }
    Ok(ModuleStatus {
        name: identity.name,
        fips_mode: identity.fips_mode,
        power_on_self_tests: identity.power_on_self_tests,
        known_answer_tests: report,
    })
}

#[cfg(not(feature = "fips"))]
fn bring_up(kats: &KatSet) -> Result<ModuleStatus, ModuleError> {
    let _ = (kats, selftest::run);
    Err(ModuleError::NotBuiltIn)
}
