//! The token manager: gets, keeps, renews and drops the OAuth2 access token.
//!
//! Grants: `client_credentials` (default), `refresh_token` (when the server issued one),
//! `authorization_code` + PKCE (through [`crate::server::login`]). The grant exchanges are a
//! form POST each and are done here with the daemon's own `reqwest` 0.13 client. The
//! `oauth2` crate (5.0) was considered: its HTTP support pins reqwest 0.12 (a second HTTP
//! and TLS stack on a Raspberry Pi, or an adapter of our own), and its response type
//! (`expires_in: Option<u64>`) refuses an `expires_in` sent as a string and ignores an
//! absolute `expiry`, both seen in the wild and accepted by [`parse_token_response`].
//!
//! The token lives in a file readable by its owner only (mode 0600). A file with looser
//! permissions is repaired (chmod 0600, with a warning saying so) when we own it and
//! refused when another user owns it.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::secret::Secret;
use crate::server::config::{ClientAuth, ServerConfig};
use crate::server::http::{MAX_ANSWER_BYTES, ReadError, read_capped};

/// Renew this long before expiry at most (seconds)...
pub const REFRESH_AHEAD_MAX: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no way to authenticate to the server: set server.client_id and server.client_secret \
         (client credentials), or server.token (a user-bound token), or run `printvigil login`"
    )]
    NoCredentials,
    #[error(
        "the server refused the client credentials (invalid_client{detail}): check \
         server.client_id and server.client_secret; if both are right, set \
         server.client_auth = \"{other}\" (this server may want the other client authentication style)"
    )]
    InvalidClient { detail: String, other: &'static str },
    #[error("the server refused the {grant} grant (invalid_grant{detail}): {fix}")]
    InvalidGrant {
        grant: &'static str,
        detail: String,
        fix: &'static str,
    },
    #[error(
        "the server does not allow the {grant} grant for this client ({code}{detail}): allow it \
         for the application in the server's admin (OAuth application, authorization grant type), \
         or use a user-bound token instead: server.token, or `printvigil login`"
    )]
    GrantNotAllowed {
        grant: &'static str,
        code: String,
        detail: String,
    },
    #[error(
        "could not reach the token endpoint {url}: {msg}; check server.url, the network, and that \
         the server's TLS certificate is valid for that host"
    )]
    Network { url: String, msg: String },
    #[error(
        "the token endpoint {url} answered HTTP {status}{detail}; check server.url points at the \
         server's base URL (the token endpoint is <url>/o/token/) and try again later"
    )]
    Server {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("token file {path}: {msg}")]
    TokenFile { path: PathBuf, msg: String },
    #[error(
        "the linked user token has expired or was revoked and cannot be renewed: run \
         `printvigil login` again"
    )]
    LoginExpired,
    #[error(
        "logout is not complete: {notes}; the token stays valid on the server until it is \
         revoked, so the token file{} is kept: run `printvigil logout` again once the server \
         answers (or delete the file to forget the token without revoking it)",
        path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default()
    )]
    RevokeFailed {
        notes: String,
        path: Option<PathBuf>,
    },
}

impl AuthError {
    /// Worth retrying later without a config change.
    pub fn is_transient(&self) -> bool {
        matches!(self, AuthError::Network { .. } | AuthError::Server { .. })
    }
}

/// Where a token came from: it decides how it can be renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    ClientCredentials,
    /// Linked by `printvigil login` (authorization code + PKCE): bound to a user.
    User,
}

/// An access token and what is known about it. `Debug` never shows the token.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub access: Secret,
    pub refresh: Option<Secret>,
    /// Unix seconds; `None`: the server did not say (treated as not expiring).
    pub expires_at: Option<u64>,
    pub obtained_at: u64,
    pub source: TokenSource,
}

impl Token {
    /// Time at which to renew: 5 minutes before expiry, or a tenth of the lifetime when
    /// that is shorter. Saturating: a 100-year `expires_in` cannot overflow.
    pub fn renew_at(&self) -> Option<u64> {
        let exp = self.expires_at?;
        let lifetime = exp.saturating_sub(self.obtained_at);
        let ahead = REFRESH_AHEAD_MAX.min(lifetime / 10);
        Some(exp.saturating_sub(ahead))
    }

    pub fn needs_renewal(&self, now: u64) -> bool {
        self.renew_at().is_some_and(|t| now >= t)
    }

    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|e| now >= e)
    }
}

