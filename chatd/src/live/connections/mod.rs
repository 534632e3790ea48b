//! The live connections: the WebSocket ([`ws`]) and the notification stream ([`sse`]), each
//! one task per client that registers with the hub, replays what the client missed and
//! forwards what the hub hands it; [`unread`] is their shared unread-count push.

pub mod sse;
mod unread;
pub mod ws;
