//! datastore: a FUSE-mounted, encrypted, deduplicating datastore.
//! See docs/DESIGN.md for the layer map; each module's top comment says
//! what it owns.

#![deny(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]

/// `eprintln!` that never panics. A mounted daemon's stderr is
/// `<store>/daemon.log`: on a full disk that write fails, and `eprintln!`
/// would panic the thread reporting the error (a FUSE request thread or the
/// flusher), which aborts the mount. A line that cannot be written is lost.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if $crate::LOG_TIMESTAMPS.load(std::sync::atomic::Ordering::Relaxed) {
            let now = $crate::timefmt::utc_time(std::time::SystemTime::now());
            let _ = writeln!(std::io::stderr(), "{now} {}", format_args!($($arg)*));
        } else {
            let _ = writeln!(std::io::stderr(), $($arg)*);
        }
    }};
}

/// Set by the mount daemon: its `log_line!`s (daemon.log) start with the
/// UTC time; a command's one-line error on a terminal does not.
pub static LOG_TIMESTAMPS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// `println!` that never panics: with standard output closed, or its
/// reader gone (`datastore status | head -1`), the line is lost and the
/// command goes on to exit with its own code.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod chunk;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod engine;
pub mod exit;
pub mod fs;
pub mod fsutil;
pub mod meta;
pub mod metrics;
pub mod paths;
pub mod poison;
pub mod remote;
pub mod session;
pub mod store;
#[cfg(test)]
mod test_data;
pub mod timefmt;
pub mod volume;
