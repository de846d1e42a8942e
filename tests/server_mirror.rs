//! The server mirror against a fake Obico server: OAuth, API semantics, registration,
//! login/logout, and a fault suite over whole simulated prints.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use printvigil::secret::Secret;
use printvigil::server::api::ApiError;
use printvigil::server::config::{ClientAuth, ServerConfig, TokenHeader, UploadMode};
use printvigil::server::oauth::{AuthError, TokenManager, TokenSource};
use printvigil::server::upload::{FrameScore, solid_jpeg};
use printvigil::server::{self, DEFAULT_PRINTER, FinishStatus, Mirror};
use support::fake_obico::{self, FakeObico, Settings, Shape, audit};

fn cfg(fake: &FakeObico) -> ServerConfig {
    let s = Settings::default();
    ServerConfig {
        url: fake.url(),
        client_id: Some(s.client_id),
        client_secret: Some(s.client_secret),
        printer_name: Some("test-printer".into()),
        upload: UploadMode::Always,
        upload_min_interval_secs: 0.0,
        request_timeout_secs: 0.5,
        backoff_initial_ms: 10,
        backoff_cap_secs: 0.1,
        ..Default::default()
    }
}

fn manager(c: &ServerConfig, dir: &Path) -> TokenManager {
    TokenManager::new(
        c,
        server::http_client(c).unwrap(),
        Some(server::token_file(dir)),
    )
    .unwrap()
}

#[tokio::test]
async fn token_client_auth_basic_and_form() {
    let fake = fake_obico::start(Settings {
        accept_form: false,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&fake);
    c.client_auth = ClientAuth::Basic;
    manager(&c, dir.path())
        .access_token()
        .await
        .expect("basic auth works");
    c.client_auth = ClientAuth::Form;
    let e = manager(&c, tempfile::tempdir().unwrap().path())
        .access_token()
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::InvalidClient { .. }), "{e}");
    assert!(
        e.to_string().contains("server.client_auth = \"basic\""),
        "names the fix: {e}"
    );

    fake.set_settings(|s| {
        s.accept_form = true;
        s.accept_basic = false;
    });
    manager(&c, tempfile::tempdir().unwrap().path())
        .access_token()
        .await
        .expect("form auth works");
    c.client_secret = Some(Secret::new("wrong"));
    let e = manager(&c, tempfile::tempdir().unwrap().path())
        .access_token()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("server.client_secret"), "{e}");
    assert!(!e.to_string().contains("wrong") && !format!("{e:?}").contains("wrong"));
    assert_eq!(fake.grants("client_credentials"), 2);
}

#[tokio::test]
async fn token_is_kept_private_and_reused_across_restarts() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&fake);
    let t1 = manager(&c, dir.path()).access_token().await.unwrap();
    let path = server::token_file(dir.path());
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let m2 = manager(&c, dir.path());
    assert_eq!(
        m2.access_token().await.unwrap(),
        t1,
        "the kept token is reused"
    );
    assert_eq!(
        fake.grants("client_credentials"),
        1,
        "no new token after a restart"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600,
        "loose mode repaired"
    );
    assert!(!format!("{m2:?}").contains(t1.expose()));
    assert!(!format!("{m2:?}").contains("s3cr3t"));
}

#[tokio::test]
async fn refresh_grant_ahead_of_expiry_then_fallback_to_client_credentials() {
    let fake = fake_obico::start(Settings {
        issue_refresh: true,
        expires_in: 0,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let m = manager(&cfg(&fake), dir.path());
    let t1 = m.access_token().await.unwrap();
    let t2 = m.access_token().await.unwrap();
    assert_ne!(t1, t2);
    assert_eq!(
        (
            fake.grants("client_credentials"),
            fake.grants("refresh_token")
        ),
        (1, 1)
    );
    fake.revoke_all();
    m.access_token().await.unwrap();
    assert_eq!(
        fake.grants("client_credentials"),
        2,
        "refused refresh token: a new client-credentials token"
    );
}

#[tokio::test]
async fn revoked_token_is_replaced_once_then_reported() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&fake);
    let api = server::client_for(&c, dir.path()).unwrap();
    let p = api.create_printer("p1").await.unwrap();
    fake.revoke_all();
    assert_eq!(
        api.get_printer(p.id).await.unwrap().id,
        p.id,
        "new token fetched after the 403"
    );
    assert_eq!(fake.grants("client_credentials"), 2);
    assert_eq!(fake.auth_failures(), 1);

    // A static token that is refused cannot be renewed: a message that says what to do.
    let mut st = c.clone();
    st.token = Some(Secret::new("not-a-token"));
    st.token_header = TokenHeader::XApiKey;
    let e = server::client_for(&st, dir.path())
        .unwrap()
        .get_printer(p.id)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ApiError::StaticTokenRefused { status: 403, .. }),
        "{e}"
    );
    // A configured token is never renewed: the message must not claim it was.
    let msg = e.to_string();
    assert!(msg.contains("server.token") && !msg.contains("fetching a new one"), "{msg}");
}

