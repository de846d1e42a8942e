//! Notifications ([[notify]]) against a local HTTP endpoint that records what it gets
//! (tests/support/recorder.rs): each service's payload shape (webhook JSON and
//! multipart, ntfy's PUT with headers, Telegram's sendPhoto/sendMessage, Discord's
//! payload_json + files[0]), the frame attached byte for byte, retries on 500 and 429,
//! the rate limit, the snooze, offline printers and cameras after their grace, and the
//! tokens never in the log. The sink runs in process on a board whose views and events
//! the test drives; tests/mqtt.rs runs it inside `printvigil run`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use printvigil::printer::JobOutcome;
use printvigil::secret::Secret;
use printvigil::sink::notify::config::FrameMode;
use printvigil::sink::notify::{AlertKind, Inputs, Kind, NotifyConfig, NotifySink};
use printvigil::watch::view::{Board, Decision, LastDecision, PrinterView, Registration, WatchPhase};
use printvigil::watch::{Action, WatchEvent};
use support::recorder::{Answer, Recorder};
use tokio::sync::broadcast;

const TG_TOKEN: &str = "123456:telegram-bot-token-XYZ";
const DISCORD_TOKEN: &str = "discord-webhook-token-ABC";
const NTFY_TOKEN: &str = "tk_ntfy-access-token";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A decision frame saved where the watch saves them (`frames/<printer>/...jpg`).
fn saved_frame(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let bytes = std::fs::read(repo().join("models/frames/08-failing.jpg")).unwrap();
    let d = dir.join("frames").join("voron");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, &bytes).unwrap();
    (p, bytes)
}

fn entry(kind: Kind, url: String) -> NotifyConfig {
    let mut c = NotifyConfig::new(kind);
    c.url = Some(Secret::new(url));
    c.refill_secs = 0.0;
    c
}

/// A board with one printer whose view the test sets, the events sender, the sink.
struct Rig {
    reg: Registration,
    events: broadcast::Sender<WatchEvent>,
    sink: Option<NotifySink>,
}

impl Rig {
    fn start(entries: &[NotifyConfig]) -> Rig {
        let board = Board::new();
        let reg = board.register("voron");
        let (events, rx) = broadcast::channel(256);
        let sink = NotifySink::start(entries, Inputs { board, events: rx, printers: vec!["voron".into()], host: "farm-pi".into() }).unwrap();
        let rig = Rig { reg, events, sink: Some(sink) };
        rig.set(|v| {
            v.phase = WatchPhase::Printing;
            v.file = Some("benchy.gcode".into());
        });
        rig
    }

    fn set(&self, f: impl FnOnce(&mut PrinterView)) {
        self.reg.view.send_modify(f);
    }

    fn emit(&self, ev: WatchEvent) {
        self.events.send(ev).unwrap();
    }

    /// What the watch does on a pause decision: the view, the action's events, the frame.
    fn pause_decision(&self, frame: &Path) {
        let now = Instant::now();
        self.set(|v| {
            v.p = Some(1.9);
            v.normalized_p = Some(3.2);
            v.last_decision = Some(LastDecision { decision: Decision::Pause, at: SystemTime::now(), p: 1.9 });
            v.acted = true;
        });
        self.emit(WatchEvent::Acting { printer: "voron".into(), action: Action::Pause, decided: now, requested: now });
        self.emit(WatchEvent::Acted { printer: "voron".into(), action: Action::Pause, result: Ok(()), decided: now, done: Instant::now() });
        self.emit(WatchEvent::FrameSaved { printer: "voron".into(), path: frame.to_path_buf() });
    }

    async fn stop(mut self) {
        self.sink.take().unwrap().stop(Duration::from_secs(5)).await;
    }
}

