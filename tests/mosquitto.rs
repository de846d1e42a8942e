//! The real-mosquitto test peer (tests/support/mosquitto.rs) does what it says: anonymous
//! and password brokers, TLS with the certificates it makes, mutual TLS, a restart on the
//! same port, and no process left behind. MQTT is spoken by hand here (a CONNECT, the
//! CONNACK's return code), so the peer is checked without any MQTT client library.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use support::mosquitto::{Mosquitto, Options, TlsOptions};
use tokio_rustls::rustls;

/// An MQTT 3.1.1 CONNECT (clean session, keepalive 10 s, client id "t").
fn connect_packet(user: Option<(&str, &str)>) -> Vec<u8> {
    let mut vh = vec![0, 4, b'M', b'Q', b'T', b'T', 4];
    let mut flags = 0x02u8;
    let mut payload = vec![0, 1, b't'];
    if let Some((u, p)) = user {
        flags |= 0xC0;
        for s in [u, p] {
            payload.extend_from_slice(&(s.len() as u16).to_be_bytes());
            payload.extend_from_slice(s.as_bytes());
        }
    }
    vh.push(flags);
    vh.extend_from_slice(&[0, 10]);
    let mut pkt = vec![0x10, (vh.len() + payload.len()) as u8];
    pkt.extend(vh);
    pkt.extend(payload);
    pkt
}

/// The CONNACK return code for a CONNECT over `stream`.
fn connack(mut stream: impl Read + Write, user: Option<(&str, &str)>) -> u8 {
    stream.write_all(&connect_packet(user)).unwrap();
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).unwrap();
    assert_eq!(ack[0], 0x20, "not a CONNACK: {ack:?}");
    ack[3]
}

fn plain(m: &Mosquitto, user: Option<(&str, &str)>) -> u8 {
    let s = TcpStream::connect(m.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    connack(s, user)
}

/// A TLS client that trusts the broker's CA, optionally with the client certificate.
fn tls(m: &Mosquitto, name: &str, client_cert: bool) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let certs = m.certs.as_ref().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.ca_der.clone().into()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = if client_cert {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certs.client_key_der.clone().into());
        builder.with_client_auth_cert(vec![certs.client_der.clone().into()], key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name.to_string().try_into().unwrap()).unwrap();
    let sock = TcpStream::connect(m.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn anonymous_and_password_brokers_answer_restart_on_the_same_port_and_die_with_their_handle() {
    let mut anon = Mosquitto::start(Options::anonymous());
    assert_eq!(plain(&anon, None), 0);
    let mut pw = Mosquitto::start(Options::user("bblp", "12345678").with_user("other", "pw"));
    assert_ne!(anon.port, pw.port);
    assert_eq!(plain(&pw, Some(("bblp", "12345678"))), 0);
    assert_eq!(plain(&pw, Some(("other", "pw"))), 0);
    assert_eq!(plain(&pw, Some(("bblp", "wrong"))), 5, "{}", pw.log());
    assert_eq!(plain(&pw, None), 5);

    let (port, pid) = (pw.port, pw.pid().unwrap());
    pw.restart();
    assert_eq!(pw.port, port);
    assert!(!alive(pid), "the first broker process is gone");
    assert_eq!(plain(&pw, Some(("bblp", "12345678"))), 0);
    pw.kill();
    assert!(!pw.running() && TcpStream::connect(pw.addr()).is_err());
    pw.start_again();
    assert_eq!(plain(&pw, Some(("bblp", "12345678"))), 0);

    let pids = [anon.pid().unwrap(), pw.pid().unwrap()];
    anon.stop();
    assert!(!anon.running());
    drop(pw);
    drop(anon);
    assert!(pids.iter().all(|p| !alive(*p)), "a broker outlived its handle");
}

#[test]
fn tls_and_mutual_tls_brokers_use_the_certificates_they_made() {
    let opts = TlsOptions { server_cn: "01S00A123456789".into(), ..TlsOptions::default() };
    let m = Mosquitto::start(Options::user("bblp", "code1234").with_tls(opts));
    let certs = m.certs.as_ref().unwrap();
    assert!(certs.ca_pem.contains("BEGIN CERTIFICATE") && certs.server_key_pem.contains("PRIVATE KEY"));
    // The handshake carries the server certificate made here.
    let s = tls(&m, "localhost", false).unwrap();
    let shown = s.conn.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(shown, certs.server_der);
    assert_eq!(connack(s, Some(("bblp", "code1234"))), 0);
    assert_eq!(connack(tls(&m, "127.0.0.1", false).unwrap(), Some(("bblp", "nope"))), 5);
    // Plain MQTT on a TLS listener gets no CONNACK.
    let mut raw = TcpStream::connect(m.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    raw.write_all(&connect_packet(Some(("bblp", "code1234")))).unwrap();
    let mut b = [0u8; 4];
    assert!(raw.read_exact(&mut b).is_err() || b[0] != 0x20);

    let mutual = Mosquitto::start(
        Options::anonymous().with_tls(TlsOptions { require_client_cert: true, ..TlsOptions::default() }),
    );
    assert_eq!(connack(tls(&mutual, "localhost", true).unwrap(), None), 0, "{}", mutual.log());
    // Without a client certificate the handshake (or the first read) fails.
    let refused = tls(&mutual, "localhost", false).map(|s| {
        let mut s = s;
        s.write_all(&connect_packet(None)).and_then(|_| s.read_exact(&mut [0u8; 4]))
    });
    assert!(!matches!(refused, Ok(Ok(()))), "a client without a certificate got in");
}
