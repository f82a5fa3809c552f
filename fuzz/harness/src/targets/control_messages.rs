//! The migration protocol's control messages (`vmm::migration::control`): the framing
//! (`recv`: magic, length under `MAX_CONTROL`, JSON body) and every message type either
//! side decodes (the hello, the start, the target's events, the summary, keep-alives).
//!
//! The first input byte picks the message type; the rest is a framed message (read with
//! `recv`, as from the socket) or, for odd selectors, a bare body (`decode`).
//!
//! Invariants: no panic; a message that decodes re-encodes to a frame that decodes to an
//! equal message (what one side sends, the other reads back unchanged).

use serde::de::DeserializeOwned;
use serde::Serialize;
use vmm::migration::control::{self, Ack, FromSource, FromTarget, Hello, Outcome, Start, Summary};

use crate::Input;

fn check<T>(framed: bool, body: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let got: Result<T, _> = if framed {
        control::recv(&mut &body[..], "message")
    } else {
        control::decode(body, "message")
    };
    let Ok(msg) = got else { return };
    let frame = control::encode(&msg).expect("a decoded message encodes");
    let back: T = control::recv(&mut &frame[..], "message").expect("its own frame decodes");
    assert_eq!(back, msg, "a control message changed through its encoding");
    let _ = control::is_keepalive(&frame[12..]);
}

/// The fuzz target's body.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let sel = i.u8();
    let framed = sel & 1 == 0;
    let body = i.rest();
    match (sel >> 1) % 7 {
        0 => check::<Hello>(framed, body),
        1 => check::<Start>(framed, body),
        2 => check::<FromTarget>(framed, body),
        3 => check::<FromSource>(framed, body),
        4 => check::<Ack>(framed, body),
        5 => check::<Summary>(framed, body),
        _ => check::<Outcome>(framed, body),
    }
}
