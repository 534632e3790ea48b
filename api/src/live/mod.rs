//! Live delivery: the fan-out hub and the WebSocket endpoint.

pub mod frames;
pub mod hub;
pub mod ws;

pub use hub::Hub;
