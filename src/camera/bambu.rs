//! The built-in camera of Bambu Lab A1 and P1 printers: JPEG frames over TLS on port 6000.
//!
//! The protocol (as the printers speak it; no RTSP, no HTTP):
//!
//! 1. TLS, with the printer's self-signed certificate pinned as for MQTT
//!    ([`crate::tlspin`]);
//! 2. the client sends one 80-byte packet ([`auth_packet`]): a 16-byte header (`0x40`,
//!    `0x3000`, `0`, `0`, little-endian u32s) then the user `bblp` and the access code,
//!    each NUL-padded to 32 bytes;
//! 3. the printer sends frames, about one a second: a 16-byte header whose first
//!    little-endian u32 is the JPEG's length ([`frame_length`]), then the JPEG.
//!
//! A wrong access code gets no error message: the printer closes the connection, so a
//! connection that ends before its first frame says so. The length is checked against
//! `max_frame_bytes` before anything is allocated for the frame; a frame that is not a
//! JPEG ends the connection (there is no way to find the next header in a stream that is
//! not this protocol). Every frame then passes the frame guard, as every camera's does.
//!
//! X1, H2 and P2S printers do not serve this: they stream RTSPS on port 322 (and a P2S
//! speaks another protocol on 6000). printvigil does not read RTSPS; the errors say so
//! and point at a local bridge's snapshot URL (`kind = "snapshot"`).
//!
//! Like the MJPEG camera, the stream is read by a background task (started by the first
//! grab) that keeps the newest frame and reconnects with a growing pause; a grab returns
//! the newest frame it has not returned before (the `stream` module, shared with it).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::{Reader, Slot};
use super::{Camera, CameraConfig, CameraError, Grab, is_jpeg, sniff};
use crate::secret::{Secret, SecretUrl};
use crate::tlspin::{self, Fingerprint, Trust};

/// The user every Bambu printer's camera expects.
const USER: &str = "bblp";
/// Bytes of a frame header.
pub const HEADER: usize = 16;

/// Where the camera is and how it is trusted, from a `bambu://` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub access_code: Secret,
    pub trust: Trust,
}

/// Reads `bambu://bblp:<access code>@<host>:<port>/?fingerprint=<hex>` (or
/// `?insecure_skip_verify=true`), the URL a `kind = "bambu"` printer entry makes for its
/// camera. The error says what is wrong.
pub fn parse_url(url: &SecretUrl) -> Result<Target, String> {
    if url.expose().is_empty() {
        return Err(
            "kind = \"bambu\" is the built-in camera of a Bambu Lab printer: use it inside a kind = \"bambu\" printer entry (camera = { kind = \"bambu\" }), which supplies the printer's address, access code and certificate".into(),
        );
    }
    let u = url::Url::parse(url.expose()).map_err(|e| format!("`url` is not a bambu:// URL ({e})"))?;
    if u.scheme() != "bambu" {
        return Err("`url` of a kind = \"bambu\" camera must be bambu://...; leave it out: the printer entry fills it in".into());
    }
    let host = u.host_str().filter(|h| !h.is_empty()).ok_or("the bambu:// URL has no host")?;
    let code = percent_encoding::percent_decode_str(u.password().unwrap_or("")).decode_utf8_lossy().to_string();
    if code.is_empty() || code.len() > 32 {
        return Err("the bambu:// URL carries no usable access code (1 to 32 characters)".into());
    }
    let mut trust = None;
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "fingerprint" => trust = Some(Trust::Pinned(Fingerprint::parse(&v).map_err(|e| format!("fingerprint {e}"))?)),
            "insecure_skip_verify" if v == "true" => trust = trust.or(Some(Trust::Any)),
            _ => {}
        }
    }
    Ok(Target {
        host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
        port: u.port().unwrap_or(6000),
        access_code: Secret::new(code),
        trust: trust.ok_or("the bambu:// URL has neither a fingerprint nor insecure_skip_verify=true")?,
    })
}