/// The on-disk form (the only place the secret is written out).
#[derive(Serialize, Deserialize)]
struct TokenFile {
    server: String,
    client_id: Option<String>,
    access_token: String,
    refresh_token: Option<String>,
    expires_at: Option<u64>,
    obtained_at: u64,
    source: TokenSource,
}

/// The token file: owner-only, written atomically.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
    server: String,
    client_id: Option<String>,
}

impl TokenStore {
    pub fn new(path: PathBuf, server: &str, client_id: Option<&str>) -> Self {
        Self {
            path,
            server: server.to_string(),
            client_id: client_id.map(str::to_string),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, msg: impl Into<String>) -> AuthError {
        AuthError::TokenFile {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    /// Reads the token; `None` when there is none, or it was made for another server or
    /// client. Loose permissions are repaired (when we own the file) or refused.
    pub fn load(&self) -> Result<Option<Token>, AuthError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(format!("cannot read it ({e}); check its permissions"))),
        };
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if meta.uid() != me {
                return Err(self.err(format!(
                    "it is readable by others (mode {mode:o}) and owned by uid {}, not by us \
                     (uid {me}): refusing to use it; delete it or `chown` it to this user and \
                     `chmod 600` it",
                    meta.uid()
                )));
            }
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| {
                    self.err(format!(
                        "mode {mode:o} is too open and chmod 600 failed: {e}"
                    ))
                },
            )?;
            tracing::warn!(
                path = %self.path.display(),
                "token file was readable by others (mode {mode:o}); repaired it to mode 600"
            );
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| self.err(format!("cannot read it ({e})")))?;
        let f: TokenFile = match serde_json::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "token file is unreadable ({e}); a new token will be fetched");
                return Ok(None);
            }
        };
        if f.server != self.server
            || (f.source == TokenSource::ClientCredentials && f.client_id != self.client_id)
        {
            tracing::info!(path = %self.path.display(), "token file is for another server or client; ignoring it");
            return Ok(None);
        }
        Ok(Some(Token {
            access: Secret::new(f.access_token),
            refresh: f.refresh_token.map(Secret::new),
            expires_at: f.expires_at,
            obtained_at: f.obtained_at,
            source: f.source,
        }))
    }

    /// Writes the token atomically with mode 0600.
    pub fn save(&self, t: &Token) -> Result<(), AuthError> {
        let f = TokenFile {
            server: self.server.clone(),
            client_id: self.client_id.clone(),
            access_token: t.access.expose().to_string(),
            refresh_token: t.refresh.as_ref().map(|s| s.expose().to_string()),
            expires_at: t.expires_at,
            obtained_at: t.obtained_at,
            source: t.source,
        };
        let text = serde_json::to_vec(&f).map_err(|e| self.err(e.to_string()))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| self.err(format!("cannot create {} ({e})", dir.display())))?;
        }
        let tmp = self.path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| {
                self.err(format!(
                    "cannot write {} ({e}); check state_dir",
                    tmp.display()
                ))
            })?;
        file.write_all(&text)
            .and_then(|_| file.sync_all())
            .map_err(|e| self.err(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.err(e.to_string()))?;
        Ok(())
    }

    /// Deletes the file; true if there was one.
    pub fn delete(&self) -> Result<bool, AuthError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.err(format!("cannot delete it ({e})"))),
        }
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Parses a token endpoint answer's JSON (RFC 6749 5.1, plus `expiry` as absolute time and
/// numbers sent as strings; a negative `expires_in` means expired now). Never panics.
pub fn parse_token_response(
    body: &serde_json::Value,
    now: u64,
    source: TokenSource,
) -> Option<Token> {
    let access = body.get("access_token")?.as_str()?.trim();
    if access.is_empty() {
        return None;
    }
    let num = |v: &serde_json::Value| -> Option<u64> {
        match v {
            serde_json::Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f.min(u64::MAX as f64) as u64)
            }),
            serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        }
    };
    // A negative lifetime ("already expired") must not read as "never expires".
    let negative = |v: &serde_json::Value| match v {
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| f < 0.0),
        serde_json::Value::String(s) => s.trim().parse::<f64>().is_ok_and(|f| f < 0.0),
        _ => false,
    };
    let expires_at = match body.get("expires_in") {
        Some(v) if negative(v) => Some(now),
        Some(v) if num(v).is_some() => num(v).map(|secs| now.saturating_add(secs)),
        _ => body.get("expiry").and_then(num),
    };
    let refresh = body
        .get("refresh_token")
        .and_then(|v| v.as_str())
        .filter(|s| !s.trim().is_empty())
        .map(Secret::new);
    Some(Token {
        access: Secret::new(access),
        refresh,
        expires_at,
        obtained_at: now,
        source,
    })
}

