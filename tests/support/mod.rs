//! Shared test support: real peers and helpers. Included by test files with `mod support;`.
#![allow(dead_code)]

pub mod klipper;
pub mod proxy;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use printvigil::printer::{PrinterEvent, PrinterLink};

/// Every event a link reported, with the time it arrived.
#[derive(Clone)]
pub struct EventLog {
    events: Arc<Mutex<Vec<(Instant, std::time::SystemTime, PrinterEvent)>>>,
}

impl EventLog {
    pub fn record(link: &dyn PrinterLink) -> EventLog {
        let log = EventLog { events: Arc::new(Mutex::new(Vec::new())) };
        let mut rx = link.events();
        let events = log.events.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        events.lock().unwrap().push((Instant::now(), std::time::SystemTime::now(), ev))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("the event log lagged by {n} events")
                    }
                    Err(_) => break,
                }
            }
        });
        log
    }

    pub fn all(&self) -> Vec<PrinterEvent> {
        self.events.lock().unwrap().iter().map(|(_, _, e)| e.clone()).collect()
    }

    /// Waits for the `n`th (1-based) event matching `pred`; returns it and its arrival time.
    pub async fn wait_nth(
        &self,
        what: &str,
        n: usize,
        limit: Duration,
        pred: impl Fn(&PrinterEvent) -> bool,
    ) -> (PrinterEvent, std::time::SystemTime) {
        let deadline = Instant::now() + limit;
        loop {
            {
                let ev = self.events.lock().unwrap();
                if let Some((_, t, e)) = ev.iter().filter(|(_, _, e)| pred(e)).nth(n - 1) {
                    return (e.clone(), *t);
                }
            }
            if Instant::now() > deadline {
                panic!("timed out after {limit:?} waiting for {what}; events so far: {:#?}", self.all());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&PrinterEvent) -> bool,
    ) -> (PrinterEvent, std::time::SystemTime) {
        self.wait_nth(what, 1, limit, pred).await
    }

    pub fn count(&self, pred: impl Fn(&PrinterEvent) -> bool) -> usize {
        self.all().iter().filter(|e| pred(e)).count()
    }
}
