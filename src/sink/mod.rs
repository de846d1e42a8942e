//! Sinks: where what the watches see goes besides the printer and the Obico mirror.
//!
//! A sink reads the watches' published views (the [`Board`]) and their events (the
//! [`WatchEvent`] broadcast) and tells the outside world: [`mqtt`] (state, events and
//! frames on a broker, Home Assistant discovery and commands) and [`notify`] (messages
//! people see: a webhook, ntfy, Telegram, Discord). Each runs in its own tasks with
//! bounded queues; a sink that fails logs once per change of state, and detection and
//! the pause never wait for one. The watch loop names no sink: [`Sinks::start`] is
//! called by whoever runs the watches (`printvigil run`, the demo).
//!
//! - [`views`]: following many printers' views from one task.
//! - [`check`]: the sinks' lines of `printvigil check`, and `printvigil notify test`.

pub mod check;
pub mod mqtt;
pub mod notify;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::config::Config;
use crate::server::Mirror;
use crate::watch::WatchEvent;
use crate::watch::view::Board;

/// The running sinks.
#[derive(Default)]
pub struct Sinks {
    pub mqtt: Option<mqtt::MqttSink>,
    pub notify: Option<notify::NotifySink>,
}

impl Sinks {
    /// Starts the sinks the config asks for. A sink whose settings cannot work (a CA file
    /// that cannot be read) is logged as an error and left off: the watches run anyway.
    pub fn start(
        config: &Config,
        board: &Arc<Board>,
        events: &broadcast::Sender<WatchEvent>,
        printers: &[String],
        mirror: Option<Arc<Mirror>>,
    ) -> Sinks {
        let host = crate::server::hostname();
        let mut sinks = Sinks::default();
        if let Some(cfg) = &config.mqtt {
            let inputs = mqtt::Inputs {
                board: board.clone(),
                events: events.subscribe(),
                printers: printers.to_vec(),
                mirror,
                host: host.clone(),
            };
            match mqtt::MqttSink::start(cfg, inputs) {
                Ok(s) => sinks.mqtt = Some(s),
                Err(e) => tracing::error!("MQTT is off: {e}. The printers are watched as usual; fix [mqtt] and restart printvigil"),
            }
        }
        if !config.notify.is_empty() {
            let inputs = notify::Inputs { board: board.clone(), events: events.subscribe(), printers: printers.to_vec(), host };
            match notify::NotifySink::start(&config.notify, inputs) {
                Ok(s) => sinks.notify = Some(s),
                Err(e) => tracing::error!("notifications are off: {e}"),
            }
        }
        sinks
    }

    /// Stops the sinks within `budget` (MQTT says goodbye; queued notifications get the
    /// rest of the time).
    pub async fn stop(self, budget: Duration) {
        let half = budget / 2;
        let mqtt = async {
            if let Some(m) = self.mqtt {
                m.stop(half).await;
            }
        };
        let notify = async {
            if let Some(n) = self.notify {
                n.stop(budget).await;
            }
        };
        tokio::join!(mqtt, notify);
    }
}
