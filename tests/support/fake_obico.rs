//! The tests' fake Obico server: the library's stand-in server
//! (`printvigil::server::standin`), plus what only tests need: starting over TLS with a
//! fresh self-signed certificate, and an audit of the recorded calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use printvigil::server::standin::*;

/// The stand-in under the name the tests know it by.
pub type FakeObico = StandIn;

/// Starts a plain-HTTP fake on loopback.
pub async fn start(settings: Settings) -> Arc<FakeObico> {
    StandIn::start(settings).await.expect("starting the fake Obico server")
}

/// The same server over TLS, with a fresh self-signed certificate for `localhost`
/// (`cert_pem`).
pub async fn start_tls(settings: Settings) -> Arc<FakeObico> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let transport = Transport {
        serve: Arc::new(move |tcp, app| {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = axum::serve(TlsListener { tcp, acceptor }, app).await;
            })
        }),
        url: |addr| format!("https://localhost:{}", addr.port()),
        cert_pem: Some(ck.cert.pem()),
    };
    StandIn::start_over(settings, transport).await.expect("starting the fake Obico server over TLS")
}

/// TLS over a TCP listener, for `axum::serve`.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that refuses our certificate fails here: wait for the next one.
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Checks a record of calls against the expected prints: per printer, `start job` then
/// `finish job` for each job in order. Returns (lost, duplicated, order violations).
pub fn audit(calls: &[Call], printer: i64, jobs: &[String]) -> (usize, usize, usize) {
    let events: Vec<&Call> = calls
        .iter()
        .filter(|c| c.printer == printer && (c.kind == "start" || c.kind == "finish" || c.kind == "finish_not_printing"))
        .collect();
    let mut expected = Vec::new();
    for j in jobs {
        expected.push(format!("{}/start/{j}", "default"));
        expected.push(format!("{}/finish/{j}", "default"));
    }
    let keys: Vec<String> = events.iter().filter_map(|c| c.key.clone()).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for k in &keys {
        *seen.entry(k.as_str()).or_default() += 1;
    }
    let lost = expected.iter().filter(|k| !seen.contains_key(k.as_str())).count();
    let duplicated: usize = seen.values().map(|n| n - 1).sum();
    // Order: the first delivery of each event must follow the expected sequence.
    let mut first: Vec<&str> = Vec::new();
    for k in &keys {
        if !first.contains(&k.as_str()) {
            first.push(k);
        }
    }
    let pos: HashMap<&str, usize> = expected.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let mut violations = 0;
    let mut last = None;
    for k in &first {
        match pos.get(k) {
            Some(&p) => {
                if last.is_some_and(|l| p < l) {
                    violations += 1;
                }
                last = Some(p);
            }
            None => violations += 1,
        }
    }
    // A finish the server saw first with no open print means its start was lost or
    // reordered (a repeated finish is counted as a duplicate above).
    let mut delivered: Vec<&str> = Vec::new();
    for c in &events {
        let k = c.key.as_deref().unwrap_or("");
        if c.kind == "finish_not_printing" && !delivered.contains(&k) {
            violations += 1;
        }
        delivered.push(k);
    }
    (lost, duplicated, violations)
}

/// The id of the one printer named `sim` the daemon registered.
pub fn printer_id(fake: &FakeObico) -> i64 {
    let p: Vec<_> = fake.printers().into_iter().filter(|p| p.name == "sim").collect();
    assert_eq!(p.len(), 1, "one printer registered: {p:#?}");
    p[0].id
}

/// Waits until the calls the server got satisfy `ok` (`what` names that in the panic
/// after `limit`); returns them.
pub async fn wait_calls(fake: &FakeObico, what: &str, limit: Duration, ok: impl Fn(&[Call]) -> bool) -> Vec<Call> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let calls = fake.calls();
        if ok(&calls) {
            return calls;
        }
        assert!(std::time::Instant::now() < deadline, "the server never got {what} within {limit:?}: {calls:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to `limit` for a finish of a print (`finish` or `finish_not_printing`).
pub async fn wait_finish(fake: &FakeObico, limit: Duration) -> Vec<Call> {
    wait_calls(fake, "the finish", limit, |c| c.iter().any(|c| c.kind.starts_with("finish"))).await
}

/// The server saw, for printer `sim`: exactly one start of `file` (key `job`), predicts
/// only in between (at least one if `want_predicts`), one finish `status`; nothing lost,
/// duplicated or out of order. `log` (the daemon's, say) is shown when it fails.
pub fn assert_one_print(fake: &FakeObico, job: &str, file: &str, status: &str, want_predicts: bool, log: &str) {
    let calls = fake.calls();
    let id = printer_id(fake);
    let (lost, dup, order) = audit(&calls, id, &[job.to_string()]);
    assert_eq!((lost, dup, order), (0, 0, 0), "lost, duplicated, out of order ({job}): {calls:#?}\n{log}");
    let mine: Vec<&Call> = calls.iter().filter(|c| c.printer == id && c.kind != "create").collect();
    let starts: Vec<usize> = (0..mine.len()).filter(|&i| mine[i].kind == "start").collect();
    let finishes: Vec<usize> = (0..mine.len()).filter(|&i| mine[i].kind.starts_with("finish")).collect();
    assert_eq!(starts.len(), 1, "exactly one start_print: {mine:#?}\n{log}");
    assert_eq!(finishes.len(), 1, "exactly one finish_print: {mine:#?}\n{log}");
    assert_eq!(mine[starts[0]].arg, file);
    assert_eq!((mine[finishes[0]].kind.as_str(), mine[finishes[0]].arg.as_str()), ("finish", status));
    let predicts: Vec<usize> = (0..mine.len()).filter(|&i| mine[i].kind == "predict").collect();
    if want_predicts {
        assert!(!predicts.is_empty(), "frames were sent to predict: {mine:#?}\n{log}");
    }
    assert!(
        predicts.iter().all(|&i| i > starts[0] && i < finishes[0]),
        "every predict between the start and the finish: {mine:#?}\n{log}"
    );
}