/// Gets and keeps the access token. Cheap to share behind an `Arc`.
pub struct TokenManager {
    http: reqwest::Client,
    token_url: url::Url,
    revoke_url: url::Url,
    client: Option<(String, Secret)>,
    client_auth: ClientAuth,
    scope: String,
    static_token: Option<Secret>,
    store: Option<TokenStore>,
    current: Mutex<Option<Token>>,
    loaded: std::sync::atomic::AtomicBool,
    /// Tokens obtained (renewals and first tokens), and attempts that failed (metrics).
    renewed: std::sync::atomic::AtomicU64,
    renew_failed: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client.as_ref().map(|c| &c.0))
            .field("client_auth", &self.client_auth)
            .field("static_token", &self.static_token)
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// `token_file`: where the token is kept (normally `state_dir/server-token.json`).
    pub fn new(
        cfg: &ServerConfig,
        http: reqwest::Client,
        token_file: Option<PathBuf>,
    ) -> Result<Self, crate::config::ConfigError> {
        let base = cfg.base_url()?;
        let join = |p: &str| {
            base.join(p)
                .map_err(|e| crate::config::invalid("server.url", &cfg.url, &e.to_string()))
        };
        let client = match (&cfg.client_id, &cfg.client_secret) {
            (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
            _ => None,
        };
        Ok(Self {
            http,
            token_url: join("o/token/")?,
            revoke_url: join("o/revoke_token/")?,
            store: token_file.map(|p| TokenStore::new(p, base.as_str(), cfg.client_id.as_deref())),
            client,
            client_auth: cfg.client_auth,
            scope: cfg.scope.clone(),
            static_token: cfg.token.clone(),
            current: Mutex::new(None),
            loaded: std::sync::atomic::AtomicBool::new(false),
            renewed: Default::default(),
            renew_failed: Default::default(),
        })
    }

    /// Tokens obtained from the server so far, and attempts that failed.
    pub fn renewals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.renewed.load(Relaxed), self.renew_failed.load(Relaxed))
    }

    pub fn is_static(&self) -> bool {
        self.static_token.is_some()
    }

    pub fn store(&self) -> Option<&TokenStore> {
        self.store.as_ref()
    }

    pub fn token_url(&self) -> &url::Url {
        &self.token_url
    }

    /// The source of the token in use (loading it from the file if needed).
    pub async fn current_source(&self) -> Option<TokenSource> {
        let mut cur = self.current.lock().await;
        self.load_once(&mut cur);
        cur.as_ref().map(|t| t.source)
    }

    fn load_once(&self, cur: &mut Option<Token>) {
        if !self.loaded.swap(true, std::sync::atomic::Ordering::SeqCst)
            && cur.is_none()
            && let Some(store) = &self.store
        {
            match store.load() {
                Ok(t) => *cur = t,
                Err(e) => tracing::error!("{e}"),
            }
        }
    }

    /// A token good to use now: the static one, the kept one while it is fresh, else a
    /// renewed one (refresh grant when possible, else client credentials).
    pub async fn access_token(&self) -> Result<Secret, AuthError> {
        if let Some(t) = &self.static_token {
            return Ok(t.clone());
        }
        let mut cur = self.current.lock().await;
        self.load_once(&mut cur);
        let now = now_secs();
        if let Some(t) = cur.as_ref()
            && !t.needs_renewal(now)
        {
            return Ok(t.access.clone());
        }
        let old = cur.clone();
        let result = self.renew(old.as_ref(), now).await;
        let counter = if result.is_ok() { &self.renewed } else { &self.renew_failed };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(t) => {
                if let Some(store) = &self.store
                    && let Err(e) = store.save(&t)
                {
                    tracing::error!("{e}");
                }
                let access = t.access.clone();
                *cur = Some(t);
                Ok(access)
            }
            Err(e) => {
                // Renewing ahead of expiry is best effort: a still-valid token is kept.
                if let Some(t) = old.filter(|t| !t.is_expired(now) && e.is_transient()) {
                    tracing::warn!(
                        "renewing the token ahead of expiry failed, using the current one: {e}"
                    );
                    return Ok(t.access);
                }
                Err(e)
            }
        }
    }

    async fn renew(&self, old: Option<&Token>, now: u64) -> Result<Token, AuthError> {
        if let Some(old) = old {
            if let Some(refresh) = &old.refresh {
                let form = vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("refresh_token", refresh.expose().to_string()),
                ];
                match self.grant("refresh_token", form, old.source, now).await {
                    Ok(mut t) => {
                        if t.refresh.is_none() {
                            t.refresh = old.refresh.clone();
                        }
                        tracing::info!("renewed the access token with the refresh token");
                        return Ok(t);
                    }
                    Err(AuthError::InvalidGrant { .. })
                        if old.source == TokenSource::ClientCredentials =>
                    {
                        tracing::info!(
                            "refresh token refused; fetching a new client-credentials token"
                        );
                    }
                    Err(AuthError::InvalidGrant { .. }) => return Err(AuthError::LoginExpired),
                    Err(e) => return Err(e),
                }
            } else if old.source == TokenSource::User {
                return Err(AuthError::LoginExpired);
            }
        }
        if self.client.is_none() {
            return Err(AuthError::NoCredentials);
        }
        let mut form = vec![("grant_type", "client_credentials".to_string())];
        if !self.scope.trim().is_empty() {
            form.push(("scope", self.scope.clone()));
        }
        let t = self
            .grant(
                "client_credentials",
                form,
                TokenSource::ClientCredentials,
                now,
            )
            .await?;
        tracing::info!("obtained a client-credentials access token");
        Ok(t)
    }

    /// Exchanges an authorization code (with its PKCE verifier) for a user-bound token and
    /// keeps it.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &Secret,
    ) -> Result<(), AuthError> {
        let form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", redirect_uri.to_string()),
            ("code_verifier", verifier.expose().to_string()),
        ];
        let t = self
            .grant("authorization_code", form, TokenSource::User, now_secs())
            .await?;
        if let Some(store) = &self.store {
            store.save(&t)?;
        }
        *self.current.lock().await = Some(t);
        self.loaded.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Drops the token that was refused (401/403) so the next call fetches a new one.
    /// Returns false when no new token can be had (a static token). The refresh token is
    /// kept: renewal tries it first.
    pub async fn invalidate(&self, refused: &Secret) -> bool {
        if self.static_token.is_some() {
            return false;
        }
        let mut cur = self.current.lock().await;
        if let Some(t) = cur.as_mut()
            && &t.access == refused
        {
            tracing::warn!("the server refused the access token; dropping it");
            t.expires_at = Some(0);
            t.obtained_at = 0;
            // Persist the drop: a restart must not reuse a refused token.
            if let Some(store) = &self.store
                && let Err(e) = store.save(t)
            {
                tracing::error!("{e}");
            }
        }
        true
    }

    /// Revokes the kept token at the server, then deletes it. Returns what was done; an
    /// error when the server did not confirm the revocation (the token file is then kept).
    pub async fn revoke_and_forget(&self) -> Result<String, AuthError> {
        let mut cur = self.current.lock().await;
        self.load_once(&mut cur);
        let Some(t) = cur.take() else {
            let deleted = match &self.store {
                Some(s) => s.delete()?,
                None => false,
            };
            return Ok(if deleted {
                "deleted an unreadable token file".into()
            } else {
                "no token was kept; nothing to do".into()
            });
        };
        let mut notes = Vec::new();
        let mut failed = Vec::new();
        for (tok, hint) in [
            (Some(&t.access), "access_token"),
            (t.refresh.as_ref(), "refresh_token"),
        ] {
            let Some(tok) = tok else { continue };
            let form = vec![
                ("token", tok.expose().to_string()),
                ("token_type_hint", hint.to_string()),
            ];
            match self.post_form(&self.revoke_url, form).await {
                Ok((status, _)) if (200..=299).contains(&status) => {
                    notes.push(format!("revoked the {hint}"))
                }
                Ok((status, body)) => {
                    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    let detail = oauth_error_detail(&body);
                    failed.push(format!(
                        "the server answered HTTP {status} to revoking the {hint}{}",
                        if detail.is_empty() { String::new() } else { format!(" ({detail})") }
                    ))
                }
                Err(e) => failed.push(format!("could not revoke the {hint}: {e}")),
            }
        }
        if !failed.is_empty() {
            // Kept, so that `logout` can be run again: deleting it would leave a live token
            // on the server that nothing here knows about any more.
            *cur = Some(t);
            notes.extend(failed);
            return Err(AuthError::RevokeFailed {
                notes: notes.join("; "),
                path: self.store.as_ref().map(|s| s.path().to_path_buf()),
            });
        }
        if let Some(s) = &self.store {
            s.delete()?;
            notes.push(format!("deleted {}", s.path().display()));
        }
        Ok(notes.join("; "))
    }

    async fn post_form(
        &self,
        url: &url::Url,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<(u16, Vec<u8>), AuthError> {
        let mut req = self
            .http
            .post(url.clone())
            .header("Accept", "application/json");
        if let Some((id, secret)) = &self.client {
            match self.client_auth {
                ClientAuth::Basic => {
                    // RFC 6749 2.3.1: form-urlencode both parts before base64.
                    let enc = |s: &str| {
                        url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                    };
                    let raw = format!("{}:{}", enc(id), enc(secret.expose()));
                    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
                    req = req.header("Authorization", format!("Basic {b64}"));
                }
                ClientAuth::Form => {
                    form.push(("client_id", id.clone()));
                    form.push(("client_secret", secret.expose().to_string()));
                }
            }
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let resp = req
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| AuthError::Network {
                url: url.to_string(),
                msg: describe_reqwest(&e),
            })?;
        let status = resp.status();
        match read_capped(resp, MAX_ANSWER_BYTES).await {
            Ok(bytes) => Ok((status.as_u16(), bytes)),
            Err(ReadError::Network(msg)) => Err(AuthError::Network {
                url: url.to_string(),
                msg,
            }),
            Err(e @ ReadError::TooLarge { .. }) => Err(AuthError::Server {
                url: url.to_string(),
                status: status.as_u16(),
                detail: format!(" with {e}, which no token endpoint sends"),
            }),
        }
    }

    async fn grant(
        &self,
        grant: &'static str,
        form: Vec<(&'static str, String)>,
        source: TokenSource,
        now: u64,
    ) -> Result<Token, AuthError> {
        if self.client.is_none() && grant == "client_credentials" {
            return Err(AuthError::NoCredentials);
        }
        let (status, body) = self.post_form(&self.token_url, form).await?;
        parse_token_answer(
            &TokenRequest {
                grant,
                source,
                token_url: self.token_url.as_str(),
                client_auth: self.client_auth,
            },
            status,
            &body,
            now,
        )
    }
}

/// What a token request was, for [`parse_token_answer`].
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    /// `client_credentials`, `refresh_token` or `authorization_code`.
    pub grant: &'static str,
    /// Where the token comes from (decides how it is renewed).
    pub source: TokenSource,
    /// The token endpoint, for messages.
    pub token_url: &'a str,
    /// The client authentication used (the message suggests the other one).
    pub client_auth: ClientAuth,
}

