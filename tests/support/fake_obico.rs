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