#[tokio::test]
async fn static_token_as_x_api_key() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let minted = manager(&cfg(&fake), dir.path())
        .access_token()
        .await
        .unwrap();
    let c = ServerConfig {
        token: Some(minted),
        token_header: TokenHeader::XApiKey,
        client_id: None,
        client_secret: None,
        ..cfg(&fake)
    };
    let api = server::client_for(&c, tempfile::tempdir().unwrap().path()).unwrap();
    api.create_printer("via-x-api-key").await.unwrap();
    assert_eq!(
        fake.grants("client_credentials"),
        1,
        "the static token is used as is"
    );
}

#[tokio::test]
async fn stock_server_refusal_says_so_and_names_the_ways_out() {
    let fake = fake_obico::start(Settings {
        stock: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let api = server::client_for(&cfg(&fake), dir.path()).unwrap();
    let e = api.create_printer("p").await.unwrap_err();
    assert!(matches!(e, ApiError::NoPermission), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("You do not have permission to perform this action."),
        "{msg}"
    );
    assert!(
        msg.contains("printvigil login")
            && msg.contains("server.token")
            && msg.contains("client-credentials"),
        "{msg}"
    );
    assert!(
        !e.is_definite_rejection(),
        "events wait for the fix instead of being dropped"
    );
}

#[tokio::test]
async fn oauth_errors_say_what_to_fix() {
    let fake = fake_obico::start(Settings {
        allow_client_credentials: false,
        ..Default::default()
    })
    .await;
    let e = manager(&cfg(&fake), tempfile::tempdir().unwrap().path())
        .access_token()
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::GrantNotAllowed { .. }), "{e}");
    assert!(e.to_string().contains("printvigil login"), "{e}");

    // Nothing listens there.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let mut c = cfg(&fake);
    c.url = format!("http://127.0.0.1:{port}");
    let e = manager(&c, tempfile::tempdir().unwrap().path())
        .access_token()
        .await
        .unwrap_err();
    assert!(
        matches!(e, AuthError::Network { .. }) && e.is_transient(),
        "{e}"
    );
    assert!(e.to_string().contains("check server.url"), "{e}");
    let c = ServerConfig {
        client_id: None,
        client_secret: None,
        ..c
    };
    let e = manager(&c, tempfile::tempdir().unwrap().path())
        .access_token()
        .await
        .unwrap_err();
    assert!(
        matches!(e, AuthError::NoCredentials) && e.to_string().contains("printvigil login"),
        "{e}"
    );
}

#[tokio::test]
async fn not_printing_404s_and_both_predict_shapes() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let api = server::client_for(&cfg(&fake), dir.path()).unwrap();
    let p = api.create_printer("p").await.unwrap();
    let jpeg = solid_jpeg(64, 48, [90, 90, 90]);
    assert!(
        !api.finish_print(p.id, "success", None).await.unwrap(),
        "nothing open: already finished, not an error"
    );
    assert!(matches!(
        api.predict(p.id, jpeg.clone()).await,
        Err(ApiError::NotPrinting)
    ));
    api.start_print(p.id, "benchy.gcode", None).await.unwrap();
    let got = api.get_printer(p.id).await.unwrap();
    assert!(got.printing && got.current_filename.as_deref() == Some("benchy.gcode"));
    let real = api.predict(p.id, jpeg.clone()).await.unwrap();
    assert_eq!(
        (real.p, real.detections.len(), real.ewm_mean),
        (0.12, 1, Some(0.05))
    );
    fake.set_settings(|s| s.shape = Shape::Guide);
    let guide = api.predict(p.id, jpeg).await.unwrap();
    assert_eq!(
        (guide.p, guide.normalized_p, guide.detections[0].bbox.len()),
        (0.12, Some(0.02), 4)
    );
    assert!(api.finish_print(p.id, "cancelled", None).await.unwrap());
    assert!(matches!(
        api.get_printer(p.id + 100).await,
        Err(ApiError::PrinterNotFound(_))
    ));
    let e = api.start_print(p.id, "", None).await.unwrap_err();
    assert!(
        e.is_definite_rejection() && e.to_string().contains("filename: This field is required."),
        "{e}"
    );
    let e = api.create_printer("").await.unwrap_err();
    assert!(
        e.to_string().contains("name: This field is required."),
        "{e}"
    );
}

