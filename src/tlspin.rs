//! TLS to devices that present a self-signed certificate (Bambu Lab printers: MQTT on 8883
//! and the camera on 6000), trusted by a **pin**: the SHA-256 fingerprint of the
//! certificate the device shows, written in the config once the user has confirmed it
//! (`printvigil setup bambu HOST`), or, only when the user says so, any certificate.
//!
//! The usual check (a chain to a trusted root, the host name in the certificate's
//! alternative names) cannot work here: the printer's certificate is issued by the
//! vendor's own CA, carries the serial number as its common name and no alternative name
//! at all, and webpki refuses old-style (X.509 v1) certificates outright. So
//! [`PinVerifier`] replaces the check:
//!
//! - the certificate the device sends first (the leaf) must hash to the pin (or anything
//!   goes with [`Trust::Any`]);
//! - the handshake signature must verify with that certificate's public key, so a
//!   device that merely replays the printer's certificate without its private key is
//!   refused: the pin means "this key", not "these bytes".
//!
//! The public key is taken from the certificate with `x509-parser`, which reads v1
//! certificates as well as v3, and the signature is checked with the crypto provider's
//! own algorithms. Every handshake records the certificate it saw ([`Seen`]), so a
//! refused pin can be reported with the fingerprint the device shows now.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Reads a fingerprint as `openssl x509 -fingerprint -sha256` prints it
    /// (`AB:CD:...`), or as 64 hex digits; case does not matter, and an optional
    /// `sha256:` / `SHA256 Fingerprint=` prefix is allowed.
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let t = text.trim();
        let t = t.rsplit_once('=').map_or(t, |(_, v)| v);
        let t = t.strip_prefix("sha256:").or_else(|| t.strip_prefix("SHA256:")).unwrap_or(t);
        let hexits: String = t.chars().filter(|c| !matches!(c, ':' | ' ' | '-')).collect();
        let bytes = hex::decode(&hexits).map_err(|_| {
            "is not a SHA-256 fingerprint: write the 32 bytes in hex, e.g. \"AB:CD:...\" (64 hex digits, colons optional)".to_string()
        })?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!("has {} bytes, a SHA-256 fingerprint has 32 (64 hex digits, colons optional)", b.len())
        })?;
        Ok(Fingerprint(arr))
    }
}

impl fmt::Display for Fingerprint {
    /// `AB:CD:...`, as openssl prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Which certificate a connection accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Only the certificate with this fingerprint.
    Pinned(Fingerprint),
    /// Any certificate (`insecure_skip_verify = true`): encryption without knowing who
    /// answers. The handshake signature is still checked against the certificate shown.
    Any,
}

/// The certificate the last handshake showed (DER), shared with the verifier.
#[derive(Debug, Clone, Default)]
pub struct Seen(Arc<Mutex<Option<Vec<u8>>>>);

impl Seen {
    /// The last certificate shown, if a handshake got that far.
    pub fn certificate(&self) -> Option<Vec<u8>> {
        self.0.lock().ok().and_then(|g| g.clone())
    }

    /// The fingerprint of the last certificate shown.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.certificate().map(|c| Fingerprint::of(&c))
    }

    fn record(&self, der: &[u8]) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(der.to_vec());
        }
    }

    /// Forgets the certificate (before a new handshake).
    pub fn clear(&self) {
        if let Ok(mut g) = self.0.lock() {
            *g = None;
        }
    }
}

