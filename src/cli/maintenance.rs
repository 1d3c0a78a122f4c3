//! `datastore scrub`, `datastore repair` and `datastore gc`: all run
//! without the key (record headers and CRCs need none; GC moves ciphertext
//! as it is).

use super::exit::{Exit, Failure};
use super::print_json;
use super::store::load_config;
use super::Cli;
use crate::engine::Engine;
use crate::session::protocol::Request;

/// What is wrong with the keystore's two copies (none for a store without
/// a keystore).
fn keystore_problems(store: &std::path::Path) -> Vec<String> {
    let dir = keystore::Keystore::dir_of(store);
    match dir.exists() {
        true => keystore::file::KeystoreFile::check_copies(&dir),
        false => Vec::new(),
    }
}

/// `scrub --json`: the segment report and the keystore's problems.
#[derive(serde::Serialize)]
struct ScrubOutput<'a> {
    #[serde(flatten)]
    report: &'a crate::engine::ScrubReport,
    keystore_problems: &'a [String],
    /// What is wrong with `meta/checkpoint`, if anything.
    checkpoint_problems: &'a [String],
}

/// A scrub by the mounted daemon (None: no daemon runs). It verifies
/// with the key when the mount is unlocked.
fn scrub_through_daemon(
    store: &std::path::Path,
    verify_data: bool,
) -> Result<Option<crate::engine::ScrubReport>, Failure> {
    let Some(json) = super::mount::control(store, &Request::Scrub, None)? else {
        return Ok(None);
    };
    let r: crate::engine::ScrubReport =
        serde_json::from_str(&json).map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
    if verify_data && !r.verified_with_key {
        return Err(Failure::new(
            Exit::Locked,
            "the mount is locked: `datastore unlock` it, then scrub --verify-data",
        ));
    }
    Ok(Some(r))
}

pub fn scrub(cli: &Cli, verify_data: bool, json: bool) -> Result<(), Failure> {
    load_config(&cli.store)?;
    match scrub_through_daemon(&cli.store, verify_data)? {
        Some(r) => report_scrub(cli, &r, json),
        None => scrub_offline(cli, verify_data, json),
    }
}

fn scrub_offline(cli: &Cli, verify_data: bool, json: bool) -> Result<(), Failure> {
    let engine = Engine::open_read_only(&cli.store)?;
    if verify_data {
        engine.set_keys(Some(keys_to_read(cli)?.ring.clone()));
    }
    report_scrub(cli, &engine.scrub()?, json)
}

/// What is wrong with the metadata checkpoint (every frame's checksums
/// checked), if anything. A store without one (never unmounted since it
/// was made by this build) has nothing wrong; an incomplete last frame (a
/// crash while appending) is no damage.
fn checkpoint_problem(store: &std::path::Path) -> Option<String> {
    use crate::meta::checkpoint;
    let index = crate::meta::database_path(store);
    if !checkpoint::path(&index).exists() {
        return None;
    }
    let id = load_config(store).ok()?.id_bytes();
    match checkpoint::verify(&index, &id) {
        Err(e) => Some(format!("metadata checkpoint: {e}")),
        Ok(r) if r.damaged => r
            .stopped
            .map(|why| format!("metadata checkpoint: {why}; the frames after it cannot be used")),
        Ok(_) => None,
    }
}

/// What is wrong with the intent log (headers, checksums, sequence; no key
/// needed), if anything. A torn last record (a crash while appending) is no
/// damage: the next mount drops it.
fn intent_log_problem(store: &std::path::Path) -> Option<String> {
    let cfg = load_config(store).ok()?;
    let (id, dir) = (cfg.id_bytes(), cfg.intent_log_dir(store));
    crate::store::intent_log::scan(&dir, &id, u64::MAX)
        .err()
        .map(|e| format!("{e} (the mount refuses it; nothing of it is applied)"))
}