#[tokio::test]
async fn registration_survives_a_crash_between_create_and_persist() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&fake);
    {
        // The crashed run: intent recorded, printer created on the server, id never saved.
        let m = Mirror::open(&c, dir.path()).unwrap();
        m.outbox()
            .record_intent(DEFAULT_PRINTER, "test-printer")
            .unwrap();
        m.api().create_printer("test-printer").await.unwrap();
    }
    let m = Mirror::open(&c, dir.path()).unwrap();
    let id = m.server_id(DEFAULT_PRINTER).await.unwrap();
    assert_eq!(fake.printers().len(), 1, "found by name, not created twice");
    assert_eq!(fake.printers()[0].id, id);
    drop(m);
    let m = Mirror::open(&c, dir.path()).unwrap();
    assert_eq!(
        m.server_id(DEFAULT_PRINTER).await.unwrap(),
        id,
        "the id is kept"
    );
    assert_eq!(
        fake.calls().iter().filter(|x| x.kind == "create").count(),
        1
    );

    // A fresh host registers once, under its configured name.
    let dir2 = tempfile::tempdir().unwrap();
    let c2 = ServerConfig {
        printer_name: Some("second".into()),
        ..c.clone()
    };
    let m2 = Mirror::open(&c2, dir2.path()).unwrap();
    let id2 = m2.server_id(DEFAULT_PRINTER).await.unwrap();
    assert_ne!(id2, id);
    assert_eq!(
        fake.printers()
            .iter()
            .filter(|p| p.name == "second")
            .count(),
        1
    );
}

#[tokio::test]
async fn rejected_event_is_dropped_with_reason_and_the_queue_goes_on() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::open(&cfg(&fake), dir.path()).unwrap();
    m.spawn();
    m.start_print(DEFAULT_PRINTER, "bad", "").unwrap();
    m.finish_print(DEFAULT_PRINTER, "bad", FinishStatus::Success)
        .unwrap();
    m.start_print(DEFAULT_PRINTER, "good", "good.gcode")
        .unwrap();
    assert!(m.flush(Duration::from_secs(20)).await);
    let h = m.outbox().history(DEFAULT_PRINTER).unwrap();
    assert_eq!(h[0].2, "dropped");
    assert!(h[0].3.as_deref().unwrap().contains("filename"), "{h:?}");
    assert_eq!((h[1].2.as_str(), h[2].2.as_str()), ("sent", "sent"));
    let kinds: Vec<String> = fake.calls().into_iter().map(|c| c.kind).collect();
    assert_eq!(kinds, ["create", "finish_not_printing", "start"]);
}

