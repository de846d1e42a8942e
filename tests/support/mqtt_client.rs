//! An MQTT client for the tests' side (rumqttc): subscribes, keeps every message with
//! the time it arrived, publishes commands. Connects with the broker's users and CA as
//! the test chooses.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

use super::mosquitto::Mosquitto;

/// One message as it arrived.
#[derive(Debug, Clone)]
pub struct Got {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Delivered as a retained message (replayed on subscribe).
    pub retain: bool,
    pub at: Instant,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.topic, self.text()))
    }
}

pub struct Client {
    pub client: AsyncClient,
    got: Arc<Mutex<Vec<Got>>>,
    connected: Arc<Mutex<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connects to `broker` as `user` (None: anonymous) and subscribes to `topics`.
    pub async fn connect(broker: &Mosquitto, user: Option<(&str, &str)>, topics: &[&str]) -> Client {
        let id = format!("test-{}", fastrand::u32(..));
        let mut opts = MqttOptions::new(id, "127.0.0.1", broker.port);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(16 << 20, 16 << 20);
        if let Some((u, p)) = user {
            opts.set_credentials(u, p);
        }
        if let Some(c) = &broker.certs {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(c.ca_der.clone().into()).unwrap();
            let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
            let cfg = if broker.options.tls.as_ref().unwrap().require_client_cert {
                let key = rustls::pki_types::PrivateKeyDer::Pkcs8(c.client_key_der.clone().into());
                b.with_client_auth_cert(vec![c.client_der.clone().into()], key).unwrap()
            } else {
                b.with_no_client_auth()
            };
            opts.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(cfg))));
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let got = Arc::new(Mutex::new(Vec::new()));
        let connected = Arc::new(Mutex::new(false));
        let subs: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let (g, c, cl) = (got.clone(), connected.clone(), client.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for t in &subs {
                            let _ = cl.subscribe(t.clone(), QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => *c.lock().unwrap() = true,
                    Ok(Event::Incoming(Packet::Publish(p))) => g.lock().unwrap().push(Got {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                        at: Instant::now(),
                    }),
                    Ok(_) => {}
                    Err(_) => {
                        *c.lock().unwrap() = false;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let me = Client { client, got, connected, task };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !*me.connected.lock().unwrap() {
            assert!(Instant::now() < deadline, "the test client could not connect and subscribe:\n{}", broker.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Retained messages follow the SUBACK: give them a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        me
    }

    pub fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Messages on `topic`, in order.
    pub fn on(&self, topic: &str) -> Vec<Got> {
        self.all().into_iter().filter(|g| g.topic == topic).collect()
    }

    /// The newest message on `topic`.
    pub fn last(&self, topic: &str) -> Option<Got> {
        self.on(topic).pop()
    }

    pub fn clear(&self) {
        self.got.lock().unwrap().clear();
    }

    /// Waits for a message matching `want`; returns it.
    pub async fn wait(&self, what: &str, limit: Duration, want: impl Fn(&Got) -> bool) -> Got {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(g) = self.all().into_iter().find(|g| want(g)) {
                return g;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self.all().iter().map(|g| format!("{} {}", g.topic, g.text().chars().take(120).collect::<String>())).collect();
                panic!("timed out after {limit:?} waiting for {what}; got:\n{}", seen.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for an event (`P/<printer>/event`) named `event`.
    pub async fn wait_event(&self, events_topic: &str, event: &str, limit: Duration) -> Got {
        self.wait(&format!("event {event} on {events_topic}"), limit, |g| {
            g.topic == events_topic && serde_json::from_slice::<serde_json::Value>(&g.payload).is_ok_and(|v| v["event"] == event)
        })
        .await
    }

    pub async fn publish(&self, topic: &str, payload: &str, retain: bool) {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec()).await.unwrap();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}
