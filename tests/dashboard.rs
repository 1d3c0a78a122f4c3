//! The daemon's web endpoints on a real mount: /metrics counters move when
//! files are written and read; the dashboard's data matches `datastore
//! status --json`; the shield is amber for an encrypted store, grey when
//! locked, green in FIPS mode validated, red for an unencrypted store and
//! amber with a job line while its conversion runs; nothing served names a file or
//! a password; a non-loopback address needs a token, and requests without
//! it are refused.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::mounted::{Fixture, PW};

/// (status code, body) of GET `path`.
fn get(port: u16, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let code = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // tiny_http answers small bodies with Content-Length, larger ones chunked.
    let body = if raw
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, body)
}

fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = b.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        b = &rest[n + 2..];
    }
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .parse()
        .unwrap()
}

/// Mounts with `--http` on loopback and no token file: returns the token
/// the mount made in the store (every request needs it).
fn mount_http(f: &Fixture, port: u16) -> String {
    let pw = f.pw();
    let mnt = f.mnt();
    let addr = format!("127.0.0.1:{port}");
    f.ok(&[
        "mount",
        mnt.to_str().unwrap(),
        "--password-file",
        pw.to_str().unwrap(),
        "--http",
        &addr,
    ]);
    let text = std::fs::read_to_string(f.store().join("http-token")).unwrap();
    text.trim().to_string()
}

#[test]
fn metrics_move_with_io_and_the_dashboard_matches_status() {
    let f = Fixture::new(&[]);
    let port = common::free_port();
    let token = mount_http(&f, port);
    // Loopback too: without the store's token (root-only) nothing is
    // served, so no local user reads the dedup figures (an oracle).
    assert_eq!(get(port, "/metrics", None).0, 401);
    assert_eq!(get(port, "/api/status", None).0, 401);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(f.store().join("http-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let (code, before) = get(port, "/metrics", Some(&token));
    assert_eq!(code, 200);
    let marker = "MARKERNAME4711";
    let file = f.mnt().join(format!("{marker}.bin"));
    std::fs::write(&file, common::random_bytes(3, 8 << 20)).unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    assert_eq!(std::fs::read(&file).unwrap().len(), 8 << 20);
    let (_, after) = get(port, "/metrics", Some(&token));
    let moved = |name: &str| metric(&after, name) - metric(&before, name);
    assert!(
        moved("datastore_write_bytes_total") >= (8 << 20) as f64,
        "{after}"
    );
    // Every byte read came from the daemon: in a read reply, or handed to
    // the page cache around one.
    assert!(
        moved("datastore_read_bytes_total") + moved("datastore_page_fill_bytes_total")
            >= (8 << 20) as f64,
        "{after}"
    );
    assert!(moved("datastore_write_seconds_count") > 0.0);
    assert!(moved("datastore_read_seconds_count") > 0.0);
    assert!(metric(&after, "datastore_logical_bytes") >= (8 << 20) as f64);
    assert_eq!(metric(&after, "datastore_locked"), 0.0);
    // The dashboard's data is the status admins get from the CLI.
    let (_, api) = get(port, "/api/status", Some(&token));
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    let cli: serde_json::Value = serde_json::from_str(&f.ok(&["status", "--json"])).unwrap();
    for k in [
        "logical_bytes",
        "physical_bytes",
        "chunks",
        "dedup_ratio",
        "total_reduction",
    ] {
        assert_eq!(api[k], cli[k], "{k}");
    }
    assert_eq!(api["shield"]["state"], "amber", "{api}");
    let (_, page) = get(port, "/", Some(&token));
    assert!(page.contains("Durable capacity"));
    for body in [&after, &page, &api.to_string()] {
        assert!(!body.contains(marker), "a file name was served");
        assert!(!body.contains(PW), "the password was served");
    }
    f.ok(&["lock"]);
    let (_, api) = get(port, "/api/status", Some(&token));
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["shield"]["state"], "grey", "{api}");
    let (_, m) = get(port, "/metrics", Some(&token));
    assert_eq!(metric(&m, "datastore_locked"), 1.0);
    f.unmount();
}

#[cfg(feature = "fips")]
#[test]
fn the_shield_is_green_in_fips_mode_validated() {
    let f = Fixture::new(&["--fips-mode", "validated"]);
    let port = common::free_port();
    let token = mount_http(&f, port);
    let (_, api) = get(port, "/api/status", Some(&token));
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["shield"]["state"], "green", "{api}");
    assert!(api["shield"]["label"]
        .as_str()
        .unwrap()
        .contains("AWS-LC FIPS"));
    let (_, m) = get(port, "/metrics", Some(&token));
    assert_eq!(metric(&m, "datastore_fips_validated"), 1.0);
    f.unmount();
}