#[tokio::test]
async fn login_with_pkce_over_loopback_then_logout() {
    // A stock server: client-credentials tokens cannot manage printers, a linked user can.
    let fake = fake_obico::start(Settings {
        stock: true,
        issue_refresh: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&fake);
    let api = server::client_for(&c, dir.path()).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let browser = tokio::spawn(async move {
        let url = rx.await.unwrap();
        // The "browser": the server approves and redirects to the loopback address.
        reqwest::get(url).await.unwrap().text().await.unwrap()
    });
    server::login::login(
        &c,
        api.tokens(),
        server::login::Mode::Loopback {
            timeout: Duration::from_secs(20),
        },
        |u| {
            tx.send(u.to_string()).unwrap();
        },
    )
    .await
    .unwrap();
    assert!(browser.await.unwrap().contains("linked"));
    assert_eq!(fake.grants("authorization_code"), 1);
    assert_eq!(api.tokens().current_source().await, Some(TokenSource::User));
    api.create_printer("linked")
        .await
        .expect("a user-bound token can manage printers");

    // Restart: the linked token is reused from the file.
    let api2 = server::client_for(&c, dir.path()).unwrap();
    api2.list_printers().await.unwrap();
    assert_eq!(fake.grants("client_credentials"), 0);

    let note = api2.tokens().revoke_and_forget().await.unwrap();
    assert!(note.contains("revoked the access_token"), "{note}");
    assert!(!server::token_file(dir.path()).exists());
    assert_eq!(fake.live_tokens(), 0);
}

#[tokio::test]
async fn login_paste_mode_checks_state() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&fake);
    let api = server::client_for(&c, dir.path()).unwrap();
    let mode = server::login::Mode::Paste(Box::new(|| {
        Ok("http://127.0.0.1:8734/callback?code=x&state=forged".to_string())
    }));
    let e = server::login::login(&c, api.tokens(), mode, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, server::login::LoginError::StateMismatch), "{e}");
    assert_eq!(fake.grants("authorization_code"), 0);

    // The right state, with the code the server handed out, works: the "browser" is
    // sent to the loopback address, which the user pastes.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mode = server::login::Mode::Paste(Box::new(move || Ok(rx.recv().unwrap())));
    server::login::login(&c, api.tokens(), mode, move |u| {
        let u = u.to_string();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let resp = client.get(u).send().await.unwrap();
            let location = resp.headers()["location"].to_str().unwrap().to_string();
            assert!(
                location.starts_with("http://127.0.0.1:8734/callback?"),
                "{location}"
            );
            tx.send(location).unwrap();
        });
    })
    .await
    .unwrap();
    assert_eq!(fake.grants("authorization_code"), 1);
}

/// Whole simulated prints through the mirror while the server misbehaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_suite_whole_prints() {
    let started = Instant::now();
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&fake);
    let m = Arc::new(Mirror::open(&c, dir.path()).unwrap());
    m.spawn();
    let jpeg = solid_jpeg(1600, 1200, [120, 110, 100]);
    let mut jobs = Vec::new();
    let score = FrameScore {
        p: 0.1,
        smoothed: 0.05,
        ..Default::default()
    };
    let frames = |m: &Mirror, n: usize| {
        for _ in 0..n {
            m.offer_frame(DEFAULT_PRINTER, jpeg.clone(), &score);
        }
    };
    let mut job = 0;
    let mut print = |m: &Mirror, jobs: &mut Vec<String>| {
        let j = format!("job-{job}");
        job += 1;
        m.start_print(DEFAULT_PRINTER, &j, &format!("{j}.gcode"))
            .unwrap();
        jobs.push(j);
    };
    let settle = || tokio::time::sleep(Duration::from_millis(300));

    // 1. Server down for many backoff cycles mid-print (cap 100 ms: ~20 cycles in 2 s,
    //    the same number of cycles as ~1.5 h at the 5 min production cap).
    print(&m, &mut jobs);
    settle().await;
    fake.set_down(true).await.unwrap();
    frames(&m, 20);
    m.finish_print(DEFAULT_PRINTER, jobs.last().unwrap(), FinishStatus::Success)
        .unwrap();
    print(&m, &mut jobs);
    frames(&m, 20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replaced_while_down = m
        .stats()
        .frames_replaced
        .load(std::sync::atomic::Ordering::Relaxed);
    fake.set_down(false).await.unwrap();
    settle().await;
    m.finish_print(
        DEFAULT_PRINTER,
        jobs.last().unwrap(),
        FinishStatus::Cancelled,
    )
    .unwrap();

    // 2. Every third request answers 500.
    fake.set_faults(|f| f.fail_every = 3);
    for _ in 0..3 {
        print(&m, &mut jobs);
        frames(&m, 3);
        settle().await;
        m.finish_print(DEFAULT_PRINTER, jobs.last().unwrap(), FinishStatus::Success)
            .unwrap();
    }
    assert!(m.flush(Duration::from_secs(30)).await);
    fake.set_faults(|f| f.fail_every = 0);

    // 3. Responses slower than the client's timeout.
    fake.set_faults(|f| f.slow = Some(Duration::from_millis(800)));
    print(&m, &mut jobs);
    frames(&m, 5);
    m.finish_print(DEFAULT_PRINTER, jobs.last().unwrap(), FinishStatus::Success)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fake.set_faults(|f| f.slow = None);

    // 3b. Answers that arrive after the timeout although the server acted.
    fake.set_faults(|f| f.late = Some(Duration::from_millis(700)));
    print(&m, &mut jobs);
    frames(&m, 2);
    m.finish_print(DEFAULT_PRINTER, jobs.last().unwrap(), FinishStatus::Success)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fake.set_faults(|f| f.late = None);

    // 4. Token revoked mid-print.
    print(&m, &mut jobs);
    settle().await;
    fake.revoke_all();
    frames(&m, 3);
    m.finish_print(DEFAULT_PRINTER, jobs.last().unwrap(), FinishStatus::Success)
        .unwrap();

    assert!(
        m.flush(Duration::from_secs(30)).await,
        "everything delivered once the server is back"
    );
    let calls = fake.calls();
    let printer = calls.iter().find(|c| c.kind == "create").unwrap().printer;
    let (lost, dup, order) = audit(&calls, printer, &jobs);
    let st = m.stats();
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "FAULT SUITE (in-process): prints={} events={} lost={lost} duplicated={dup} order_violations={order} \
         send_failures={} faults_served={} frames_uploaded={} frames_replaced_while_down={replaced_while_down} wall={:.1}s",
        jobs.len(),
        jobs.len() * 2,
        ld(&st.send_failures),
        fake.faults_served(),
        ld(&st.frames_uploaded),
        started.elapsed().as_secs_f64()
    );
    assert_eq!((lost, dup, order), (0, 0, 0), "{calls:#?}");
    assert!(ld(&st.send_failures) > 10, "the faults were felt");
    assert!(ld(&st.frames_uploaded) > 0);
    assert!(
        replaced_while_down >= 30,
        "at most one frame kept while the server is away: {replaced_while_down}"
    );
    assert!(
        fake.grants("client_credentials") >= 2,
        "a new token after the revocation"
    );
}