/// Prints a scrub's findings and the keystore's; exit 10 on any.
fn report_scrub(cli: &Cli, r: &crate::engine::ScrubReport, json: bool) -> Result<(), Failure> {
    let keystore = keystore_problems(&cli.store);
    let checkpoint: Vec<String> = checkpoint_problem(&cli.store)
        .into_iter()
        .chain(intent_log_problem(&cli.store))
        .collect();
    if json {
        print_json(&ScrubOutput {
            report: r,
            keystore_problems: &keystore,
            checkpoint_problems: &checkpoint,
        })?;
    } else {
        for k in &keystore {
            crate::say!("BAD keystore copy {k}");
        }
        for c in &checkpoint {
            crate::say!("BAD {c}");
        }
        crate::say!(
            "Scrubbed {} segments, {} records, {} bytes; {} index entries checked.",
            r.segments,
            r.records,
            r.bytes,
            r.index_entries_checked
        );
        for b in &r.bad {
            crate::say!(
                "BAD segment {:016x} offset {} chunk {}: {}",
                b.segment,
                b.offset,
                b.chunk.as_deref().unwrap_or("?"),
                b.reason
            );
        }
    }
    match (r.bad.len(), keystore.len() + checkpoint.len()) {
        (0, 0) => Ok(()),
        (records, copies) => Err(Failure::new(
            Exit::Damaged,
            format!("scrub found {records} bad records and {copies} damaged keystore copies, checkpoints or intent logs"),
        )),
    }
}

/// `repair --json`: what was found, whether it was marked, and (with
/// `--list-files`) the files using it.
#[derive(serde::Serialize)]
struct RepairOutput {
    damaged: Vec<crate::engine::DamagedChunk>,
    marked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<String>>,
}

/// Asks for the password and returns every key the store's data may be
/// under (for reading only).
fn keys_to_read(cli: &Cli) -> Result<crate::session::keys::LoadedKeys, Failure> {
    let password = super::secrets::SecretReader::new().read(
        "Password",
        cli.password_file.as_deref(),
        false,
    )?;
    Ok(crate::session::keys::keys_to_read(
        &cli.store,
        password.as_bytes(),
    )?)
}

/// The files using `damaged` chunks: the volume opened with the password.
fn files_using(
    cli: &Cli,
    engine: Engine,
    damaged: &[crate::engine::DamagedChunk],
) -> Result<Vec<String>, Failure> {
    let keys = keys_to_read(cli)?;
    let engine = std::sync::Arc::new(engine);
    let volume = crate::session::keys::load(&engine, keys)?;
    let wanted = damaged.iter().map(|d| d.fingerprint).collect();
    let files = volume
        .files_using(&wanted)
        .map_err(|e| Failure::new(Exit::Io, format!("listing the files: {e}")))?;
    Ok(files
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect())
}

/// Why the metadata database cannot be used as it is (missing, corrupt,
/// or older than its checkpoint), or None.
fn metadata_problem(store: &std::path::Path, id: &[u8; 16]) -> Result<Option<String>, Failure> {
    use crate::meta::{Meta, MetaError, OpenMode};
    let index = crate::meta::database_path(store);
    match Meta::check_file(&index) {
        None => {}
        Some(e @ (MetaError::Missing(_) | MetaError::Corrupt { .. })) => {
            return Ok(Some(e.to_string()))
        }
        Some(other) => return Err(crate::engine::EngineError::from(other).into()),
    }
    let meta = Meta::open(&index, OpenMode::ReadOnly).map_err(crate::engine::EngineError::from)?;
    // An unreadable checkpoint is scrub's to report; the database is fine.
    Ok(crate::engine::older_than_checkpoint(&meta, id)
        .ok()
        .flatten()
        .map(|e| e.to_string()))
}

