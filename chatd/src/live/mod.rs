//! Live delivery, in three concerns around one owner task, the [`hub`]:
//! - [`connections`]: the WebSocket and SSE endpoints' per-client tasks;
//! - [`audience`]: who receives what (room memberships and friend lists, kept from the log);
//! - [`presence`]: who is online and who is typing, with the grace that keeps reconnecting
//!   clients from flapping, shared with other nodes over [`peers`].
//!
//! [`frames`] are the wire format of both connections.

pub mod audience;
pub mod connections;
pub mod frames;
pub mod hub;
pub mod peers;
pub mod presence;

pub use hub::Hub;