/// A send interrupted after the server acted (crash or lost answer) is found on the
/// server and not repeated; one that never arrived is sent.
#[tokio::test]
async fn interrupted_send_is_reconciled_not_repeated() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&fake);
    let key = |kind: &str, job: &str| format!("{DEFAULT_PRINTER}/{kind}/{job}");
    {
        let m = Mirror::open(&c, dir.path()).unwrap();
        let id = m.server_id(DEFAULT_PRINTER).await.unwrap();
        // Start of job a: committed in flight, reached the server, never marked sent.
        m.start_print(DEFAULT_PRINTER, "a", "a.gcode").unwrap();
        let ev = m.outbox().heads().unwrap()[0].clone();
        m.outbox().mark_in_flight(ev.id).unwrap();
        m.api()
            .start_print(id, "a.gcode", Some(&key("start", "a")))
            .await
            .unwrap();
        // Finish of job a: in flight too, but it never reached the server.
        m.finish_print(DEFAULT_PRINTER, "a", FinishStatus::Success)
            .unwrap();
    } // killed here
    let m = Mirror::open(&c, dir.path()).unwrap();
    let fin = m.outbox().heads().unwrap();
    assert_eq!(fin.len(), 1);
    m.spawn();
    assert!(m.flush(Duration::from_secs(20)).await);
    let kinds: Vec<(String, Option<String>)> = fake
        .calls()
        .into_iter()
        .filter(|c| c.kind != "create")
        .map(|c| (c.kind, c.key))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("start".to_string(), Some(key("start", "a"))),
            ("finish".to_string(), Some(key("finish", "a")))
        ]
    );

    // The finish arrived but was not marked: found closed, not sent again.
    m.start_print(DEFAULT_PRINTER, "b", "b.gcode").unwrap();
    assert!(m.flush(Duration::from_secs(20)).await);
    m.finish_print(DEFAULT_PRINTER, "b", FinishStatus::Success)
        .unwrap();
    drop(m);
    let m = Mirror::open(&c, dir.path()).unwrap();
    let ev = m.outbox().heads().unwrap()[0].clone();
    m.outbox().mark_in_flight(ev.id).unwrap();
    let id = m.server_id(DEFAULT_PRINTER).await.unwrap();
    assert!(
        m.api()
            .finish_print(id, "success", Some(&key("finish", "b")))
            .await
            .unwrap()
    );
    m.spawn();
    assert!(m.flush(Duration::from_secs(20)).await);
    let calls = fake.calls();
    let (lost, dup, order) = audit(&calls, id, &["a".into(), "b".into()]);
    assert_eq!((lost, dup, order), (0, 0, 0), "{calls:#?}");
}