/// The 80-byte packet sent right after the handshake.
pub fn auth_packet(access_code: &str) -> [u8; 80] {
    let mut p = [0u8; 80];
    p[0..4].copy_from_slice(&0x40u32.to_le_bytes());
    p[4..8].copy_from_slice(&0x3000u32.to_le_bytes());
    let user = USER.as_bytes();
    p[16..16 + user.len()].copy_from_slice(user);
    let code = access_code.as_bytes();
    let n = code.len().min(32);
    p[48..48 + n].copy_from_slice(&code[..n]);
    p
}

/// What a frame header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A JPEG of this many bytes follows.
    Frame(usize),
    /// An empty frame (length 0).
    Empty,
    /// More bytes than the cap.
    TooLarge(u64),
}

/// Reads a frame header: the JPEG's length is its first little-endian u32 (the other
/// fields are not relied on).
pub fn frame_length(header: &[u8; HEADER], max: usize) -> Header {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
    match len {
        0 => Header::Empty,
        n if n > max as u64 => Header::TooLarge(n),
        n => Header::Frame(n as usize),
    }
}

const RTSP_HINT: &str = "X1, H2 and P2S printers serve their camera as RTSPS on port 322 instead, which printvigil does not read: run a local bridge that makes snapshots of it (for example go2rtc) and set camera = { kind = \"snapshot\", url = \"<the bridge's snapshot URL>\" }";

struct Link {
    url: SecretUrl,
    target: Target,
    timeout: Duration,
    max: usize,
    slot: Slot,
}

impl Link {
    /// Keeps the stream open, reconnecting, until the camera is dropped.
    async fn run(self) {
        let (tls, seen) = tlspin::client_config(self.target.trust);
        let connector = tokio_rustls::TlsConnector::from(tls);
        self.slot.keep_open(&self.url, self.timeout, || self.connection(&connector, &seen)).await
    }

    /// One connection; returns why it ended.
    async fn connection(&self, connector: &tokio_rustls::TlsConnector, seen: &tlspin::Seen) -> CameraError {
        let url = &self.url;
        let t = &self.target;
        let timeout = self.timeout;
        let timed_out = || CameraError::Timeout { url: url.clone(), secs: timeout.as_secs_f64() };
        let addr = (t.host.as_str(), t.port);
        let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Err(_) => return timed_out(),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return CameraError::NoBambuStream { url: url.clone(), reason: format!("connection refused. {RTSP_HINT}") };
            }
            Ok(Err(e)) => return CameraError::Connect { url: url.clone(), reason: e.to_string() },
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        seen.clear();
        let mut tls = match tokio::time::timeout(timeout, connector.connect(tlspin::server_name(&t.host), tcp)).await {
            Err(_) => return timed_out(),
            Ok(Err(e)) => {
                return match (t.trust, seen.fingerprint()) {
                    (Trust::Pinned(pin), Some(shown)) if pin != shown => {
                        CameraError::BambuCertificate { url: url.clone(), shown: shown.to_string() }
                    }
                    _ => CameraError::NoBambuStream { url: url.clone(), reason: format!("no TLS handshake ({e}). {RTSP_HINT}") },
                };
            }
            Ok(Ok(s)) => s,
        };
        let auth = auth_packet(t.access_code.expose());
        if let Err(e) = tls.write_all(&auth).await.and(tls.flush().await) {
            return CameraError::Connect { url: url.clone(), reason: format!("sending the access code failed: {e}") };
        }
        let mut header = [0u8; HEADER];
        loop {
            match tokio::time::timeout(timeout, tls.read_exact(&mut header)).await {
                Err(_) => return timed_out(),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof && !self.slot.got_frames() => {
                    return CameraError::BambuAccess { url: url.clone() };
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return CameraError::StreamEnded { url: url.clone() },
                Ok(Err(e)) => return CameraError::Connect { url: url.clone(), reason: e.to_string() },
                Ok(Ok(_)) => {}
            }
            let len = match frame_length(&header, self.max) {
                Header::Frame(n) => n,
                Header::Empty => {
                    return CameraError::BambuProtocol { url: url.clone(), what: "a frame header announcing 0 bytes".into() };
                }
                Header::TooLarge(n) => {
                    // Dropping it would mean reading it: the connection is given up instead.
                    tracing::debug!(url = %url, "frame header announces {n} bytes");
                    return CameraError::TooLarge { url: url.clone(), max: self.max };
                }
            };
            let mut jpeg = vec![0u8; len];
            match tokio::time::timeout(timeout, tls.read_exact(&mut jpeg)).await {
                Err(_) => return timed_out(),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return CameraError::StreamEnded { url: url.clone() },
                Ok(Err(e)) => return CameraError::Connect { url: url.clone(), reason: e.to_string() },
                Ok(Ok(_)) => {}
            }
            if !is_jpeg(&jpeg) {
                return CameraError::BambuProtocol { url: url.clone(), what: format!("a {len}-byte frame that is {}", sniff(&jpeg)) };
            }
            self.slot.frame(jpeg);
        }
    }
}