#[test]
fn a_non_loopback_address_needs_a_token_and_requests_need_it() {
    let f = Fixture::new(&[]);
    let port = common::free_port();
    let (pw, mnt) = (f.pw(), f.mnt());
    let mount = |extra: &[&str]| {
        let mut args = vec![
            "mount",
            mnt.to_str().unwrap(),
            "--password-file",
            pw.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        f.run(&args)
    };
    let addr = format!("0.0.0.0:{port}");
    let o = mount(&["--http", &addr]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--http-token-file"));
    assert!(!f.is_mounted());
    let token = "a-token-of-sufficient-length";
    let token_file = f.dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let o = mount(&[
        "--http",
        &addr,
        "--http-token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(get(port, "/metrics", None).0, 401);
    assert_eq!(
        get(port, "/metrics", Some("wrong-token-wrong-token")).0,
        401
    );
    assert_eq!(get(port, "/metrics", Some(token)).0, 200);
    assert_eq!(
        get(port, &format!("/api/status?token={token}"), None).0,
        200
    );
    f.unmount();
}

fn chromium() -> std::path::PathBuf {
    common::installed_tool("chromium", "Debian's chromium")
}

/// Loads the dashboard in headless Chromium, returns the DOM after its
/// script ran and saves a screenshot under target/test-artifacts/.
fn render(port: u16, token: &str, name: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/?token={token}");
    let common = |extra: &[String]| {
        let o = std::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--virtual-time-budget=5000",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join(format!("dashboard-{name}.png"));
    common(&[format!("--screenshot={}", shot.display())]);
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "empty screenshot"
    );
    String::from_utf8(common(&["--dump-dom".to_string()]).stdout).unwrap()
}

fn attr<'a>(dom: &'a str, id: &str, name: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("#{id} missing"));
    let tag_start = dom[..at].rfind('<').unwrap();
    let tag = &dom[tag_start..at + dom[at..].find('>').unwrap()];
    let key = format!("{name}=\"");
    let v = &tag[tag
        .find(&key)
        .unwrap_or_else(|| panic!("#{id} has no {name}: {tag}"))
        + key.len()..];
    &v[..v.find('"').unwrap()]
}

#[test]
fn the_dashboard_renders_the_shield_and_the_status_numbers_in_chromium() {
    let mut stores: Vec<(&str, Vec<&str>, bool)> =
        vec![("encrypted", vec![], false), ("locked", vec![], true)];
    if cfg!(feature = "fips") {
        stores.push(("fips", vec!["--fips-mode", "validated"], false));
    }
    for (name, init, lock) in stores {
        let f = Fixture::new(&init);
        let port = common::free_port();
        let token = mount_http(&f, port);
        let data = f.mnt().join("filename-marker-42");
        std::fs::write(&data, common::random_bytes(9, 3 << 20)).unwrap();
        std::fs::File::open(&data).unwrap().sync_all().unwrap();
        if lock {
            f.ok(&["lock"]);
        }
        let cli: serde_json::Value = serde_json::from_str(&f.ok(&["status", "--json"])).unwrap();
        let dom = render(port, &token, name);
        assert!(
            dom.contains("data-loaded=\"1\""),
            "the page never loaded its data"
        );
        let want = match name {
            "encrypted" => "amber",
            "locked" => "grey",
            _ => "green",
        };
        assert_eq!(attr(&dom, "shield", "data-state"), want, "{name}");
        assert_eq!(
            attr(&dom, "logical", "data-bytes"),
            cli["logical_bytes"].to_string()
        );
        assert_eq!(
            attr(&dom, "physical", "data-bytes"),
            cli["physical_bytes"].to_string()
        );
        assert_eq!(
            attr(&dom, "chunks", "data-value"),
            cli["chunks"].to_string()
        );
        assert!(!dom.contains(PW) && !dom.contains("filename-marker-42"));
        f.unmount();
    }
}

#[test]
fn an_unencrypted_store_shows_red_and_its_conversion_shows_as_a_job() {
    let f = Fixture::new(&["--no-encryption"]);
    let port = common::free_port();
    let token = mount_http(&f, port);
    let file = f.mnt().join("data.bin");
    std::fs::write(&file, common::random_bytes(5, 32 << 20)).unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    let api = || -> serde_json::Value {
        let (code, body) = get(port, "/api/status", Some(&token));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let a = api();
    assert_eq!(a["shield"]["state"], "red", "{a}");
    assert!(a["shield"]["label"]
        .as_str()
        .unwrap()
        .contains("Not encrypted"));
    assert_eq!(get(port, "/metrics", Some(&token)).0, 200);
    let pw = f.pw();
    f.ok(&[
        "encryption",
        "set",
        "--fips-mode",
        "disabled",
        "--password-file",
        pw.to_str().unwrap(),
        "--max-rate",
        "4M",
        "--no-wait",
    ]);
    let a = api();
    assert_eq!(a["shield"]["state"], "amber", "{a}");
    assert!(
        a["shield"]["label"]
            .as_str()
            .unwrap()
            .starts_with("Converting"),
        "{a}"
    );
    let jobs = a["jobs"].as_array().unwrap();
    assert!(
        jobs.len() == 1
            && jobs[0]
                .as_str()
                .unwrap()
                .starts_with("key conversion: converting"),
        "{a}"
    );
    f.unmount();
}