#[tokio::test]
async fn check_reports_each_link_with_a_fix() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = printvigil::config::Config {
        state_dir: dir.path().to_path_buf(),
        server: Some(cfg(&fake)),
        ..Default::default()
    };
    let lines = server::check::run(&config).await;
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    assert!(lines.iter().all(|l| l.ok), "{text:#?}");
    for what in [
        "server reachable",
        "token obtainable",
        "token file private",
        "printer API usable",
        "printer registered",
        "outbox",
    ] {
        assert!(
            lines.iter().any(|l| l.what == what),
            "{what} missing: {text:#?}"
        );
    }

    fake.set_settings(|s| s.stock = true);
    let dir2 = tempfile::tempdir().unwrap();
    let stock = printvigil::config::Config {
        state_dir: dir2.path().to_path_buf(),
        ..config.clone()
    };
    // Two events stuck behind the refusal: the outbox line still shows them.
    {
        let m = Mirror::open(&cfg(&fake), dir2.path()).unwrap();
        m.start_print(DEFAULT_PRINTER, "a", "a.gcode").unwrap();
        m.finish_print(DEFAULT_PRINTER, "a", FinishStatus::Success).unwrap();
        m.spawn();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lines = server::check::run(&stock).await;
    let bad = lines.iter().find(|l| !l.ok).expect("a failing line");
    assert_eq!(bad.what, "printer API usable");
    assert!(
        bad.to_string().contains("fix:") && bad.to_string().contains("printvigil login"),
        "{bad}"
    );
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let outbox = lines.iter().find(|l| l.what == "outbox").unwrap_or_else(|| panic!("no outbox line: {text:#?}"));
    assert!(outbox.detail.contains("2 event(s) waiting") && outbox.detail.contains("permission"), "{outbox}");
    assert!(!outbox.ok, "stuck events are a FAIL: {outbox}");

    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let mut down = config.clone();
    down.server.as_mut().unwrap().url = format!("http://127.0.0.1:{port}");
    let lines = server::check::run(&down).await;
    assert_eq!(
        (lines[0].what.as_str(), lines[0].ok),
        ("server reachable", false)
    );
    let whats: Vec<&str> = lines.iter().map(|l| l.what.as_str()).collect();
    for what in ["token obtainable", "printer API usable", "printer registered", "outbox"] {
        assert!(whats.contains(&what), "every line is reported: {whats:?}");
    }
    assert!(
        lines[0].to_string().contains("check server.url"),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn printer_deleted_on_the_server_is_registered_again() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::open(&cfg(&fake), dir.path()).unwrap();
    m.spawn();
    m.start_print(DEFAULT_PRINTER, "a", "a.gcode").unwrap();
    assert!(m.flush(Duration::from_secs(20)).await);
    let first = m.server_id(DEFAULT_PRINTER).await.unwrap();
    fake.remove_printer(first);
    m.finish_print(DEFAULT_PRINTER, "a", FinishStatus::Success)
        .unwrap();
    m.start_print(DEFAULT_PRINTER, "b", "b.gcode").unwrap();
    assert!(m.flush(Duration::from_secs(20)).await);
    let second = m.server_id(DEFAULT_PRINTER).await.unwrap();
    assert_ne!(first, second);
    let h = m.outbox().history(DEFAULT_PRINTER).unwrap();
    assert!(h.iter().all(|e| e.2 == "sent"), "{h:?}");
    let on_second: Vec<String> = fake
        .calls()
        .into_iter()
        .filter(|c| c.printer == second)
        .map(|c| c.kind)
        .collect();
    // The finish found the new printer with no open print: done without a call.
    assert_eq!(on_second, ["create", "start"]);
}

#[tokio::test]
async fn refused_token_is_not_reused_after_a_restart() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&fake);
    let api = server::client_for(&c, dir.path()).unwrap();
    api.list_printers().await.unwrap();
    fake.revoke_all();
    fake.set_down(true).await.unwrap();
    let t = api.tokens().access_token().await.unwrap();
    assert!(api.tokens().invalidate(&t).await);
    fake.set_down(false).await.unwrap();
    // Restart: the dropped token is renewed, not sent again.
    let api2 = server::client_for(&c, dir.path()).unwrap();
    api2.list_printers().await.unwrap();
    assert_eq!(fake.auth_failures(), 0);
    assert_eq!(fake.grants("client_credentials"), 2);
}