/// The camera; see the module documentation.
pub struct BambuCamera {
    name: String,
    url: SecretUrl,
    target: Target,
    timeout: Duration,
    max: usize,
    stream: Reader,
}

impl BambuCamera {
    pub fn new(cfg: &CameraConfig) -> Result<Self, CameraError> {
        let target = parse_url(&cfg.url).map_err(|e| CameraError::Config(format!("camera {}: {e}", cfg.display_name())))?;
        Ok(Self {
            name: cfg.display_name(),
            url: cfg.url.clone(),
            target,
            timeout: cfg.timeout(),
            max: cfg.max_frame_bytes,
            stream: Reader::new(cfg.url.clone(), cfg.timeout()),
        })
    }
}

impl Camera for BambuCamera {
    fn name(&self) -> &str {
        &self.name
    }

    /// The newest frame not returned before; waits up to the timeout for one. An error the
    /// stream met since the last grab is returned at once when no new frame came.
    fn grab(&mut self) -> Grab<'_> {
        Box::pin(async move {
            let link = |slot| Link { url: self.url.clone(), target: self.target.clone(), timeout: self.timeout, max: self.max, slot };
            self.stream.grab(|slot| link(slot).run()).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auth_packet_is_laid_out_as_the_printer_reads_it() {
        let p = auth_packet("12345678");
        assert_eq!(&p[0..8], &[0x40, 0, 0, 0, 0, 0x30, 0, 0]);
        assert_eq!(&p[8..16], &[0; 8]);
        assert_eq!(&p[16..20], b"bblp");
        assert!(p[20..48].iter().all(|&b| b == 0));
        assert_eq!(&p[48..56], b"12345678");
        assert!(p[56..].iter().all(|&b| b == 0));
    }

    #[test]
    fn frame_headers_are_bounded_before_anything_is_read() {
        let h = |len: u32| {
            let mut b = [0u8; HEADER];
            b[..4].copy_from_slice(&len.to_le_bytes());
            b[8] = 1;
            b
        };
        assert_eq!(frame_length(&h(70_000), 1 << 20), Header::Frame(70_000));
        assert_eq!(frame_length(&h(0), 1 << 20), Header::Empty);
        assert_eq!(frame_length(&h(u32::MAX), 1 << 20), Header::TooLarge(u32::MAX as u64));
        // The fourth byte counts (some clients read only three).
        assert_eq!(frame_length(&h(0x0100_0000), 1 << 20), Header::TooLarge(0x0100_0000));
    }

    #[test]
    fn urls_from_the_printer_entry_parse_and_others_say_what_is_wrong() {
        let fp = Fingerprint([0xAB; 32]);
        let u = crate::printer::bambu::camera_url("192.168.1.50", 6000, "a@b:c", Trust::Pinned(fp));
        let t = parse_url(&SecretUrl::new(u)).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.access_code.expose(), t.trust), ("192.168.1.50", 6000, "a@b:c", Trust::Pinned(fp)));
        let any = parse_url(&SecretUrl::new(crate::printer::bambu::camera_url("::1", 6001, "x", Trust::Any))).unwrap();
        assert_eq!((any.host.as_str(), any.port, any.trust), ("::1", 6001, Trust::Any));
        for (url, says) in [
            ("", "kind = \"bambu\" printer entry"),
            ("http://x/", "bambu://"),
            ("bambu://bblp@h:6000/?insecure_skip_verify=true", "access code"),
            ("bambu://bblp:c@h:6000/", "neither a fingerprint"),
            ("bambu://bblp:c@h:6000/?fingerprint=12", "fingerprint has 1 bytes"),
        ] {
            let e = parse_url(&SecretUrl::new(url)).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
