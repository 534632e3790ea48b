//! Live delivery: the fan-out hub, presence, the WebSocket endpoint and the SSE stream.

pub mod frames;
pub mod hub;
pub mod peers;
pub mod presence;
pub mod sse;
mod unread;
pub mod ws;

pub use hub::Hub;
