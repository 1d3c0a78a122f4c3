//! Locked, no-dump, zeroize-on-drop memory for key material.
//!
//! Owns: `LockedBox<T>`, a single value placed on its own anonymous pages that
//! are `mlock`ed (never swapped) and marked `MADV_DONTDUMP` (never in a core
//! dump). On drop the value's destructor runs, then every byte of the pages is
//! overwritten with zeros (volatile writes) before the pages are unlocked and
//! unmapped.
//!
//! Invariants: a `LockedBox` exists only if both `mlock` and `madvise`
//! succeeded (fail closed: no silent fallback to ordinary heap memory); the
//! pages are private to this process and never shared with a child.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::KeystoreError;

/// Bytes currently held in locked pages by this process (for `show`/tests).
static LOCKED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A `T` living on locked, no-dump pages, zeroized when dropped.
pub struct LockedBox<T> {
    ptr: NonNull<T>,
    map_len: usize,
    _owns: PhantomData<T>,
}

// SAFETY: LockedBox owns its T exclusively (like Box<T>).
unsafe impl<T: Send> Send for LockedBox<T> {}
// SAFETY: shared access only hands out &T.
unsafe impl<T: Sync> Sync for LockedBox<T> {}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n <= 0 {
        4096
    } else {
        n as usize
    }
}

impl<T> LockedBox<T> {
    /// Maps locked pages and builds the value in place with `init`, which
    /// writes through the raw pointer so the value never lives on the stack.
    ///
    /// # Safety contract for `init`
    /// `init` must fully initialise the `T` it is given.
    pub fn new_with(
        init: impl FnOnce(&mut std::mem::MaybeUninit<T>),
    ) -> Result<Self, KeystoreError> {
        Self::build(|slot| {
            init(slot);
            Ok(())
        })
    }

    /// Like `new_with`, for values whose construction can fail (a key
    /// object the crypto provider builds): on failure the pages are wiped
    /// and unmapped and the error is returned.
    pub fn try_new_with(
        make: impl FnOnce() -> Result<T, KeystoreError>,
    ) -> Result<Self, KeystoreError> {
        Self::build(|slot| {
            slot.write(make()?);
            Ok(())
        })
    }

    fn build(
        init: impl FnOnce(&mut std::mem::MaybeUninit<T>) -> Result<(), KeystoreError>,
    ) -> Result<Self, KeystoreError> {
        let size = std::mem::size_of::<T>().max(1);
        assert!(std::mem::align_of::<T>() <= page_size());
        let page = page_size();
        let map_len = size.div_ceil(page) * page;
        // SAFETY: anonymous private mapping; arguments are valid.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(KeystoreError::SecureMemory(format!(
                "mmap: {}",
                std::io::Error::last_os_error()
            )));
        }
        let unmap = |why: String| {
            // SAFETY: addr/map_len come from the successful mmap above.
            unsafe { libc::munmap(addr, map_len) };
            Err(KeystoreError::SecureMemory(why))
        };
        // SAFETY: the range is our own mapping.
        if unsafe { libc::madvise(addr, map_len, libc::MADV_DONTDUMP) } != 0 {
            return unmap(format!(
                "madvise(DONTDUMP): {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the range is our own mapping.
        if unsafe { libc::madvise(addr, map_len, libc::MADV_DONTFORK) } != 0 {
            return unmap(format!(
                "madvise(DONTFORK): {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the range is our own mapping.
        if unsafe { libc::mlock(addr, map_len) } != 0 {
            return unmap(format!(
                "mlock of {map_len} bytes: {} (raise RLIMIT_MEMLOCK or run as root)",
                std::io::Error::last_os_error()
            ));
        }
        LOCKED_BYTES.fetch_add(map_len, Ordering::Relaxed);
        let ptr = addr as *mut std::mem::MaybeUninit<T>;
        // SAFETY: the mapping is large enough and page-aligned for T.
        let built = init(unsafe { &mut *ptr });
        // Whatever `init` built on the stack before moving it here (a key
        // schedule, a key copy) is still below this frame: wipe it.
        scrub_stack();
        if let Err(e) = built {
            // SAFETY: our own mapping; nothing was initialised in it.
            unsafe {
                std::ptr::write_bytes(addr as *mut u8, 0, map_len);
                libc::munlock(addr, map_len);
                libc::munmap(addr, map_len);
            }
            LOCKED_BYTES.fetch_sub(map_len, Ordering::Relaxed);
            return Err(e);
        }
        Ok(LockedBox {
            ptr: NonNull::new(addr as *mut T).expect("mmap returned non-null"),
            map_len,
            _owns: PhantomData,
        })
    }

    /// Moves `value` into locked memory. The caller's copy is the caller's
    /// to wipe; prefer `new_with` for key bytes.
    pub fn new(value: T) -> Result<Self, KeystoreError> {
        let mut value = Some(value);
        Self::new_with(|slot| {
            slot.write(value.take().expect("value present"));
        })
    }
}

impl<T> std::ops::Deref for LockedBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: initialised in new_with, valid until drop.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> std::ops::DerefMut for LockedBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: unique access through &mut self.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> Drop for LockedBox<T> {
    fn drop(&mut self) {
        let base = self.ptr.as_ptr() as *mut u8;
        // SAFETY: the value is initialised; drop it in place, then wipe and
        // release the pages we mapped.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            for i in 0..self.map_len {
                std::ptr::write_volatile(base.add(i), 0);
            }
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
            libc::munlock(base as *mut libc::c_void, self.map_len);
            libc::munmap(base as *mut libc::c_void, self.map_len);
        }
        LOCKED_BYTES.fetch_sub(self.map_len, Ordering::Relaxed);
    }
}

/// Overwrites the 64 KiB of stack below the caller's frame with zeros, so
/// key material that finished callees left there does not linger (and
/// cannot reach a core dump or swap).
#[inline(never)]
pub fn scrub_stack() {
    scrub_stack_words::<8192>();
}

/// Wipes `N` words (8 bytes each) of stack below the caller's frame. The
/// XTS hot path uses 16 KiB after every data unit: AES-NI code spills round
/// keys to the stack when it runs out of vector registers.
#[inline(never)]
pub fn scrub_stack_words<const N: usize>() {
    let mut area = [0u64; N];
    for w in area.iter_mut() {
        // SAFETY: writing to our own local array.
        unsafe { std::ptr::write_volatile(w, 0) };
    }
    std::hint::black_box(&area);
}

/// Bytes of key memory this process holds locked right now.
pub fn locked_bytes() -> usize {
    LOCKED_BYTES.load(Ordering::Relaxed)
}

/// Makes the process non-dumpable (no core dumps, no ptrace by non-root,
/// /proc/<pid>/mem closed to others) and sets RLIMIT_CORE to 0. Called once
/// keys are loaded.
pub fn harden_process() -> Result<(), KeystoreError> {
    // SAFETY: plain prctl/setrlimit calls with valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(KeystoreError::SecureMemory(format!(
                "prctl(PR_SET_DUMPABLE): {}",
                std::io::Error::last_os_error()
            )));
        }
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            return Err(KeystoreError::SecureMemory(format!(
                "setrlimit(RLIMIT_CORE): {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Whether the process is currently non-dumpable.
pub fn process_is_hardened() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no pointer arguments.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_box_holds_value_and_counts_pages() {
        let before = locked_bytes();
        let b = LockedBox::new([7u8; 100]).unwrap();
        assert_eq!(b[99], 7);
        assert!(locked_bytes() >= before + 100);
        drop(b);
        assert_eq!(locked_bytes(), before);
    }
}
