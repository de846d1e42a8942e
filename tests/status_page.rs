//! The daemon's HTTP server against a real `printvigil run` with two simulated printers
//! replaying the demo frames: `/metrics` parsed (every metric name and its label set, as
//! dashboards rely on them), the status JSON, the page's two controls and the access
//! token, and the page itself in headless Chromium (Debian's `chromium`, installed by
//! `scripts/setup-system.sh --test`): it renders the printers, the chart has the scores,
//! the annotated frame loads, and nothing is reported on the console.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::daemon::Daemon;

const TOKEN: &str = "test-token-0123456789abcdef";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn ort_path() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).unwrap_or_else(|| {
        repo(".runtime/onnxruntime").join(std::env::consts::ARCH).join("libonnxruntime.so")
    })
}

/// Two simulated printers printing the demo frames (healthy, then failing) at 0.2 s,
/// mirrored to a stand-in server.
fn farm(dir: &Path, server: &printvigil::server::ServerConfig) -> Daemon {
    let config = dir.join("config.toml");
    let printer = |name: &str| {
        format!(
            "[[printers]]\nname = \"{name}\"\nkind = \"simulated\"\nstart_after_secs = 0\nprint_secs = 600\n\
             camera = {{ kind = \"files\", url = {:?} }}\n",
            repo("models/frames")
        )
    };
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[detector]\nmodel = {:?}\nonnxruntime = {:?}\n[watch]\ncadence_secs = 0.2\nallow_fast_cadence = true\n\
             [http]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
             [server]\nurl = {:?}\nclient_id = {:?}\nclient_secret = {:?}\nupload = \"always\"\n{}{}",
            dir.join("state"),
            repo("models/demo.onnx"),
            ort_path(),
            server.url,
            server.client_id.as_deref().unwrap(),
            server.client_secret.as_ref().unwrap().expose(),
            printer("voron"),
            printer("ender"),
        ),
    )
    .unwrap();
    Daemon::spawn(&config, &dir.join("daemon.log"), &[("PRINTVIGIL_HTTP__BIND", "127.0.0.1:0")])
}

/// The page's address, from the daemon's log line.
fn address(d: &mut Daemon) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let log = d.log_text();
        if let Some(rest) = log.split("status page and metrics on ").nth(1) {
            return rest.split_whitespace().next().unwrap().trim_end_matches('/').to_string();
        }
        d.assert_alive();
        assert!(Instant::now() < end, "no status page line in the log:\n{}", d.tail(30));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A sample of the OpenMetrics text: its name, labels and value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The families' types by name, and the samples.
fn samples(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (head, ""),
        };
        let labels = labels
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        out.push((name.to_string(), labels, value.parse::<f64>().unwrap_or_else(|_| panic!("value of {line:?}"))));
    }
    (types, out)
}

/// The family a sample belongs to (`_total`, `_bucket`, ... are the family's samples).
fn family<'a>(types: &'a BTreeMap<String, String>, sample: &str) -> &'a str {
    for suffix in ["", "_total", "_bucket", "_sum", "_count", "_created"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && let Some((name, _)) = types.get_key_value(base)
        {
            return name;
        }
    }
    panic!("sample {sample} belongs to no family");
}

/// Every metric family, its type and its label names (`le` of histogram buckets aside).
const FAMILIES: &[(&str, &str, &[&str])] = &[
    ("printvigil_frames_scored", "counter", &["printer"]),
    ("printvigil_frames_failed", "counter", &["printer", "stage"]),
    ("printvigil_decisions", "counter", &["decision", "printer"]),
    ("printvigil_actions", "counter", &["action", "printer", "result"]),
    ("printvigil_inference_seconds", "histogram", &[]),
    ("printvigil_frame_latency_seconds", "histogram", &[]),
    ("printvigil_frame_age_seconds", "histogram", &[]),
    ("printvigil_printer_p", "gauge", &["printer"]),
    ("printvigil_printer_score", "gauge", &["printer"]),
    ("printvigil_printer_state", "gauge", &["printer", "state"]),
    ("printvigil_camera_ok", "gauge", &["printer"]),
    ("printvigil_printer_watching", "gauge", &["printer"]),
    ("printvigil_printer_snoozed", "gauge", &["printer"]),
    ("printvigil_frames_superseded", "counter", &["printer"]),
    ("printvigil_scheduler_queue_depth", "gauge", &[]),
    ("printvigil_scheduler_in_flight", "gauge", &[]),
    ("printvigil_scheduler_sessions", "gauge", &[]),
    ("printvigil_scheduler_load", "gauge", &[]),
    ("printvigil_scheduler_stretch", "gauge", &[]),
    ("printvigil_scheduler_frame_seconds", "gauge", &[]),
    ("printvigil_outbox_depth", "gauge", &[]),
    ("printvigil_outbox_oldest_event_age_seconds", "gauge", &[]),
    ("printvigil_server_events", "counter", &["outcome"]),
    ("printvigil_server_frames", "counter", &["outcome"]),
    ("printvigil_token_renewals", "counter", &["result"]),
    ("printvigil_process_resident_memory_bytes", "gauge", &[]),
    ("printvigil_process_cpu_seconds", "counter", &[]),
];

