//! Socket.IO codec: to be written (see systems/mod.rs for the interface).

use tokio_tungstenite::tungstenite::Message;

use super::{Event, Sub, User, Wire, WireOptions};

/// Per-connection state of the Socket.IO codec.
#[derive(Debug)]
pub struct SocketIoWire;

impl SocketIoWire {
    /// A codec for one connection.
    pub fn new(_opts: &WireOptions) -> Self {
        Self
    }
}

impl Wire for SocketIoWire {
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
        out.push(Event::Error("Socket.IO is not implemented yet".into()));
    }
}
