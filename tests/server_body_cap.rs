//! A server (or whatever answers in its place) that sends a huge body cannot make the
//! daemon's memory grow: every answer is read with a cap, as it streams in. Alone in its
//! test binary so the peak RSS it prints is its own.

mod support;

use std::time::Duration;

use printvigil::server::config::ServerConfig;
use printvigil::server::oauth::TokenManager;
use printvigil::server::{self};
use support::fake_obico::{self, Settings};

fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_answer_is_cut_short() {
    const HUGE: u64 = 100 * 1024 * 1024;
    let fake = fake_obico::start(Settings::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = Settings::default();
    let c = ServerConfig {
        url: fake.url(),
        client_id: Some(s.client_id),
        client_secret: Some(s.client_secret),
        request_timeout_secs: 60.0,
        ..Default::default()
    };
    let api = server::client_for(&c, dir.path()).unwrap();
    api.list_printers().await.unwrap();
    let idle = status_kib("VmHWM:");

    fake.set_faults(|f| f.huge = Some(HUGE));
    let api_err = api.list_printers().await.unwrap_err();
    let after_api = status_kib("VmHWM:");

    let fresh = tempfile::tempdir().unwrap();
    let tokens = TokenManager::new(&c, server::http_client(&c).unwrap(), Some(server::token_file(fresh.path()))).unwrap();
    let token_err = tokens.access_token().await.unwrap_err();
    let after_token = status_kib("VmHWM:");
    tokio::time::sleep(Duration::from_millis(10)).await;
    println!(
        "FIGURE 100 MiB answers: peak RSS idle {} MiB, after the API answer {} MiB, after the token answer {} MiB",
        idle / 1024,
        after_api / 1024,
        after_token / 1024
    );
    assert!(api_err.is_transient(), "{api_err}");
    assert!(api_err.to_string().contains("server.url"), "{api_err}");
    assert!(token_err.is_transient(), "{token_err}");
    assert!(after_token < idle + 32 * 1024, "peak RSS grew from {idle} KiB to {after_token} KiB");
}
