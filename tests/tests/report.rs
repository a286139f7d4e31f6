//! `netmon report` end to end: a scenario in the test's own network namespace (a
//! service on a TEST-NET-3 address with held connections, a backdoor listener on 4444,
//! a listener whose process name is hostile markup), a tiny `.mmdb` built here mapping
//! that address to a country and an ASN, the real binary writing HTML and CSV, the HTML
//! parsed and loaded in headless Chromium (DOM dump and a screenshot kept under
//! `target/report-test/`), the CSV read back with a CSV parser.
use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use netmon::geoip::writer::Writer;
use netmon_tests::{NetNs, Peer, netmon_bin, require_root, testpeer_bin};
use serde_json::json;

/// A process name (comm, 15 bytes at most) that is markup, quotes and a control byte.
const HOSTILE: &str = "<i>x\"'&\u{7}=1";

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("netmon-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Where the screenshot and DOM dump are kept (CI artifacts).
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/report-… → target/report-test
    let target = exe.ancestors().nth(3).unwrap().to_owned();
    let d = target.join("report-test");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn databases(dir: &Path) -> (PathBuf, PathBuf) {
    let mut city = Writer::new("GeoLite2-City", 1_764_633_600);
    city.insert(
        "203.0.113.0/24".parse().unwrap(),
        json!({"country": {"iso_code": "JP"}, "city": {"names": {"en": "Tokyo"}}}),
    );
    let mut asn = Writer::new("GeoLite2-ASN", 1_764_633_600);
    asn.insert(
        "203.0.113.0/24".parse().unwrap(),
        json!({"autonomous_system_number": 64500, "autonomous_system_organization": "Test <Net>, \"Inc\""}),
    );
    let (c, a) = (dir.join("city.mmdb"), dir.join("asn.mmdb"));
    std::fs::write(&c, city.build()).unwrap();
    std::fs::write(&a, asn.build()).unwrap();
    (c, a)
}

fn report(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(netmon_bin())
        .arg("report")
        .args(args)
        .output()
        .expect("run netmon report");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn chromium(args: &[&str], profile: &Path) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium (the set-up installs it)")
}

#[test]
fn html_and_csv_report_of_a_scenario_render_in_chromium() {
    require_root!();
    let dir = scratch("scenario");
    let (city, asn) = databases(&dir);
    let config = dir.join("netmon.toml");
    std::fs::write(
        &config,
        format!(
            "[geoip]\ncity = \"{}\"\nasn = \"{}\"\n[scan]\nstate_file = \"{}\"\n",
            city.display(),
            asn.display(),
            dir.join("no-hosts.json").display()
        ),
    )
    .unwrap();
    // A copy of the test peer whose file name (so comm) is hostile.
    let hostile = dir.join(HOSTILE);
    std::fs::copy(testpeer_bin(), &hostile).unwrap();

    let _ns = NetNs::new();
    let ip = Command::new("ip")
        .args(["addr", "add", "203.0.113.7/32", "dev", "lo"])
        .status()
        .unwrap();
    assert!(ip.success(), "ip addr add in the test namespace");
    let service = TcpListener::bind("203.0.113.7:0").unwrap();
    let port = service.local_addr().unwrap().port();
    let mut clients = Peer::spawn_holding(&["tcp-many", &format!("203.0.113.7:{port}"), "3"]);
    assert_eq!(clients.line(), "open 3");
    let backdoor = Peer::spawn(&["tcp-server", "0.0.0.0:4444", "0"]);
    assert_eq!(backdoor.port(), 4444);
    let odd = Command::new(&hostile)
        .args(["tcp-server", "127.0.0.1:0", "0"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut odd = scopeguard(odd);
    std::thread::sleep(Duration::from_millis(300));

    let html = dir.join("r.html");
    let (status, stderr) = report(&[
        "--config",
        config.to_str().unwrap(),
        "--output",
        html.to_str().unwrap(),
    ]);
    assert!(status.success(), "netmon report: {stderr}");
    let csv_path = dir.join("c.csv");
    let (status, stderr) = report(&[
        "--config",
        config.to_str().unwrap(),
        "--format",
        "csv",
        "--output",
        csv_path.to_str().unwrap(),
    ]);
    assert!(status.success(), "netmon report --format csv: {stderr}");
    let alerts_csv = dir.join("a.csv");
    let (status, stderr) = report(&[
        "--config",
        config.to_str().unwrap(),
        "--format",
        "csv",
        "--table",
        "alerts",
        "--output",
        alerts_csv.to_str().unwrap(),
    ]);
    assert!(status.success(), "netmon report --table alerts: {stderr}");
    clients.release();
    let _ = odd.0.kill();
    let _ = odd.0.wait();
    drop(backdoor);

    for f in [&html, &csv_path, &alerts_csv] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }

    // The HTML parses without an error, its only script is pinned by the CSP, and the
    // hostile name is text, not markup.
    let page = std::fs::read_to_string(&html).unwrap();
    let doc = scraper::Html::parse_document(&page);
    assert!(doc.errors.is_empty(), "HTML parse errors: {:?}", doc.errors);
    let sel = |s| scraper::Selector::parse(s).unwrap();
    let csp = doc
        .select(&sel("meta[http-equiv=Content-Security-Policy]"))
        .next()
        .expect("a CSP meta tag");
    assert!(
        csp.value()
            .attr("content")
            .unwrap()
            .starts_with("default-src 'none';")
    );
    assert_eq!(doc.select(&sel("script")).count(), 1);
    assert_eq!(
        doc.select(&sel("i")).count(),
        0,
        "the hostile <i> became markup"
    );
    assert!(
        page.contains("&lt;i&gt;x&quot;'&amp;\\x07=1"),
        "hostile name escaped"
    );

    // Chromium, offline (the namespace has only lo), renders it.
    let profile = dir.join("chromium-profile");
    let url = format!("file://{}", html.display());
    let out = chromium(&["--dump-dom", &url], &profile);
    assert!(
        out.status.success(),
        "chromium --dump-dom: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(artifacts().join("report-dom.html"), &dom).unwrap();
    for needle in [
        "netmon-testpeer",
        "4444",
        "SUSPICIOUS_PORT",
        "Recommendation:",
        &format!("203.0.113.7:{port}"),
        "JP, Tokyo",
        "AS64500 Test &lt;Net&gt;, \"Inc\"",
        "GeoLite2-City",
        "MaxMind",
    ] {
        assert!(dom.contains(needle), "the DOM lacks {needle:?}");
    }
    // The listener on 4444 is marked risky, the backdoor's alert is in the alerts.
    let dom_doc = scraper::Html::parse_document(&dom);
    let risky: Vec<String> = dom_doc
        .select(&sel("#listeners tbody tr"))
        .map(|r| r.text().collect::<String>())
        .filter(|t| t.contains("4444"))
        .collect();
    assert!(
        risky.iter().any(|t| t.contains("SUSPICIOUS_PORT")),
        "{risky:?}"
    );
    assert!(dom_doc.select(&sel("#connections tbody tr")).count() >= 3);
    let shot = artifacts().join("report.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,2400",
            &url,
        ],
        &profile,
    );
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The CSV reads back: the three held connections with their country and ASN.
    let mut r = csv::Reader::from_path(&csv_path).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |name: &str| h.iter().position(|c| c == name).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    let to_service: Vec<&csv::StringRecord> = rows
        .iter()
        .filter(|r| {
            &r[col("remote_ip")] == "203.0.113.7" && r[col("remote_port")] == port.to_string()
        })
        .collect();
    assert_eq!(to_service.len(), 3, "{rows:?}");
    for r in &to_service {
        assert_eq!(&r[col("country")], "JP");
        assert_eq!(&r[col("asn")], "64500");
        assert_eq!(&r[col("as_org")], "Test <Net>, \"Inc\"");
        assert_eq!(&r[col("process")], "netmon-testpeer");
    }
    let mut r = csv::Reader::from_path(&alerts_csv).unwrap();
    let h = r.headers().unwrap().clone();
    let rule = h.iter().position(|c| c == "rule").unwrap();
    assert!(
        r.records()
            .map(Result::unwrap)
            .any(|a| &a[rule] == "SUSPICIOUS_PORT"),
        "no SUSPICIOUS_PORT alert in the CSV"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A child killed on drop.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}

#[test]
fn a_corrupt_database_is_one_warning_and_the_report_is_still_written() {
    let dir = scratch("corrupt");
    let bad = dir.join("bad.mmdb");
    std::fs::write(&bad, b"\xAB\xCD\xEFMaxMind.com garbage").unwrap();
    let config = dir.join("netmon.toml");
    std::fs::write(&config, format!("[geoip]\ncity = \"{}\"\n", bad.display())).unwrap();
    let out = dir.join("netmon-{host}-{time}.html");
    let (status, stderr) = report(&[
        "--config",
        config.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--every",
        "1s",
        "--count",
        "2",
    ]);
    assert!(status.success(), "{stderr}");
    let warnings = stderr.lines().filter(|l| l.contains("geoip:")).count();
    assert_eq!(warnings, 2, "one warning per report: {stderr}");
    let written: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("netmon-") && n.ends_with(".html"))
        .collect();
    assert_eq!(written.len(), 2, "two reports, one per period: {written:?}");
    let page = std::fs::read_to_string(dir.join(&written[0])).unwrap();
    assert!(
        page.contains("not a MaxMind DB file"),
        "the note is in the report"
    );
    let (status, stderr) = report(&["--output", "x-{nope}.html"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("unknown placeholder {nope}"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
