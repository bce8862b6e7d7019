//! Overlay messages on a session's reliable stream: each a frame of a
//! 4-byte big-endian length, then the message ([`convoke_overlay::wire`]).

use convoke_overlay::Message;
use convoke_overlay::wire::MAX_MESSAGE;

use crate::identity::PeerId;

/// Appends `msg` as one frame.
pub fn encode(msg: &Message<PeerId>, out: &mut Vec<u8>) {
    let body = msg.encode();
    out.extend((body.len() as u32).to_be_bytes());
    out.extend(body);
}

/// Why a stream stopped making sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame longer than any message may be.
    #[error("a frame of {0} bytes (at most {MAX_MESSAGE})")]
    TooLong(usize),
    /// A frame that is not a message.
    #[error("a malformed message: {0}")]
    Malformed(String),
}

/// Takes the whole frames from the front of `buf` (leaving a partial one
/// there). Messages before a bad frame are kept; the error says the stream
/// must be closed.
pub fn decode(buf: &mut Vec<u8>) -> (Vec<Message<PeerId>>, Option<FrameError>) {
    let mut msgs = Vec::new();
    let mut bad = None;
    let mut at = 0;
    while let Some(head) = buf.get(at..at + 4) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_MESSAGE {
            bad = Some(FrameError::TooLong(len));
            break;
        }
        let Some(body) = buf.get(at + 4..at + 4 + len) else { break };
        match Message::<PeerId>::decode(body) {
            Ok(m) => msgs.push(m),
            Err(e) => {
                bad = Some(FrameError::Malformed(e.to_string()));
                break;
            }
        }
        at += 4 + len;
    }
    buf.drain(..at);
    (msgs, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_read_back_whole() {
        let msgs = [Message::Ping { nonce: 7 }, Message::Disconnect { alive: true }, Message::Pong { nonce: 9 }];
        let mut wire = Vec::new();
        for m in &msgs {
            encode(m, &mut wire);
        }
        for cut in 0..wire.len() {
            let mut buf = wire[..cut].to_vec();
            let (mut got, bad) = decode(&mut buf);
            assert!(bad.is_none());
            buf.extend_from_slice(&wire[cut..]);
            let (rest, bad) = decode(&mut buf);
            assert!(bad.is_none() && buf.is_empty());
            got.extend(rest);
            assert_eq!(got, msgs);
        }
    }

    #[test]
    fn an_oversized_or_garbled_frame_is_an_error_after_the_good_ones() {
        let mut buf = Vec::new();
        encode(&Message::Ping { nonce: 1 }, &mut buf);
        buf.extend(u32::MAX.to_be_bytes());
        let (got, bad) = decode(&mut buf);
        assert_eq!(got, vec![Message::Ping { nonce: 1 }]);
        assert!(matches!(bad, Some(FrameError::TooLong(_))));
        let mut buf = vec![0, 0, 0, 2, 0xff, 0xff];
        assert!(matches!(decode(&mut buf).1, Some(FrameError::Malformed(_))));
    }
}
