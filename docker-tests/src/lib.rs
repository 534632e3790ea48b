//! Nothing to ship: this crate holds `tests/docker.rs`, which validates the files under
//! `docker/` (see there), so the server crate's tests are about the server.