/// A missing, damaged or rolled-back metadata database is replaced by the
/// image its checkpoint holds (not with `dry_run`: then that is what it
/// reports, as damage). Returns whether it was.
fn restore_metadata(
    store: &std::path::Path,
    cfg: &crate::config::StoreConfig,
    dry_run: bool,
) -> Result<bool, Failure> {
    use crate::meta::{checkpoint, Meta};
    let mode = match dry_run {
        true => crate::meta::OpenMode::ReadOnly,
        false => crate::meta::OpenMode::ReadWrite,
    };
    let _lock = crate::engine::lock_store(store, mode)?;
    let id = cfg.id_bytes();
    let Some(why) = metadata_problem(store, &id)? else {
        return Ok(false);
    };
    let index = crate::meta::database_path(store);
    let unusable = |e: &dyn std::fmt::Display| {
        Failure::new(
            Exit::Damaged,
            format!("{why}; its checkpoint cannot be used either: {e}"),
        )
    };
    if dry_run {
        let newest = match checkpoint::verify(&index, &id) {
            Ok(r) => crate::timefmt::utc_from_unix(r.newest().time),
            Err(_) if checkpoint::legacy_path(&index).exists() => "an earlier build".into(),
            Err(e) => return Err(unusable(&e)),
        };
        return Err(Failure::new(
            Exit::Damaged,
            format!("{why}; `datastore repair` would put back its checkpoint of {newest}"),
        ));
    }
    let replayed = Meta::restore_checkpoint(&index, &id).map_err(|e| match e {
        crate::meta::MetaError::Checkpoint(_) | crate::meta::MetaError::Corrupt { .. } => {
            unusable(&e)
        }
        other => Failure::new(
            Exit::Io,
            format!("{why}; putting back its checkpoint failed: {other}"),
        ),
    })?;
    let frames = &replayed.frames;
    crate::say!(
        "Put back the metadata checkpoint of {} (a base of {} and {} later changes): changes committed after it are lost.",
        crate::timefmt::utc_from_unix(replayed.newest().time),
        crate::timefmt::utc_from_unix(frames[0].time),
        frames.len() - 1
    );
    if let Some(stop) = &replayed.stopped {
        crate::say!("The checkpoint ends early: {stop}; the changes it held after that are lost.");
    }
    Ok(true)
}

/// A damaged checkpoint beside an intact database is written again from
/// the database (a new base).
fn rewrite_damaged_checkpoint(
    store: &std::path::Path,
    engine: &Engine,
    dry_run: bool,
) -> Result<(), Failure> {
    let Some(problem) = checkpoint_problem(store) else {
        return Ok(());
    };
    if dry_run {
        return Err(Failure::new(Exit::Damaged, problem));
    }
    engine.write_checkpoint()?;
    crate::say!("Wrote the metadata checkpoint again from the database ({problem}).");
    Ok(())
}

/// Writes both keystore copies again from the one that is intact.
fn repair_keystore(store: &std::path::Path, dry_run: bool) -> Result<(), Failure> {
    let problems = keystore_problems(store);
    if problems.is_empty() {
        return Ok(());
    }
    if dry_run {
        return Err(Failure::new(
            Exit::Damaged,
            format!("damaged keystore copy: {}", problems.join("; ")),
        ));
    }
    let ks = super::store::open_keystore(store)?;
    ks.write_both_copies()?;
    crate::say!(
        "Wrote both keystore copies again from the intact one ({}).",
        problems.join("; ")
    );
    Ok(())
}

