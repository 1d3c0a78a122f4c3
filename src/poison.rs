//! Locks that outlive a panicking holder: `m.locked()`, `rw.read_locked()`,
//! `rw.write_locked()` take the lock and, when a thread panicked while
//! holding it, carry on with the data as that thread left it.
//!
//! Why that is right here: every critical section in this crate is short
//! and leaves its data consistent at each step, and failures that matter
//! are reported through errors (the engine's poison flag stops writes
//! after a failed write). Refusing every later request of a mount that
//! months of work depend on, because one request thread panicked, would
//! turn a bug in one request into an outage.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub trait Recover<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Recover<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub trait RecoverRw<T: ?Sized> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RecoverRw<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|e| e.into_inner())
    }
}
