//! `datastore import SRC DEST`: copies a local tree into a running mount
//! through its daemon (no FUSE round trip per file), as `cp -a SRC DEST`
//! would. DEST is a new path inside a datastore mount; the store is the
//! one mounted there.

use std::path::{Path, PathBuf};

use super::exit::{Exit, Failure};
use super::mount::{control, datastore_mounts, no_daemon};
use crate::session::protocol::Request;

pub fn import(src: &Path, dest: &Path) -> Result<(), Failure> {
    let usage = |m: String| Failure::new(Exit::Usage, m);
    let src = std::fs::canonicalize(src)
        .map_err(|e| usage(format!("cannot read {}: {e}", src.display())))?;
    let name = dest.file_name().ok_or_else(|| {
        usage(format!(
            "{}: the destination must end in a new name",
            dest.display()
        ))
    })?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent =
        std::fs::canonicalize(&parent).map_err(|e| usage(format!("{}: {e}", parent.display())))?;
    if !parent.is_dir() {
        return Err(usage(format!("{} is not a directory", parent.display())));
    }
    let dest = parent.join(name);
    // The innermost datastore mount holding the destination.
    let (_, store) = datastore_mounts()
        .into_iter()
        .filter(|(mp, _)| dest.starts_with(mp) && dest != *mp)
        .max_by_key(|(mp, _)| mp.as_os_str().len())
        .ok_or_else(|| {
            usage(format!(
                "{} is not inside a datastore mount",
                dest.display()
            ))
        })?;
    for p in [&src, &dest] {
        if p.as_os_str().as_encoded_bytes().contains(&b'\n') {
            return Err(usage(format!(
                "{}: paths with a newline are not supported",
                p.display()
            )));
        }
    }
    let request = Request::Import { source: src, dest };
    let r = control(&store, &request, None)?.ok_or_else(|| no_daemon(&store))?;
    crate::say!("{}.", capitalised(&r));
    Ok(())
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