async fn get(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client.get(url).bearer_auth(TOKEN).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_controls_and_the_page_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let server = printvigil::server::standin::StandIn::start_local().await.unwrap();
    let mut daemon = farm(dir.path(), &server.server_config());
    let base = address(&mut daemon);
    let client = reqwest::Client::new();

    // The token: required on every path, as a bearer or a query parameter.
    assert_eq!(client.get(format!("{base}/metrics")).send().await.unwrap().status(), 401);
    assert_eq!(client.get(format!("{base}/app.js")).send().await.unwrap().status(), 200, "the page's files hold no data");
    assert_eq!(client.get(format!("{base}/api/status?token=wrong-token-0000000")).send().await.unwrap().status(), 401);
    assert_eq!(client.get(format!("{base}/api/status?token={TOKEN}")).send().await.unwrap().status(), 200);

    // Frames scored for both printers, and a warning for one (the demo frames fail).
    let end = Instant::now() + Duration::from_secs(90);
    let status = loop {
        let s: serde_json::Value = get(&client, &format!("{base}/api/status")).await.json().await.unwrap();
        let printers = s["printers"].as_array().unwrap();
        let enough = printers.len() == 2
            && printers.iter().all(|p| p["history"].as_array().unwrap().len() >= 5 && p["has_frame"] == true)
            && !s["recent"].as_array().unwrap().is_empty();
        if enough {
            break s;
        }
        daemon.assert_alive();
        assert!(Instant::now() < end, "no scored frames and warnings in time: {s}\n{}", daemon.tail(30));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let names: BTreeSet<&str> = status["printers"].as_array().unwrap().iter().map(|p| p["printer"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["ender", "voron"]));
    assert!(status["scheduler"]["sessions"].as_u64().unwrap() >= 1, "{status}");

    // /metrics: every family with its type and label names, and no other.
    let text = get(&client, &format!("{base}/metrics")).await.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    let (types, samples) = samples(&text);
    let want: BTreeMap<&str, (&str, BTreeSet<&str>)> =
        FAMILIES.iter().map(|(n, t, l)| (*n, (*t, l.iter().copied().collect()))).collect();
    let found: BTreeSet<&str> = types.keys().map(String::as_str).collect();
    let all: BTreeSet<&str> = want.keys().copied().collect();
    assert!(found.is_subset(&all), "unknown metric families {:?}:\n{text}", found.difference(&all).collect::<Vec<_>>());
    // Only counters of things that did not happen in this run may be absent.
    let missing: BTreeSet<&str> = all.difference(&found).copied().collect();
    assert!(missing.is_subset(&BTreeSet::from(["printvigil_frames_failed"])), "missing {missing:?}:\n{text}");
    for (name, kind) in &types {
        assert_eq!(kind, want[name.as_str()].0, "type of {name}");
    }
    let mut seen_families = BTreeSet::new();
    for (sample, labels, value) in &samples {
        let fam = family(&types, sample);
        let keys: BTreeSet<&str> = labels.keys().map(String::as_str).filter(|k| *k != "le").collect();
        if !sample.ends_with("_created") {
            assert_eq!(keys, want[fam].1, "labels of {sample} {labels:?}");
        }
        assert!(value.is_finite(), "{sample} = {value}");
        seen_families.insert(fam);
    }
    for fam in ["printvigil_frames_scored", "printvigil_decisions", "printvigil_printer_p", "printvigil_printer_state", "printvigil_inference_seconds"] {
        assert!(seen_families.contains(fam), "{fam} has no sample:\n{text}");
    }
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v)))
            .map(|(_, _, v)| *v)
            .sum()
    };
    assert!(value("printvigil_frames_scored_total", Some(("printer", "voron"))) >= 5.0, "{text}");
    assert!(value("printvigil_frames_scored_total", Some(("printer", "ender"))) >= 5.0, "{text}");
    assert!(value("printvigil_inference_seconds_count", None) >= 10.0, "{text}");
    let on_a_print = value("printvigil_printer_state", Some(("state", "printing"))) + value("printvigil_printer_state", Some(("state", "paused")));
    assert_eq!(on_a_print, 2.0, "both printing, or paused by printvigil: {text}");
    assert_eq!(value("printvigil_printer_state", None), 2.0, "one state per printer: {text}");
    assert_eq!(value("printvigil_scheduler_sessions", None), status["scheduler"]["sessions"].as_f64().unwrap());
    assert!(value("printvigil_process_resident_memory_bytes", None) > 1e6, "{text}");
    assert!(value("printvigil_server_frames_total", Some(("outcome", "offered"))) >= 1.0, "{text}");
    assert_eq!(value("printvigil_token_renewals_total", Some(("result", "ok"))), 1.0, "one token for the whole run: {text}");

    // Controls: only with the page's header; snooze shows in the view.
    let snooze = format!("{base}/api/printers/voron/snooze");
    let r = client.post(&snooze).bearer_auth(TOKEN).json(&serde_json::json!({"secs": 600})).send().await.unwrap();
    assert_eq!(r.status(), 403, "a control without the page's header is refused");
    let r = client.post(&snooze).bearer_auth(TOKEN).header("X-Printvigil", "1").json(&serde_json::json!({"secs": 600})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.post(format!("{base}/api/printers/nobody/watching")).bearer_auth(TOKEN).header("X-Printvigil", "1").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = client.post(format!("{base}/api/printers/ender/watching")).bearer_auth(TOKEN).header("X-Printvigil", "1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let s: serde_json::Value = get(&client, &format!("{base}/api/status")).await.json().await.unwrap();
    let voron = s["printers"].as_array().unwrap().iter().find(|p| p["printer"] == "voron").unwrap();
    assert!(voron["snoozed_until"].as_f64().unwrap() > s["now"].as_f64().unwrap(), "{voron}");
    assert_eq!(get(&client, &format!("{base}/metrics")).await.text().await.unwrap().lines().filter(|l| l.starts_with("printvigil_printer_snoozed{printer=\"voron\"} 1")).count(), 1);

    // Frames: the latest with boxes, a saved one, and nothing outside the frames folder.
    let r = get(&client, &format!("{base}/api/printers/voron/frame.jpg")).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().starts_with(&[0xff, 0xd8]), "a JPEG");
    let saved = s["recent"].as_array().unwrap().iter().find_map(|h| Some((h["printer"].as_str()?.to_string(), h["frame"].as_str()?.to_string())));
    if let Some((printer, frame)) = saved {
        assert_eq!(get(&client, &format!("{base}/api/printers/{printer}/frames/{frame}")).await.status(), 200);
    }
    for bad in ["..%2F..%2Fconfig.toml", "%2Fetc%2Fpasswd", ".hidden.jpg"] {
        assert_eq!(get(&client, &format!("{base}/api/printers/voron/frames/{bad}")).await.status(), 404, "{bad}");
    }

    // The page in headless Chromium.
    chromium_renders(&base, dir.path());
    daemon.assert_alive();
}