const PAUSED: &str = "paused `benchy.gcode` on voron: spaghetti detected, p=1.90; frame attached";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_gets_its_own_payload_shape_and_the_frame() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (frame, jpeg) = saved_frame(dir.path(), "20261206-220000-voron-job-pause.jpg");
    let mut tg = NotifyConfig::new(Kind::Telegram);
    tg.url = Some(Secret::new(rec.url("/tg")));
    tg.token = Some(Secret::new(TG_TOKEN));
    tg.chat_id = Some("-100200300".into());
    tg.refill_secs = 0.0;
    let mut ntfy = entry(Kind::Ntfy, rec.url("/ntfy/printers"));
    ntfy.token = Some(Secret::new(NTFY_TOKEN));
    let mut hook = entry(Kind::Webhook, rec.url("/hook"));
    hook.headers.insert("Authorization".into(), Secret::new("Bearer hook-secret"));
    let mut hook_url = entry(Kind::Webhook, rec.url("/linkhook"));
    hook_url.frame = FrameMode::Url;
    hook_url.frame_url_base = Some("https://pi.lan/frames/".into());
    let discord = entry(Kind::Discord, rec.url(&format!("/discord/webhooks/42/{DISCORD_TOKEN}")));
    let rig = Rig::start(&[hook, ntfy, tg, discord, hook_url]);

    rig.pause_decision(&frame);

    // Webhook: multipart, a JSON `payload` and the `frame`.
    let r = &rec.wait("/hook", 1, Duration::from_secs(10)).await[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("authorization").as_deref(), Some("Bearer hook-secret"));
    let payload: serde_json::Value = serde_json::from_slice(&r.part("payload").expect("a payload part").data).unwrap();
    assert_eq!(payload["event"], "paused");
    assert_eq!(payload["kind"], "pause");
    assert_eq!(payload["printer"], "voron");
    assert_eq!(payload["file"], "benchy.gcode");
    assert_eq!(payload["message"], PAUSED);
    assert_eq!(payload["p"], 1.9);
    assert_eq!(payload["host"], "farm-pi");
    let f = r.part("frame").expect("a frame part");
    assert_eq!(f.data, jpeg, "the frame, byte for byte");
    assert_eq!(f.content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(f.file_name.as_deref(), Some("20261206-220000-voron-job-pause.jpg"));

    // Webhook with frame = "url": JSON with the frame's link.
    let r = &rec.wait("/linkhook", 1, Duration::from_secs(10)).await[0];
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    let j = r.json();
    assert_eq!(j["frame_url"], "https://pi.lan/frames/voron/20261206-220000-voron-job-pause.jpg");
    assert_eq!(j["message"], "paused `benchy.gcode` on voron: spaghetti detected, p=1.90");

    // ntfy: PUT of the JPEG to the topic, the text in headers.
    let r = &rec.wait("/ntfy/printers", 1, Duration::from_secs(10)).await[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(r.body, jpeg);
    assert_eq!(r.header("message").as_deref(), Some(PAUSED));
    assert_eq!(r.header("title").as_deref(), Some("voron: print paused"));
    assert_eq!(r.header("priority").as_deref(), Some("5"));
    assert_eq!(r.header("filename").as_deref(), Some("20261206-220000-voron-job-pause.jpg"));
    assert_eq!(r.header("authorization"), Some(format!("Bearer {NTFY_TOKEN}")));
    assert!(r.header("tags").unwrap().contains("rotating_light"));

    // Telegram: sendPhoto, multipart chat_id + caption + photo.
    let r = &rec.wait("/tg", 1, Duration::from_secs(10)).await[0];
    assert_eq!(r.uri, format!("/tg/bot{TG_TOKEN}/sendPhoto"));
    assert_eq!(r.part("chat_id").unwrap().text(), "-100200300");
    assert_eq!(r.part("caption").unwrap().text(), PAUSED);
    assert_eq!(r.part("photo").unwrap().data, jpeg);

    // Discord: ?wait=true, payload_json with the attachment shown in the embed, files[0].
    let r = &rec.wait("/discord", 1, Duration::from_secs(10)).await[0];
    assert_eq!(r.uri, format!("/discord/webhooks/42/{DISCORD_TOKEN}?wait=true"));
    let pj: serde_json::Value = serde_json::from_slice(&r.part("payload_json").unwrap().data).unwrap();
    assert_eq!(pj["content"], PAUSED);
    assert_eq!(pj["allowed_mentions"]["parse"], serde_json::json!([]));
    assert_eq!(pj["attachments"][0]["filename"], "20261206-220000-voron-job-pause.jpg");
    assert_eq!(pj["embeds"][0]["image"]["url"], "attachment://20261206-220000-voron-job-pause.jpg");
    let file = r.part("files[0]").unwrap();
    assert_eq!((file.data.as_slice(), file.file_name.as_deref()), (jpeg.as_slice(), Some("20261206-220000-voron-job-pause.jpg")));

    // Without a frame: a print that finished.
    rig.set(|v| v.phase = WatchPhase::Idle);
    rig.emit(WatchEvent::PrintFinished { printer: "voron".into(), job: "j1".into(), outcome: JobOutcome::Completed });
    let r = &rec.wait("/hook", 2, Duration::from_secs(10)).await[1];
    assert_eq!(r.json()["event"], "print_finished");
    assert_eq!(r.json()["message"], "`benchy.gcode` finished on voron");
    let r = &rec.wait("/ntfy/printers", 2, Duration::from_secs(10)).await[1];
    assert_eq!((r.method.as_str(), String::from_utf8_lossy(&r.body).as_ref()), ("POST", "`benchy.gcode` finished on voron"));
    assert_eq!(r.header("priority").as_deref(), Some("3"));
    let r = &rec.wait("/tg", 2, Duration::from_secs(10)).await[1];
    assert_eq!(r.uri, format!("/tg/bot{TG_TOKEN}/sendMessage"));
    assert_eq!(r.json()["text"], "`benchy.gcode` finished on voron");
    assert_eq!(r.json()["chat_id"], "-100200300");
    let r = &rec.wait("/discord", 2, Duration::from_secs(10)).await[1];
    assert_eq!(r.json()["content"], "`benchy.gcode` finished on voron");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_is_tried_again_on_500_and_429() {
    let rec = Recorder::start().await;
    rec.script("/hook", vec![Answer::status(500, "oops"), Answer::status(429, "slow down").with_header("Retry-After", "1")]);
    rec.script(
        "/tg",
        vec![Answer::status(429, r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 1","parameters":{"retry_after":1}}"#)],
    );
    rec.script("/discord", vec![Answer::status(429, r#"{"message":"You are being rate limited.","retry_after":0.5,"global":false}"#)]);
    rec.script("/gone", vec![Answer::status(404, r#"{"message":"Unknown Webhook","code":10015}"#)]);
    rec.script("/bad", vec![Answer::status(401, r#"{"code":40101,"http":401,"error":"unauthorized"}"#)]);
    let mut tg = NotifyConfig::new(Kind::Telegram);
    tg.url = Some(Secret::new(rec.url("/tg")));
    tg.token = Some(Secret::new(TG_TOKEN));
    tg.chat_id = Some("7".into());
    let rig = Rig::start(&[
        entry(Kind::Webhook, rec.url("/hook")),
        tg,
        entry(Kind::Discord, rec.url("/discord/x")),
        entry(Kind::Discord, rec.url("/gone/x")),
        entry(Kind::Ntfy, rec.url("/bad/topic")),
    ]);
    let t0 = Instant::now();
    rig.emit(WatchEvent::PrintFinished { printer: "voron".into(), job: "j".into(), outcome: JobOutcome::Cancelled });
    let hook = rec.wait("/hook", 3, Duration::from_secs(20)).await;
    assert_eq!(hook.len(), 3, "500, 429, then delivered");
    let gap = hook[2].at - hook[1].at;
    assert!(gap >= Duration::from_millis(950), "Retry-After: 1 was honoured ({gap:?})");
    assert!(hook[1].at - hook[0].at >= Duration::from_millis(950), "a growing wait after a 500");
    assert_eq!(hook[2].json()["event"], "print_failed");
    let tg = rec.wait("/tg", 2, Duration::from_secs(10)).await;
    assert!(tg[1].at - tg[0].at >= Duration::from_millis(950), "Telegram's retry_after was honoured");
    let d = rec.wait("/discord", 2, Duration::from_secs(10)).await;
    assert!(d[1].at - d[0].at >= Duration::from_millis(450), "Discord's retry_after (0.5 s) was honoured");
    // A deleted Discord webhook and a refused ntfy token are not tried again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rec.to("/gone").len(), 1);
    assert_eq!(rec.to("/bad").len(), 1);
    // The deleted webhook's entry is off; the others still deliver.
    rig.emit(WatchEvent::PrintFinished { printer: "voron".into(), job: "j2".into(), outcome: JobOutcome::Completed });
    rec.wait("/hook", 4, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rec.to("/gone").len(), 1, "a webhook that answered 404 gets nothing more");
    println!("FIGURE notify retries: 500 then 429 (Retry-After 1) then delivered in {:.1} s", (hook[2].at - t0).as_secs_f64());
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_printer_does_not_send_a_hundred_messages() {
    let rec = Recorder::start().await;
    let mut hook = entry(Kind::Webhook, rec.url("/hook"));
    hook.max_burst = 3;
    hook.refill_secs = 2.0;
    let rig = Rig::start(&[hook]);
    for i in 0..100 {
        let printer = "voron".to_string();
        rig.emit(WatchEvent::Warned { printer, p: 0.5 + i as f64 / 100.0, frame: None });
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rec.to("/hook").len(), 3, "a burst of 3, the rest held back");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rig.emit(WatchEvent::Warned { printer: "voron".into(), p: 0.7, frame: None });
    let got = rec.wait("/hook", 4, Duration::from_secs(5)).await;
    let j = got[3].json();
    assert_eq!(j["held_back"], 97);
    assert!(j["message"].as_str().unwrap().contains("97 earlier alert(s) for this printer held back by the rate limit"), "{j}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snoozed_alerts_are_held_back_and_outages_are_told_after_their_grace() {
    let rec = Recorder::start().await;
    let mut hook = entry(Kind::Webhook, rec.url("/hook"));
    hook.offline_after_secs = 1.0;
    let mut only_pauses = entry(Kind::Webhook, rec.url("/pauses"));
    only_pauses.events = vec![AlertKind::Pause];
    let rig = Rig::start(&[hook, only_pauses]);
    let dir = tempfile::tempdir().unwrap();
    let (frame, _) = saved_frame(dir.path(), "f.jpg");

    rig.set(|v| v.snoozed_until = Some(SystemTime::now() + Duration::from_secs(600)));
    rig.emit(WatchEvent::Warned { printer: "voron".into(), p: 0.6, frame: None });
    rig.pause_decision(&frame);
    rig.emit(WatchEvent::CameraFailed { printer: "voron".into(), message: "connection refused".into() });
    rig.emit(WatchEvent::PrintFinished { printer: "voron".into(), job: "j".into(), outcome: JobOutcome::Completed });
    let got = rec.wait("/hook", 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let events: Vec<String> = rec.to("/hook").iter().map(|r| r.json()["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(events, ["print_finished"], "snoozed: no warning, pause or camera alert; the print's end still goes out");
    assert_eq!(got[0].json()["event"], "print_finished");
    assert!(rec.to("/pauses").is_empty());

    // Snooze over (the camera came back meanwhile: nothing to tell): a printer that goes
    // offline is told after the grace, and its return.
    rig.emit(WatchEvent::CameraBack { printer: "voron".into() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    rig.set(|v| v.snoozed_until = None);
    rig.set(|v| {
        v.phase = WatchPhase::Offline;
        v.offline_reason = Some("Moonraker does not answer".into());
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rec.to("/hook").len(), 1, "not before the grace");
    let got = rec.wait("/hook", 2, Duration::from_secs(5)).await;
    let j = got[1].json();
    assert_eq!(j["event"], "printer_offline");
    assert!(j["message"].as_str().unwrap().contains("voron is offline (Moonraker does not answer)"), "{j}");
    rig.set(|v| v.phase = WatchPhase::Idle);
    let got = rec.wait("/hook", 3, Duration::from_secs(5)).await;
    assert_eq!(got[2].json()["event"], "printer_online");
    // A blip shorter than the grace is not told at all.
    rig.set(|v| v.phase = WatchPhase::Offline);
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.set(|v| v.phase = WatchPhase::Idle);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rec.to("/hook").len(), 3, "{:?}", rec.to("/hook").iter().map(|r| r.json()["event"].clone()).collect::<Vec<_>>());
    assert!(rec.to("/pauses").is_empty(), "that entry takes only pause alerts");
    rig.stop().await;
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn tokens_never_reach_the_log() {
    use tracing_subscriber::layer::SubscriberExt;
    let _ = tracing_log::LogTracer::init();
    let cap = Capture::default();
    let writer = cap.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("trace"))
        .with(printvigil::logging::secrets_guard())
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || writer.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let rec = Recorder::start().await;
    rec.script("/tg", vec![Answer::status(401, r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#)]);
    rec.script("/discord", vec![Answer::status(403, "{}")]);
    let mut tg = NotifyConfig::new(Kind::Telegram);
    tg.url = Some(Secret::new(rec.url("/tg")));
    tg.token = Some(Secret::new(TG_TOKEN));
    tg.chat_id = Some("7".into());
    // A service that is not there at all: reqwest's error would carry the URL.
    let mut dead = NotifyConfig::new(Kind::Telegram);
    dead.url = Some(Secret::new("http://127.0.0.1:9/tg"));
    dead.token = Some(Secret::new(TG_TOKEN));
    dead.chat_id = Some("7".into());
    dead.attempts = 2;
    let rig = Rig::start(&[tg, entry(Kind::Discord, rec.url(&format!("/discord/webhooks/1/{DISCORD_TOKEN}"))), dead]);
    rig.emit(WatchEvent::PrintFinished { printer: "voron".into(), job: "j".into(), outcome: JobOutcome::Completed });
    rec.wait("/tg", 1, Duration::from_secs(5)).await;
    rec.wait("/discord", 1, Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = String::from_utf8_lossy(&cap.0.lock().unwrap()).into_owned();
        if text.matches("could not be sent").count() >= 3 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(text.contains("Telegram refused the bot token"), "{text}");
    assert!(text.contains("Discord refused the webhook"), "{text}");
    assert_eq!(text.matches("could not be sent").count(), 3, "{text}");
    for secret in [TG_TOKEN, "telegram-bot-token", DISCORD_TOKEN] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_sends_each_entry_a_message_and_says_what_it_answered() {
    let rec = Recorder::start().await;
    rec.script("/tg", vec![Answer::status(401, r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#)]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[[notify]]\nkind = \"ntfy\"\nurl = {:?}\n[[notify]]\nkind = \"telegram\"\nurl = {:?}\ntoken = {TG_TOKEN:?}\nchat_id = \"5\"\n",
            dir.path(),
            rec.url("/ntfy/t"),
            rec.url("/tg")
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_printvigil"))
        .arg("--config")
        .arg(&config)
        .args(["notify", "test"])
        .env_remove("PRINTVIGIL_CONFIG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refused token fails the command");
    assert!(stdout.contains("ok    notify[0] ntfy (127.0.0.1)"), "{stdout}");
    assert!(stdout.contains("FAIL  notify[1] telegram (127.0.0.1)") && stdout.contains("Telegram refused the bot token"), "{stdout}");
    assert!(!stdout.contains(TG_TOKEN) && !stderr.contains(TG_TOKEN), "{stdout}{stderr}");
    let r = &rec.to("/ntfy/t")[0];
    assert_eq!((r.method.as_str(), &r.body[..2]), ("PUT", &[0xFF, 0xD8][..]), "the test message carries a frame");
    assert!(r.header("message").unwrap().contains("a test message from printvigil"));
    assert_eq!(rec.to("/tg").len(), 1, "a refused token is not tried again");
}
