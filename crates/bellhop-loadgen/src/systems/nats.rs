//! NATS codec: to be written (see systems/mod.rs for the interface).

use tokio_tungstenite::tungstenite::Message;

use super::{Event, Sub, User, Wire, WireOptions};

/// Per-connection state of the NATS codec.
#[derive(Debug)]
pub struct NatsWire;

impl NatsWire {
    /// A codec for one connection.
    pub fn new(_opts: &WireOptions) -> Self {
        Self
    }
}

impl Wire for NatsWire {
    fn url(&self, base: &str, _user: &User) -> String {
        base.to_owned()
    }
    fn hello(&mut self, _user: &User) -> Vec<Message> {
        Vec::new()
    }
    fn subscribe(&mut self, _subs: &[Sub]) -> Vec<Message> {
        Vec::new()
    }
    fn publish(&mut self, _channel: &str, _payload: &str) -> Message {
        Message::text("")
    }
    fn decode(&mut self, _message: &Message, _chans: &[String], out: &mut Vec<Event>) {
        out.push(Event::Error("NATS is not implemented yet".into()));
    }
}

/// The nats-server configuration file of the benchmark (placeholder until written).
pub fn server_config(client_port: u16, ws_port: u16, cluster: Option<(u16, Vec<u16>)>) -> String {
    let mut s = format!(
        "host: 127.0.0.1\nport: {client_port}\nwebsocket {{\n  host: 127.0.0.1\n  port: {ws_port}\n  no_tls: true\n}}\n"
    );
    if let Some((own, routes)) = cluster {
        let routes: Vec<String> = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        s.push_str(&format!(
            "cluster {{\n  name: bench\n  host: 127.0.0.1\n  port: {own}\n  routes: [{}]\n}}\n",
            routes.join(", ")
        ));
    }
    s
}
