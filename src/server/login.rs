//! `printvigil login`: links a user account by the authorization-code grant with PKCE
//! (RFC 7636) and a loopback redirect (RFC 8252). The `state` parameter is checked. On a
//! host without a browser, `--paste` mode prints the URL, and the user pastes back the
//! address the browser was sent to (it shows an error page, since the loopback address is
//! this host's, not the browser's: the address still carries the code and the state).

use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::secret::Secret;
use crate::server::config::ServerConfig;
use crate::server::oauth::{AuthError, TokenManager};

/// Port used in `--paste` mode when `server.login_port` is 0.
pub const PASTE_DEFAULT_PORT: u16 = 8734;
const CALLBACK_PATH: &str = "/callback";

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(
        "`printvigil login` needs server.client_id and server.client_secret (the OAuth application the server's admin created, with redirect URI http://127.0.0.1/callback)"
    )]
    NoClient,
    #[error(
        "the `state` in the answer does not match the one sent: the answer did not come from this login attempt; run `printvigil login` again"
    )]
    StateMismatch,
    #[error(
        "the server said {error}{desc}: the authorization was not granted; run `printvigil login` again and approve it"
    )]
    Denied { error: String, desc: String },
    #[error(
        "no authorization code in {0:?}: paste the whole address the browser was sent to (it starts with http://127.0.0.1)"
    )]
    NoCode(String),
    #[error(
        "cannot listen on 127.0.0.1:{port} for the redirect ({msg}); set server.login_port to a free port or use `printvigil login --paste`"
    )]
    Listen { port: u16, msg: String },
    #[error("no answer from the browser within {0} s; run `printvigil login` again")]
    Timeout(u64),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// A PKCE verifier (secret) and its S256 challenge.
pub struct Pkce {
    pub verifier: Secret,
    pub challenge: String,
}

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the OS random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn pkce() -> Pkce {
    let verifier = random_b64(32); // 43 characters, RFC 7636 4.1
    Pkce {
        challenge: s256(&verifier),
        verifier: Secret::new(verifier),
    }
}

pub fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

pub fn new_state() -> String {
    random_b64(16)
}

pub fn authorize_url(
    cfg: &ServerConfig,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
) -> Result<url::Url, LoginError> {
    let client_id = cfg.client_id.as_deref().ok_or(LoginError::NoClient)?;
    let mut u = cfg
        .base_url()?
        .join("o/authorize/")
        .map_err(|e| LoginError::Io(e.to_string()))?;
    u.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &cfg.scope)
        .append_pair("state", state)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(u)
}

/// Takes the code out of a redirect address (full URL, path or bare query), checking `state`.
pub fn parse_callback(input: &str, expected_state: &str) -> Result<String, LoginError> {
    let input = input.trim();
    let query = match input.find('?') {
        Some(i) => &input[i + 1..],
        None => input,
    };
    let query = query.split('#').next().unwrap_or("");
    let mut code = None;
    let mut state = None;
    let mut error = None;
    let mut desc = None;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "code" => code = Some(v.into_owned()),
            "state" => state = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            "error_description" => desc = Some(v.into_owned()),
            _ => {}
        }
    }
    if state.as_deref() != Some(expected_state) {
        if code.is_none() && error.is_none() {
            return Err(LoginError::NoCode(input.chars().take(80).collect()));
        }
        return Err(LoginError::StateMismatch);
    }
    if let Some(error) = error {
        return Err(LoginError::Denied {
            error,
            desc: desc.map(|d| format!(" ({d})")).unwrap_or_default(),
        });
    }
    code.filter(|c| !c.is_empty())
        .ok_or_else(|| LoginError::NoCode(input.chars().take(80).collect()))
}

/// How the code comes back.
pub enum Mode {
    /// Listen on 127.0.0.1 for the browser's redirect.
    Loopback { timeout: Duration },
    /// The user pastes the redirect address; the closure reads it (e.g. a line of stdin).
    Paste(Box<dyn FnOnce() -> std::io::Result<String> + Send>),
}

