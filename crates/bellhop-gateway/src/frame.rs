//! One server-to-client WebSocket frame as the bytes that go on the wire ([`WireFrame`]):
//! built once (header and payload) and shared by every queue that sends it. What the outbound
//! queues hold and the writer writes ([`crate::wire`]).

use bytes::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

/// One complete server-to-client WebSocket frame (header and payload), shared: cloning it
/// clones a reference, never the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireFrame(Bytes);

impl WireFrame {
    /// A final, unmasked frame of `opcode` carrying `payload` (copied once, here).
    pub fn new(opcode: OpCode, payload: &[u8]) -> Self {
        Self::from_parts(opcode, &[payload])
    }

    /// A final, unmasked frame of `opcode` whose payload is `parts` one after the other (each
    /// copied once, here).
    fn from_parts(opcode: OpCode, parts: &[&[u8]]) -> Self {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let length = size as u64;
        let mut buf = Vec::with_capacity(header.len(length) + size);
        header
            .format(length, &mut buf)
            .expect("formatting into a Vec cannot fail");
        for part in parts {
            buf.extend_from_slice(part);
        }
        WireFrame(buf.into())
    }

    /// A text frame.
    pub fn text(payload: &[u8]) -> Self {
        Self::new(OpCode::Data(Data::Text), payload)
    }

    /// A text frame whose payload is `parts` one after the other.
    pub fn text_parts(parts: &[&[u8]]) -> Self {
        Self::from_parts(OpCode::Data(Data::Text), parts)
    }

    /// A binary frame.
    pub fn binary(payload: &[u8]) -> Self {
        Self::new(OpCode::Data(Data::Binary), payload)
    }

    /// Its size on the wire.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: a frame has at least its two header bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<Message> for WireFrame {
    fn from(message: Message) -> Self {
        match message {
            Message::Text(text) => WireFrame::text(text.as_bytes()),
            Message::Binary(bytes) => WireFrame::binary(&bytes),
            Message::Ping(p) => WireFrame::new(OpCode::Control(Control::Ping), &p),
            Message::Pong(p) => WireFrame::new(OpCode::Control(Control::Pong), &p),
            Message::Close(c) => {
                let frame = Frame::close(c);
                WireFrame::new(frame.header().opcode, frame.payload())
            }
            Message::Frame(f) => WireFrame::new(f.header().opcode, f.payload()),
        }
    }
}

/// Decodes server frames back into messages (the tests' peers read what the writer wrote).
#[cfg(test)]
pub(crate) fn decode(mut bytes: &[u8]) -> Vec<Message> {
    use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame as Cf;
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut cursor = std::io::Cursor::new(bytes);
        let (header, length) = FrameHeader::parse(&mut cursor)
            .expect("a valid header")
            .expect("a whole header");
        let start = cursor.position() as usize;
        let payload = &bytes[start..start + length as usize];
        bytes = &bytes[start + length as usize..];
        assert!(header.is_final && header.mask.is_none());
        out.push(match header.opcode {
            OpCode::Data(Data::Text) => {
                Message::text(std::str::from_utf8(payload).expect("UTF-8").to_owned())
            }
            OpCode::Data(Data::Binary) => Message::binary(payload.to_vec()),
            OpCode::Control(Control::Ping) => Message::Ping(payload.to_vec().into()),
            OpCode::Control(Control::Pong) => Message::Pong(payload.to_vec().into()),
            OpCode::Control(Control::Close) => Message::Close((payload.len() >= 2).then(|| {
                Cf {
                    code: u16::from_be_bytes([payload[0], payload[1]]).into(),
                    reason: std::str::from_utf8(&payload[2..])
                        .unwrap()
                        .to_owned()
                        .into(),
                }
            })),
            other => panic!("unexpected opcode {other:?}"),
        });
    }
    out
}
