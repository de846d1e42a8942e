//! `printvigil check`, the server part: one line per link, each failure with its fix.
//! Read-only: nothing is created on the server.

use std::fmt;
use std::os::unix::fs::PermissionsExt;

use crate::config::Config;
use crate::server::api::ApiError;
use crate::server::oauth::TokenSource;
use crate::server::{self, DEFAULT_PRINTER};

#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub ok: bool,
    pub what: String,
    pub detail: String,
    pub fix: Option<String>,
}

impl Line {
    pub fn ok(what: &str, detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            what: what.into(),
            detail: detail.into(),
            fix: None,
        }
    }
    pub fn fail(what: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            ok: false,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{tag}  {}", self.what)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

/// Runs the server checks for a loaded (hence valid) configuration.
pub async fn run(config: &Config) -> Vec<Line> {
    let mut out = Vec::new();
    let Some(scfg) = &config.server else {
        out.push(Line::ok(
            "server mirror",
            "not configured (no [server] section); prints are watched locally only",
        ));
        return out;
    };
    let api = match server::client_for(scfg, &config.state_dir) {
        Ok(a) => a,
        Err(e) => {
            out.push(Line::fail(
                "server settings",
                e.to_string(),
                "fix the [server] key named above",
            ));
            return out;
        }
    };
    // Reachable, TLS included: any HTTP answer will do.
    let http = match server::http_client(scfg) {
        Ok(h) => h,
        Err(e) => {
            out.push(Line::fail(
                "HTTP client",
                e.to_string(),
                "report this as a bug",
            ));
            return out;
        }
    };
    match http.get(api.tokens().token_url().clone()).send().await {
        Ok(r) => out.push(Line::ok(
            "server reachable",
            format!(
                "{} answered HTTP {}{}",
                scfg.url,
                r.status().as_u16(),
                if scfg.url.starts_with("https") {
                    ", TLS ok"
                } else {
                    ""
                }
            ),
        )),
        Err(e) => {
            let msg = server::oauth::describe_reqwest(&e);
            let fix = if msg.contains("certificate") || msg.contains("tls") || msg.contains("TLS") {
                "the server's TLS certificate is not valid for this host name or not trusted: fix the certificate, or server.url's host name"
            } else {
                "check server.url (scheme, host, port), that the server runs, and this host's network and DNS"
            };
            out.push(Line::fail("server reachable", msg, fix));
            return out;
        }
    }
    match api.tokens().access_token().await {
        Ok(_) => {
            let how = if api.tokens().is_static() {
                "configured server.token".to_string()
            } else {
                match api.tokens().current_source().await {
                    Some(TokenSource::User) => "linked user account (printvigil login)".into(),
                    _ => "client credentials".into(),
                }
            };
            out.push(Line::ok("token obtainable", how));
        }
        Err(e) => {
            out.push(Line::fail("token obtainable", e.to_string(), "see above"));
            return out;
        }
    }
    if let Some(store) = api.tokens().store()
        && let Ok(m) = std::fs::metadata(store.path())
    {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 == 0 {
            out.push(Line::ok(
                "token file private",
                format!("{} mode {mode:o}", store.path().display()),
            ));
        } else {
            out.push(Line::fail(
                "token file private",
                format!("{} mode {mode:o}", store.path().display()),
                format!("chmod 600 {}", store.path().display()),
            ));
        }
    }
    match api.list_printers().await {
        Ok(list) => out.push(Line::ok(
            "printer API usable",
            format!("{} printer(s) visible to this token", list.len()),
        )),
        Err(e @ ApiError::NoPermission) => {
            out.push(Line::fail(
                "printer API usable",
                "the server answered \"You do not have permission to perform this action.\"",
                e.to_string(),
            ));
            return out;
        }
        Err(e) => {
            out.push(Line::fail("printer API usable", e.to_string(), "see above"));
            return out;
        }
    }
    let registered = match scfg.printer_id {
        Some(id) => Some(id),
        None => server::outbox::Outbox::open(&server::outbox_file(&config.state_dir))
            .ok()
            .and_then(|o| o.registration(DEFAULT_PRINTER).ok().flatten())
            .and_then(|(_, id)| id),
    };
    match registered {
        Some(id) => match api.get_printer(id).await {
            Ok(p) => out.push(Line::ok("printer registered", format!("id {id} ({:?}){}", p.name, if p.printing { ", printing" } else { "" }))),
            Err(e) => out.push(Line::fail("printer registered", e.to_string(), "set server.printer_id to an id of yours, or remove it to register anew")),
        },
        None => out.push(Line::ok(
            "printer registered",
            "not yet: it is created (or found by name) when the first print is mirrored; set server.printer_id to use an existing one",
        )),
    }
    if let Ok(o) = server::outbox::Outbox::open(&server::outbox_file(&config.state_dir)) {
        match o.pending() {
            Ok(0) => out.push(Line::ok("outbox", "nothing waiting to be sent")),
            Ok(n) => out.push(Line::ok(
                "outbox",
                format!("{n} event(s) waiting; they are sent in order when the daemon runs"),
            )),
            Err(e) => out.push(Line::fail(
                "outbox",
                e.to_string(),
                "check that state_dir is writable",
            )),
        }
    }
    out
}