pub fn repair(cli: &Cli, dry_run: bool, list_files: bool, json: bool) -> Result<(), Failure> {
    let cfg = load_config(&cli.store)?;
    repair_keystore(&cli.store, dry_run)?;
    restore_metadata(&cli.store, &cfg, dry_run)?;
    let engine = if dry_run {
        Engine::open_read_only(&cli.store)?
    } else {
        Engine::open(&cli.store, None)?
    };
    rewrite_damaged_checkpoint(&cli.store, &engine, dry_run)?;
    let damaged = engine.find_damaged_chunks()?;
    // Records GC moved after the checkpoint, or a second copy of a chunk.
    let found = damaged.len();
    let damaged = match dry_run {
        true => damaged,
        false => engine.relink_damaged(damaged)?,
    };
    if damaged.len() < found && !json {
        crate::say!(
            "Relinked {} chunks to good copies found in the segment files.",
            found - damaged.len()
        );
    }
    if !dry_run {
        let (entries, rows) = engine.reconcile_segments()?;
        if entries + rows > 0 && !json {
            crate::say!(
                "Dropped {entries} unreferenced index entries and {rows} segment rows whose segment files are gone."
            );
        }
    }
    let marked = !dry_run && !damaged.is_empty();
    if marked {
        let fps: Vec<_> = damaged.iter().map(|d| d.fingerprint).collect();
        engine.mark_damaged(&fps)?;
    }
    let files = match list_files && !damaged.is_empty() {
        true => Some(files_using(cli, engine, &damaged)?),
        false => None,
    };
    if json {
        print_json(&RepairOutput {
            damaged: damaged.clone(),
            marked,
            files,
        })?;
    } else {
        for f in files.iter().flatten() {
            crate::say!("FILE using a damaged chunk: {f}");
        }
        for d in &damaged {
            crate::say!(
                "DAMAGED chunk {} (segment {:016x} offset {}, {} references): {}",
                d.chunk,
                d.segment,
                d.offset,
                d.references,
                d.reason
            );
        }
        match (damaged.len(), marked) {
            (0, _) => crate::say!("Every chunk the index references verified."),
            (n, true) => crate::say!(
                "Marked {n} damaged chunks: files using them stay unreadable until the same data is written again (e.g. restored from a backup), which stores a good copy and heals them."
            ),
            (n, false) => crate::say!("{n} damaged chunks (dry run: nothing marked)."),
        }
    }
    if dry_run && !damaged.is_empty() {
        return Err(Failure::new(
            Exit::Damaged,
            format!("{} damaged chunks found", damaged.len()),
        ));
    }
    Ok(())
}

pub fn gc(cli: &Cli, threshold: f64, json: bool) -> Result<(), Failure> {
    if !(0.0..=1.0).contains(&threshold) {
        return Err(Failure::new(
            Exit::Usage,
            "--threshold must be between 0 and 1",
        ));
    }
    let cfg = load_config(&cli.store)?;
    let engine = Engine::open(&cli.store, None)?;
    if let Some(remote) = cfg.remote {
        // Evicted segments come back from their packs (no key needed) so
        // they can be compacted too; the bucket follows at the next fsync.
        match crate::remote::Remote::connect(&remote) {
            Ok(r) => engine.set_remote(Some(std::sync::Arc::new(r))),
            // Without the bucket gc still runs; evicted segments are skipped.
            Err(e) => {
                eprintln!("datastore: gc without the bucket ({e}): evicted segments are skipped")
            }
        }
    }
    let r = engine.gc(threshold)?;
    let metadata = crate::volume::compact_metadata_offline(&engine)
        .map_err(|e| Failure::new(Exit::Io, format!("compacting the metadata database: {e}")))?;
    // The checkpoint must not name records GC moved.
    engine.write_checkpoint()?;
    if json {
        return print_json(&GcOutput {
            report: r,
            metadata_bytes_before: metadata.map(|m| m.0),
            metadata_bytes_after: metadata.map(|m| m.1),
        });
    }
    crate::say!(
        "Compacted {} segments: moved {} records ({} bytes), removed {} dead chunks; segments {} -> {} bytes.",
        r.segments_compacted, r.records_moved, r.bytes_moved, r.dead_chunks_removed, r.bytes_before, r.bytes_after
    );
    if let Some((before, after)) = metadata {
        crate::say!("Compacted the metadata database: {before} -> {after} bytes.");
    }
    Ok(())
}

/// `gc --json`: the segment report, and the metadata database's size
/// before and after if it was compacted (null: it was not worth it).
#[derive(serde::Serialize)]
struct GcOutput {
    #[serde(flatten)]
    report: crate::engine::GcReport,
    metadata_bytes_before: Option<u64>,
    metadata_bytes_after: Option<u64>,
}