/// Judges a token endpoint's answer from its status and body bytes: the token, or the
/// error that says what to fix. A 2xx without an `access_token` (an HTML page, a portal)
/// is a [`AuthError::Server`] that points at `server.url`. Pure: no network, never panics.
pub fn parse_token_answer(
    req: &TokenRequest<'_>,
    status: u16,
    body: &[u8],
    now: u64,
) -> Result<Token, AuthError> {
    let body: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let grant = req.grant;
    if (200..=299).contains(&status) {
        return parse_token_response(&body, now, req.source).ok_or_else(|| AuthError::Server {
            url: req.token_url.to_string(),
            status,
            detail: " but no access_token in the answer".into(),
        });
    }
    let code = body
        .get("error")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let detail = oauth_error_detail(&body);
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    let other = match req.client_auth {
        ClientAuth::Basic => "form",
        ClientAuth::Form => "basic",
    };
    Err(match code.as_str() {
        "invalid_client" => AuthError::InvalidClient { detail, other },
        "invalid_grant" => AuthError::InvalidGrant {
            grant,
            detail,
            fix: match grant {
                "authorization_code" => {
                    "the code was used, expired, or the redirect URI differs: run `printvigil login` again"
                }
                "refresh_token" => "the refresh token expired or was revoked: a new token is needed",
                _ => "check server.client_id, server.client_secret and server.scope",
            },
        },
        "unsupported_grant_type" | "unauthorized_client" => AuthError::GrantNotAllowed {
            grant,
            code,
            detail,
        },
        _ if status >= 500 || status == 429 || code.is_empty() => AuthError::Server {
            url: req.token_url.to_string(),
            status,
            detail,
        },
        _ => AuthError::Server {
            url: req.token_url.to_string(),
            status,
            detail: format!(" ({code}){detail}"),
        },
    })
}

