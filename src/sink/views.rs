//! Following the printers' views from a sink: which changed since the sink last looked.
//!
//! A sink follows many printers; one small task per printer waits on that printer's
//! view (registering on the [`Board`] as its watch starts) and marks it in a shared
//! [`Changed`] set, which the sink drains when woken. Only the newest view matters, so
//! a burst of changes costs the sink one look.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::watch::view::Board;

/// Printers whose view changed since the sink last looked.
#[derive(Default)]
pub struct Changed {
    names: Mutex<BTreeSet<String>>,
    notify: Notify,
}

impl Changed {
    pub fn mark(&self, name: &str) {
        self.names.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string());
        self.notify.notify_one();
    }

    /// The printers marked since the last call.
    pub fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.names.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until a printer is marked (at once if one was marked meanwhile).
    pub async fn wait(&self) {
        self.notify.notified().await
    }
}

/// Starts following `printers`' views until `stop` turns true.
pub fn follow(board: &Arc<Board>, printers: &[String], stop: &watch::Receiver<bool>) -> Arc<Changed> {
    let changed = Arc::new(Changed::default());
    for name in printers {
        tokio::spawn(follow_one(board.clone(), name.clone(), changed.clone(), stop.clone()));
    }
    changed
}

async fn follow_one(board: Arc<Board>, name: String, changed: Arc<Changed>, mut stop: watch::Receiver<bool>) {
    let mut rx = loop {
        if let Some(rx) = board.view(&name) {
            break rx;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => return,
        }
    };
    changed.mark(&name);
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        changed.mark(&name);
    }
}