/// Runs the flow: `show_url` gets the address to open. Keeps the user-bound token.
pub async fn login(
    cfg: &ServerConfig,
    tokens: &TokenManager,
    mode: Mode,
    show_url: impl FnOnce(&str),
) -> Result<(), LoginError> {
    if cfg.client_id.is_none() {
        return Err(LoginError::NoClient);
    }
    let pk = pkce();
    let state = new_state();
    let code;
    let redirect_uri;
    match mode {
        Mode::Loopback { timeout } => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", cfg.login_port))
                .await
                .map_err(|e| LoginError::Listen {
                    port: cfg.login_port,
                    msg: e.to_string(),
                })?;
            let port = listener
                .local_addr()
                .map_err(|e| LoginError::Io(e.to_string()))?
                .port();
            redirect_uri = format!("http://127.0.0.1:{port}{CALLBACK_PATH}");
            show_url(authorize_url(cfg, &redirect_uri, &state, &pk.challenge)?.as_str());
            code = tokio::time::timeout(timeout, wait_for_redirect(listener, &state))
                .await
                .map_err(|_| LoginError::Timeout(timeout.as_secs()))??;
        }
        Mode::Paste(read) => {
            let port = if cfg.login_port == 0 {
                PASTE_DEFAULT_PORT
            } else {
                cfg.login_port
            };
            redirect_uri = format!("http://127.0.0.1:{port}{CALLBACK_PATH}");
            show_url(authorize_url(cfg, &redirect_uri, &state, &pk.challenge)?.as_str());
            let line = tokio::task::spawn_blocking(read)
                .await
                .map_err(|e| LoginError::Io(e.to_string()))?
                .map_err(|e| LoginError::Io(e.to_string()))?;
            code = parse_callback(&line, &state)?;
        }
    }
    tokens
        .exchange_code(&code, &redirect_uri, &pk.verifier)
        .await?;
    Ok(())
}

async fn wait_for_redirect(
    listener: tokio::net::TcpListener,
    state: &str,
) -> Result<String, LoginError> {
    loop {
        let (mut sock, _) = listener
            .accept()
            .await
            .map_err(|e| LoginError::Io(e.to_string()))?;
        let mut buf = vec![0u8; 8192];
        let mut n = 0;
        while n < buf.len() {
            match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf[n..])).await {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                Ok(Ok(k)) => {
                    n += k;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
        let head = String::from_utf8_lossy(&buf[..n]);
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("")
            .to_string();
        if !target.starts_with(CALLBACK_PATH) {
            let _ = sock
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            continue;
        }
        let result = parse_callback(&target, state);
        let (status, text) = match &result {
            Ok(_) => (
                "200 OK",
                "printvigil is linked to your account. You can close this page.".to_string(),
            ),
            Err(e) => ("400 Bad Request", format!("printvigil login failed: {e}")),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
        let _ = sock.write_all(resp.as_bytes()).await;
        let _ = sock.shutdown().await;
        match result {
            // A request with someone else's state is ignored: keep waiting for ours.
            Err(LoginError::StateMismatch) | Err(LoginError::NoCode(_)) => {
                tracing::warn!("ignored a redirect that did not match this login attempt");
                continue;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_is_rfc7636() {
        // RFC 7636 appendix B.
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let p = pkce();
        assert_eq!(p.verifier.expose().len(), 43);
        assert_eq!(p.challenge, s256(p.verifier.expose()));
        assert_ne!(new_state(), new_state());
    }

    #[test]
    fn callback_checks_state() {
        assert_eq!(
            parse_callback("http://127.0.0.1:1/callback?code=abc&state=s1", "s1").unwrap(),
            "abc"
        );
        assert_eq!(
            parse_callback("  /callback?state=s1&code=a%2Bb\n", "s1").unwrap(),
            "a+b"
        );
        assert!(matches!(
            parse_callback("http://127.0.0.1:1/callback?code=abc&state=s2", "s1"),
            Err(LoginError::StateMismatch)
        ));
        assert!(matches!(
            parse_callback("abc", "s1"),
            Err(LoginError::NoCode(_))
        ));
        assert!(matches!(
            parse_callback("/callback?error=access_denied&state=s1", "s1"),
            Err(LoginError::Denied { .. })
        ));
    }

    #[test]
    fn authorize_url_has_pkce_and_state() {
        let cfg = ServerConfig {
            url: "https://x.org".into(),
            client_id: Some("cid".into()),
            client_secret: Some(Secret::new("s")),
            ..Default::default()
        };
        let u = authorize_url(&cfg, "http://127.0.0.1:5/callback", "st", "ch").unwrap();
        let q: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
        assert_eq!(u.path(), "/o/authorize/");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["state"], "st");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:5/callback");
        assert!(!u.as_str().contains("s=") || !q.contains_key("client_secret"));
    }
}