/// Loads the page in headless Chromium, lets it poll for a few seconds, and reads the DOM
/// it dumps: the page writes its own errors into `#errors`, and Chromium's log (stderr)
/// carries the console's messages.
fn chromium_renders(base: &str, dir: &Path) {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()))
        .expect("Debian's chromium is needed (scripts/setup-system.sh --test installs it)");
    let profile = tempfile::tempdir_in(dir).unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=6000",
            "--window-size=1280,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("{base}/?token={TOKEN}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Never left behind: killed if it runs too long.
    let end = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(dom.contains("data-ready=\"1\""), "the page did not render:\n{dom}\n{log}");
    for p in ["voron", "ender"] {
        assert!(dom.contains(&format!("data-printer=\"{p}\"")), "printer {p} not on the page:\n{dom}");
    }
    let points: Vec<usize> = dom
        .split("data-points=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().parse().unwrap())
        .collect();
    assert!(points.len() == 2 && points.iter().all(|&n| n >= 5), "charts with scores: {points:?}\n{dom}");
    assert!(dom.matches("class=\"score\" points=\"").count() == 2, "a score line per chart:\n{dom}");
    assert!(dom.contains("data-loaded=\"1\""), "an annotated frame loaded:\n{dom}");
    assert!(!dom.contains("data-loaded=\"error\""), "a frame failed to load:\n{dom}");
    let errors = dom.split("id=\"errors\"").nth(1).unwrap_or("").split("</ul>").next().unwrap_or("");
    assert!(!errors.contains("<li>"), "the page reported errors: {errors}");
    // Chromium logs every console message (errors, uncaught exceptions) as `...:CONSOLE...`;
    // the page writes none.
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages:\n{}", console.join("\n"));
}
