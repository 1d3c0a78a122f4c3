//! The `datastore` command: parse arguments, run, exit with the code.

use clap::Parser;

/// Descriptors 0, 1 and 2 closed by the caller are opened on /dev/null
/// first: otherwise the next file opened (a database, a segment) would get
/// one of those numbers and printed lines would be written into it.
fn occupy_standard_descriptors() {
    for fd in 0..=2 {
        // SAFETY: fcntl(F_GETFD) only queries; open/dup2 on a fixed path.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1 {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 && null != fd {
                    libc::dup2(null, fd);
                    libc::close(null);
                }
            }
        }
    }
}

fn main() {
    occupy_standard_descriptors();
    let cli = datastore::cli::Cli::parse();
    std::process::exit(datastore::cli::run(cli));
}