/// TLS: a certificate the host does not trust is refused, and `check` says what to fix;
/// with the CA given in `server.ca_file`, the whole chain works over TLS.
#[tokio::test]
async fn tls_untrusted_certificate_is_refused_and_ca_file_fixes_it() {
    let fake = fake_obico::start_tls(Settings::default()).await;
    assert!(fake.url().starts_with("https://"));
    let dir = tempfile::tempdir().unwrap();
    let config = printvigil::config::Config {
        state_dir: dir.path().to_path_buf(),
        server: Some(cfg(&fake)),
        ..Default::default()
    };
    let lines = server::check::run(&config).await;
    assert_eq!(
        (lines[0].what.as_str(), lines[0].ok),
        ("server reachable", false),
        "{lines:?}"
    );
    assert!(lines[0].to_string().contains("certificate"), "{}", lines[0]);
    assert_eq!(
        fake.grants("client_credentials"),
        0,
        "no secret sent to an untrusted server"
    );

    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, fake.cert_pem.as_ref().unwrap()).unwrap();
    let mut trusted = config.clone();
    trusted.server.as_mut().unwrap().ca_file = Some(ca);
    let lines = server::check::run(&trusted).await;
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    assert!(lines.iter().all(|l| l.ok), "{text:#?}");
    assert!(text[0].contains("TLS ok"), "{text:#?}");
    assert_eq!(fake.grants("client_credentials"), 1);

    let mut bad = trusted.server.clone().unwrap();
    bad.ca_file = Some(dir.path().join("missing.pem"));
    let e = server::http_client(&bad).unwrap_err().to_string();
    assert!(e.contains("server.ca_file"), "{e}");
}

/// `logout` is done only when the server confirmed the revocation: otherwise an error with
/// the reason (a non-zero exit), and the token file is kept for another try.
#[tokio::test]
async fn logout_fails_when_the_revocation_fails() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&fake);
    let api = server::client_for(&c, dir.path()).unwrap();
    api.list_printers().await.unwrap();
    fake.set_down(true).await.unwrap();
    let api2 = server::client_for(&c, dir.path()).unwrap();
    let e = api2.tokens().revoke_and_forget().await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("could not revoke the access_token") && msg.contains("logout"), "{msg}");
    assert!(server::token_file(dir.path()).exists(), "kept for another try");
    fake.set_down(false).await.unwrap();
    let note = api2.tokens().revoke_and_forget().await.unwrap();
    assert!(note.contains("revoked the access_token"), "{note}");
    assert!(!server::token_file(dir.path()).exists());
    assert_eq!(fake.live_tokens(), 0);
}

/// A corrupt outbox is reported by `check` (FAIL, with the fix) and left as it was.
#[tokio::test]
async fn corrupt_outbox_is_reported_and_kept() {
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = server::outbox_file(dir.path());
    let junk = b"this is not a database, but the user may want it back".repeat(100);
    std::fs::write(&path, &junk).unwrap();
    let config = printvigil::config::Config {
        state_dir: dir.path().to_path_buf(),
        server: Some(cfg(&fake)),
        ..Default::default()
    };
    let lines = server::check::run(&config).await;
    let outbox = lines.iter().find(|l| l.what == "outbox").expect("an outbox line");
    assert!(!outbox.ok && outbox.to_string().contains("mv "), "{outbox}");
    assert_eq!(std::fs::read(&path).unwrap(), junk, "kept as it was");
}
