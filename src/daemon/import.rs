//! `datastore import` inside the daemon: resolves the destination (an
//! absolute path under this mount) to a directory of the volume and a
//! name, runs the volume's import, and tells the kernel the new name
//! exists.
//!
//! Invariant: only paths under this daemon's mount point are accepted, and
//! the destination's parent is resolved through the volume itself (the
//! daemon never goes through its own mount).

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use super::Shared;
use crate::exit::{Exit, Failure};
use crate::volume::{Kind, ROOT};

/// Walking threads: reading a cold source tree is latency-bound.
const THREADS: usize = 4;

pub fn run(shared: &Shared, src: &Path, dest: &Path) -> Result<String, Failure> {
    let usage = |m: String| Failure::new(Exit::Usage, m);
    let volume = shared
        .volume()
        .ok_or_else(|| Failure::new(Exit::Locked, "the store is locked: run `datastore unlock`"))?;
    if !src.is_absolute() || !dest.is_absolute() {
        return Err(usage("import needs absolute paths".into()));
    }
    if src.starts_with(&shared.mountpoint) {
        // The daemon would read it through its own mount.
        return Err(usage(format!(
            "{} is inside this store's mount: copy it with cp",
            src.display()
        )));
    }
    let inside = dest.strip_prefix(&shared.mountpoint).map_err(|_| {
        usage(format!(
            "{} is not inside this store's mount ({})",
            dest.display(),
            shared.mountpoint.display()
        ))
    })?;
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in inside.components() {
        match c {
            Component::Normal(p) => parts.push(p.as_bytes()),
            _ => return Err(usage(format!("{}: not a plain path", dest.display()))),
        }
    }
    let Some(name) = parts.pop() else {
        return Err(usage(
            "the destination must be a new name inside the mount".into(),
        ));
    };
    let mut parent = ROOT;
    for p in &parts {
        let a = volume
            .lookup(parent, p)
            .map_err(|e| usage(format!("{}: {e}", String::from_utf8_lossy(p))))?;
        if a.inode.kind != Kind::Dir {
            return Err(usage(format!(
                "{} is not a directory",
                String::from_utf8_lossy(p)
            )));
        }
        parent = a.ino;
    }
    let report = volume
        .import(src, parent, name, THREADS)
        .map_err(|e| match e.errno {
            libc::EEXIST => usage(format!("{} already exists", dest.display())),
            libc::ENOENT | libc::EACCES | libc::ENOTDIR => {
                usage(format!("cannot read {}: {e}", src.display()))
            }
            _ => Failure::new(Exit::Io, format!("import failed: {e}")),
        })?;
    shared.page_fill.invalidate_entry(parent, name);
    let summary = format!(
        "imported {} files ({} bytes), {} directories, {} other entries, {} hard links into {}",
        report.files,
        report.bytes,
        report.dirs,
        report.others,
        report.links,
        dest.display()
    );
    if report.failed > 0 {
        return Err(Failure::new(
            Exit::Io,
            format!(
                "{summary}; {} entries failed, first: {}",
                report.failed,
                report.errors.join("; ")
            ),
        ));
    }
    Ok(summary)
}
