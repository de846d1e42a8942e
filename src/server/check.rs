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

/// A line that could not be checked because an earlier one failed.
fn not_checked(what: &str, because: &str) -> Line {
    Line::fail(what, format!("not checked: {because}"), "fix the FAIL above first")
}

/// Runs the server checks for a loaded (hence valid) configuration. Every line is
/// reported, whatever fails before it: a line that depends on a failed one says so.
pub async fn run(config: &Config) -> Vec<Line> {
    let mut out = Vec::new();
    let Some(scfg) = &config.server else {
        out.push(Line::ok(
            "server mirror",
            "not configured (no [server] section); prints are watched locally only",
        ));
        return out;
    };
    out.extend(links(config, scfg).await);
    out.push(outbox_line(&config.state_dir));
    out
}

/// The lines that need the network: reachable, token, printer API, registration.
async fn links(config: &Config, scfg: &server::ServerConfig) -> Vec<Line> {
    const LINKS: [&str; 4] = [
        "server reachable",
        "token obtainable",
        "printer API usable",
        "printer registered",
    ];
    let mut out = Vec::new();
    let rest = |out: &mut Vec<Line>, from: usize, because: &str| {
        for what in &LINKS[from..] {
            out.push(not_checked(what, because));
        }
    };
    let api = match server::client_for(scfg, &config.state_dir) {
        Ok(a) => a,
        Err(e) => {
            out.push(Line::fail(
                "server settings",
                e.to_string(),
                "fix the [server] key named above",
            ));
            rest(&mut out, 0, "the server settings are not usable");
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
            rest(&mut out, 0, "no HTTP client");
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
            rest(&mut out, 1, "the server is not reachable");
            token_file_line(&api, &mut out);
            return out;
        }
    }
    let token_ok = match api.tokens().access_token().await {
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
            true
        }
        Err(e) => {
            out.push(Line::fail("token obtainable", e.to_string(), "see above"));
            false
        }
    };
    token_file_line(&api, &mut out);
    if !token_ok {
        rest(&mut out, 2, "no token");
        return out;
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
            rest(&mut out, 3, "the printer API refuses this token");
            return out;
        }
        Err(e) => {
            out.push(Line::fail("printer API usable", e.to_string(), "see above"));
            rest(&mut out, 3, "the printer API is not usable");
            return out;
        }
    }
    let registered = match scfg.printer_id {
        Some(id) => Some(id),
        None => server::outbox::Outbox::open_read_only_registration(
            &server::outbox_file(&config.state_dir),
            DEFAULT_PRINTER,
        ),
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
    out
}

fn token_file_line(api: &server::api::ApiClient, out: &mut Vec<Line>) {
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
}

/// Free bytes for an unprivileged writer on the file system of `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is valid for writing one statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast, reason = "the field types are 32-bit on 32-bit ARM")]
    let (avail, frsize) = (st.f_bavail as u64, st.f_frsize as u64);
    Some(avail.saturating_mul(frsize))
}

/// Below this, the outbox cannot be relied on to take new events.
const LOW_SPACE: u64 = 1 << 20;

/// The outbox, read without changing it: events waiting and why they wait, a corrupt
/// file, a full disk.
fn outbox_line(state_dir: &std::path::Path) -> Line {
    let path = server::outbox_file(state_dir);
    let summary = match server::outbox::Outbox::inspect(&path) {
        Ok(s) => s,
        Err(e) => {
            return Line::fail(
                "outbox",
                format!("{e}; the daemon watches prints without the server mirror while it is so"),
                format!(
                    "the file is kept for you: move it aside (mv {0} {0}.broken) and printvigil starts a new, empty one (print events still in it are not sent)",
                    path.display()
                ),
            );
        }
    };
    let full = free_bytes(state_dir).filter(|&b| b < LOW_SPACE);
    let Some(s) = summary else {
        return match full {
            Some(b) => Line::fail(
                "outbox",
                format!("no outbox yet, and the disk holding {} has {} KiB free: print events could not be queued", state_dir.display(), b / 1024),
                "free some space there (the daemon keeps events in memory until there is room)",
            ),
            None => Line::ok("outbox", "nothing waiting to be sent (no outbox yet)"),
        };
    };
    let age = s
        .oldest_ms
        .map(|t| {
            let secs = ((server::outbox::now_ms() - t).max(0) / 1000) as u64;
            format!(", the oldest queued {} ago", humantime::format_duration(std::time::Duration::from_secs(secs)))
        })
        .unwrap_or_default();
    if let Some(b) = full {
        return Line::fail(
            "outbox",
            format!(
                "stuck: the disk holding {} has {} KiB free, so new print events cannot be written ({} event(s) waiting{age})",
                state_dir.display(),
                b / 1024,
                s.pending
            ),
            "free some space there; the daemon keeps the events it could not write in memory and writes them as soon as there is room",
        );
    }
    match (s.pending, s.last_error) {
        (0, _) => Line::ok("outbox", "nothing waiting to be sent"),
        (n, Some(err)) => Line::fail(
            "outbox",
            format!(
                "{n} event(s) waiting{age}, not sent{}: {err}",
                if s.attempts > 0 { format!(" after {} attempt(s)", s.attempts) } else { String::new() }
            ),
            "fix what the error names; the daemon sends them, in order, as soon as the server takes them",
        ),
        (n, _) => Line::ok(
            "outbox",
            format!("{n} event(s) waiting{age}; they are sent in order when the daemon runs"),
        ),
    }
}