fn oauth_error_detail(body: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    for k in ["error_description", "detail", "error"] {
        if let Some(s) = body.get(k).and_then(|v| v.as_str()) {
            parts.push(s.chars().take(300).collect::<String>());
            break;
        }
    }
    parts.join(" ")
}

/// A reqwest error in words, without the URL's query (which could hold a code).
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error;
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut msg = kind.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hundred_years_does_not_overflow_and_renews_late() {
        let now = 1_700_000_000;
        let t = parse_token_response(
            &json!({"access_token": "a", "expires_in": 3153600000u64}),
            now,
            TokenSource::ClientCredentials,
        )
        .unwrap();
        assert_eq!(t.expires_at, Some(now + 3153600000));
        assert_eq!(t.renew_at(), Some(now + 3153600000 - 300));
        assert!(!t.needs_renewal(now));
        let huge = parse_token_response(
            &json!({"access_token": "a", "expires_in": u64::MAX}),
            now,
            TokenSource::ClientCredentials,
        )
        .unwrap();
        assert_eq!(huge.expires_at, Some(u64::MAX));
        assert!(!huge.needs_renewal(now));
        let f = parse_token_response(
            &json!({"access_token": "a", "expires_in": 1e300}),
            now,
            TokenSource::ClientCredentials,
        )
        .unwrap();
        assert!(!f.needs_renewal(now));
    }

    /// A negative lifetime is "already expired", not "never expires".
    #[test]
    fn negative_expires_in_is_expired_now() {
        let now = 1_700_000_000;
        for v in [json!(-1), json!(-3600.5), json!("-60"), json!(i64::MIN)] {
            let t = parse_token_response(
                &json!({"access_token": "a", "expires_in": v}),
                now,
                TokenSource::ClientCredentials,
            )
            .unwrap();
            assert_eq!(t.expires_at, Some(now), "{v}");
            assert!(t.needs_renewal(now) && t.is_expired(now), "{v}");
        }
    }

    #[test]
    fn short_lifetimes_renew_a_tenth_ahead() {
        let now = 1000;
        let t = parse_token_response(
            &json!({"access_token": "a", "expires_in": "600"}),
            now,
            TokenSource::User,
        )
        .unwrap();
        assert_eq!(t.renew_at(), Some(1540)); // 10 min: a tenth (60 s) ahead
        let d = parse_token_response(
            &json!({"access_token": "a", "expires_in": 86400}),
            now,
            TokenSource::User,
        )
        .unwrap();
        assert_eq!(d.renew_at(), Some(1000 + 86400 - 300)); // 24 h: 5 min ahead
        let abs = parse_token_response(
            &json!({"access_token": "a", "expiry": 5000}),
            now,
            TokenSource::User,
        )
        .unwrap();
        assert_eq!(abs.expires_at, Some(5000));
        assert!(
            parse_token_response(&json!({"access_token": ""}), now, TokenSource::User).is_none()
        );
        assert!(parse_token_response(&json!([1, 2]), now, TokenSource::User).is_none());
    }

    #[test]
    fn loose_token_file_of_another_user_is_refused() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to give the file to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok.json");
        let store = TokenStore::new(path.clone(), "https://x/", Some("cid"));
        let t = Token {
            access: Secret::new("acc"),
            refresh: None,
            expires_at: None,
            obtained_at: 1,
            source: TokenSource::ClientCredentials,
        };
        store.save(&t).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        assert_eq!(store.load().unwrap(), Some(t), "owner-only file of another user: usable");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("refusing") && e.contains("chmod 600"), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644, "left as found");
    }

    #[test]
    fn token_file_is_owner_only_and_loose_modes_are_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok.json");
        let store = TokenStore::new(path.clone(), "https://x/", Some("cid"));
        let t = Token {
            access: Secret::new("acc-123"),
            refresh: Some(Secret::new("ref-456")),
            expires_at: Some(99),
            obtained_at: 1,
            source: TokenSource::ClientCredentials,
        };
        store.save(&t).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(store.load().unwrap(), Some(t.clone()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(store.load().unwrap(), Some(t.clone()));
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o777,
            0o600,
            "repaired"
        );
        // Another server's token is not used.
        let other = TokenStore::new(path.clone(), "https://y/", Some("cid"));
        assert_eq!(other.load().unwrap(), None);
        assert!(!format!("{t:?}").contains("acc-123"));
        assert!(store.delete().unwrap());
        assert_eq!(store.load().unwrap(), None);
    }
}