/// The verifier; see the module documentation.
#[derive(Debug)]
pub struct PinVerifier {
    trust: Trust,
    seen: Seen,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    fn check_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
        tls13: bool,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let bad_cert = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
        let (alg_id, key) = spki_parts(cert.as_ref()).ok_or_else(bad_cert)?;
        if tls13 && !tls13_scheme(dss.scheme) {
            return Err(rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme));
        }
        let algs = self
            .algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algs)| *algs)
            .ok_or(rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme))?;
        let signature = dss.signature();
        // TLS 1.3 binds the scheme to one algorithm (the curve, for ECDSA): only the first.
        let algs = if tls13 { &algs[..algs.len().min(1)] } else { algs };
        for alg in algs.iter().filter(|a| a.public_key_alg_id().as_ref() == alg_id.as_slice()) {
            if alg.verify_signature(&key, message, signature).is_ok() {
                return Ok(HandshakeSignatureValid::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature))
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.seen.record(end_entity.as_ref());
        match self.trust {
            Trust::Any => Ok(ServerCertVerified::assertion()),
            Trust::Pinned(pin) if Fingerprint::of(end_entity.as_ref()) == pin => Ok(ServerCertVerified::assertion()),
            Trust::Pinned(_) => Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check_signature(message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The schemes TLS 1.3 allows (no PKCS#1 v1.5, no SHA-1).
fn tls13_scheme(scheme: SignatureScheme) -> bool {
    matches!(
        scheme,
        SignatureScheme::ECDSA_NISTP256_SHA256
            | SignatureScheme::ECDSA_NISTP384_SHA384
            | SignatureScheme::ECDSA_NISTP521_SHA512
            | SignatureScheme::RSA_PSS_SHA256
            | SignatureScheme::RSA_PSS_SHA384
            | SignatureScheme::RSA_PSS_SHA512
            | SignatureScheme::ED25519
            | SignatureScheme::ED448
    )
}

/// One DER element: (tag, contents, the rest after it).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The certificate's public key: its algorithm identifier (the contents of the
/// AlgorithmIdentifier SEQUENCE, as rustls compares them) and the key bits.
fn spki_parts(cert_der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).ok()?;
    let (tag, spki, _) = tlv(cert.public_key().raw)?;
    if tag != 0x30 {
        return None;
    }
    let (alg_tag, alg, rest) = tlv(spki)?;
    let (bits_tag, bits, _) = tlv(rest)?;
    if alg_tag != 0x30 || bits_tag != 0x03 || bits.first() != Some(&0) {
        return None;
    }
    Some((alg.to_vec(), bits[1..].to_vec()))
}

/// The certificate's subject common name (a Bambu printer's is its serial number).
pub fn subject_cn(cert_der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).ok()?;
    cert.subject().iter_common_name().next()?.as_str().ok().map(str::to_owned)
}

/// The crypto provider every pinned connection uses (aws-lc-rs, as the rest of printvigil),
/// named here so that no process-wide default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client config that trusts as `trust` says, and the slot its handshakes record the
/// device's certificate in. TLS 1.2 and 1.3 (the printers speak 1.2).
pub fn client_config(trust: Trust) -> (Arc<rustls::ClientConfig>, Seen) {
    let provider = provider();
    let seen = Seen::default();
    let verifier =
        PinVerifier { trust, seen: seen.clone(), algorithms: provider.signature_verification_algorithms };
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    (Arc::new(cfg), seen)
}

/// The name sent in the handshake for `host` (an IP address or a DNS name; the verifier
/// does not compare it with anything).
pub fn server_name(host: &str) -> ServerName<'static> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(h.to_string()).unwrap_or_else(|_| ServerName::try_from("printer").expect("a valid DNS name"))
}

/// What a device showed in one handshake ([`probe`]).
#[derive(Debug, Clone)]
pub struct Probe {
    pub certificate: Vec<u8>,
    pub fingerprint: Fingerprint,
    /// The certificate's subject common name (a Bambu printer's serial number).
    pub common_name: Option<String>,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{addr} did not complete a TLS handshake within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("{addr} does not speak TLS ({reason})")]
    Tls { addr: String, reason: String },
}

/// Connects once to `host:port`, completes a TLS handshake accepting any certificate, and
/// returns the certificate shown. Nothing is sent after the handshake.
pub async fn probe(host: &str, port: u16, timeout: Duration) -> Result<Probe, ProbeError> {
    let addr = format!("{host}:{port}");
    let secs = timeout.as_secs().max(1);
    let work = async {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| ProbeError::Connect { addr: addr.clone(), reason: e.to_string() })?;
        let (cfg, seen) = client_config(Trust::Any);
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(server_name(host), tcp).await;
        let certificate = seen.certificate();
        match (tls, certificate) {
            (Ok(_), Some(certificate)) => Ok(Probe {
                fingerprint: Fingerprint::of(&certificate),
                common_name: subject_cn(&certificate),
                certificate,
            }),
            (Err(e), _) => Err(ProbeError::Tls { addr: addr.clone(), reason: e.to_string() }),
            (Ok(_), None) => Err(ProbeError::Tls { addr: addr.clone(), reason: "no certificate was shown".into() }),
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| ProbeError::Timeout { addr: addr.clone(), secs })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_the_usual_spellings_and_print_as_openssl_does() {
        let fp = Fingerprint::of(b"abc");
        let shown = fp.to_string();
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert!(shown.starts_with("BA:78:16:BF"), "{shown}");
        for text in [
            shown.clone(),
            shown.to_lowercase(),
            shown.replace(':', ""),
            format!("sha256:{}", shown.replace(':', "")),
            format!("SHA256 Fingerprint={shown}"),
            format!("  {shown}\n"),
        ] {
            assert_eq!(Fingerprint::parse(&text).unwrap(), fp, "{text}");
        }
        assert!(Fingerprint::parse("AB:CD").unwrap_err().contains("has 2 bytes"));
        assert!(Fingerprint::parse("not hex at all").unwrap_err().contains("not a SHA-256"));
        assert!(Fingerprint::parse("").is_err());
    }

    #[test]
    fn the_public_key_and_common_name_come_out_of_a_certificate() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "01S00A123456789");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(subject_cn(cert.der()).as_deref(), Some("01S00A123456789"));
        let (alg, bits) = spki_parts(cert.der()).unwrap();
        // id-ecPublicKey with the P-256 curve, and an uncompressed point.
        assert_eq!(alg[0], 0x06);
        assert_eq!((bits.len(), bits[0]), (65, 0x04));
        assert!(spki_parts(b"\x30\x03\x02\x01\x00").is_none());
        assert!(subject_cn(&[0xFF; 40]).is_none());
    }

    #[test]
    fn der_lengths_that_run_past_the_input_are_refused() {
        assert!(tlv(&[0x30, 0x05, 1, 2]).is_none());
        assert!(tlv(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]).is_none());
        assert!(tlv(&[0x30, 0x80]).is_none());
        assert_eq!(tlv(&[0x30, 0x81, 0x01, 9, 8]).unwrap(), (0x30, &[9u8][..], &[8u8][..]));
    }
}
