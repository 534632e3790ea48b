use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use clap::{Parser, Subcommand};
use loadgen::findmax::{Search, StepSummary};
use loadgen::scenario::ScenarioArgs;
use loadgen::{Options, Target};

/// chat-loadgen — load chatd like its users do, and measure it from the client side.
#[derive(Debug, Parser)]
#[command(name = "chat-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario once against chatd (or the baseline) at one offered rate.
    Run(Box<RunArgs>),
    /// Find the highest offered rate that holds the latency bound (binary search over short
    /// steps), for chatd and for the baseline in one invocation.
    FindMax(Box<FindMaxArgs>),
    /// Serve the bare WebSocket broadcast baseline.
    BaselineServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

/// Where chatd is, and how to reach it.
#[derive(Debug, clap::Args)]
struct Conn {
    /// chatd's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Username prefix of the provisioned users (reused across runs).
    #[arg(long, default_value = "lg")]
    prefix: String,
    /// The server process to sample (default: whoever listens on the URL's port).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Loopback source addresses (127.0.0.1–127.0.0.N) to spread client sockets over.
    #[arg(long, default_value_t = 16)]
    source_addrs: u8,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

impl Conn {
    fn chatd(&self) -> Options {
        let port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok());
        Options {
            target: Target::Chatd {
                url: self.url.trim_end_matches('/').to_owned(),
                prefix: self.prefix.clone(),
            },
            server_pid: self
                .server_pid
                .or_else(|| port.and_then(loadgen::sysmon::pid_of_port)),
            source_addrs: self.source_addrs,
            progress: !self.quiet,
        }
    }

    fn baseline(&self, child: &tokio::process::Child, addr: SocketAddr) -> Options {
        Options {
            target: Target::Baseline { addr },
            server_pid: child.id(),
            source_addrs: self.source_addrs,
            progress: !self.quiet,
        }
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    #[command(flatten)]
    conn: Conn,
    /// Run against a freshly started baseline server instead of chatd.
    #[arg(long)]
    baseline: bool,
    /// After the chatd run, run the same scenario at the same rate against the baseline. (Both
    /// at one offered rate: compare their latencies, not their rates; for the rate each can
    /// hold, use find-max.)
    #[arg(long)]
    compare_baseline: bool,
    /// Write the latency plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Which servers find-max searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Targets {
    Both,
    Chatd,
    Baseline,
}

#[derive(Debug, clap::Args)]
struct FindMaxArgs {
    /// Scenario flags; --rate is ignored, --duration defaults to 5 s, --warmup to 2 s and
    /// --drain to twice the larger bound plus 1 s.
    #[command(flatten)]
    scenario: ScenarioArgs,
    #[command(flatten)]
    conn: Conn,
    #[arg(long, value_enum, default_value = "both")]
    targets: Targets,
    /// The first offered rate (msg/s); doubled until a step saturates.
    #[arg(long, default_value_t = 1000.0)]
    start: f64,
    /// The highest rate offered.
    #[arg(long, default_value_t = 1_000_000.0)]
    max_rate: f64,
    /// Stop when the highest held and lowest saturated rates are within this fraction.
    #[arg(long, default_value_t = 0.1)]
    precision: f64,
    /// Steps per target, at most.
    #[arg(long, default_value_t = 14)]
    max_steps: usize,
    /// Longest wait (s) for the server to go idle between steps.
    #[arg(long, default_value_t = 30.0)]
    cooldown: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::BaselineServer { listen } => {
            loadgen::raise_fd_limit(1 << 20);
            let listener = loadgen::baseline::bind(listen).await?;
            println!("listening {}", listener.local_addr()?);
            loadgen::baseline::serve(listener).await
        }
        Command::Run(args) => run(*args).await,
        Command::FindMax(args) => find_max(*args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let scenario = args.scenario.resolve()?;
    let mut reports = Vec::new();
    if !args.baseline {
        reports.push(loadgen::run(&scenario, &args.conn.chatd()).await?);
    }
    if args.baseline || args.compare_baseline {
        let (child, addr) = loadgen::spawn_baseline().await?;
        reports.push(loadgen::run(&scenario, &args.conn.baseline(&child, addr)).await?);
    }
    for r in &reports {
        print!("{}", r.table());
    }
    if let Some(path) = &args.conn.report {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, reports[0].svg())?;
        for r in reports.iter().skip(1) {
            let p = path.with_file_name(format!(
                "{}-{}.svg",
                path.file_stem().and_then(|s| s.to_str()).unwrap_or("plot"),
                r.target
            ));
            std::fs::write(p, r.svg())?;
        }
    }
    Ok(())
}

async fn find_max(args: FindMaxArgs) -> anyhow::Result<()> {
    let mut flags = args.scenario.clone();
    flags.duration = flags.duration.or(Some(5.0));
    flags.warmup = flags.warmup.or(Some(2.0));
    let scenario = flags.resolve()?;
    let scenario = loadgen::scenario::Scenario {
        drain_secs: flags
            .drain
            .unwrap_or(2.0 * scenario.ack_p99_ms.max(scenario.delivery_p99_ms) / 1000.0 + 1.0),
        ..scenario
    };
    let search = Search {
        start: args.start,
        max: args.max_rate,
        min: 1.0,
        precision: args.precision,
        max_steps: args.max_steps,
        cooldown: Duration::from_secs_f64(args.cooldown),
    };
    let print = |target: &'static str| move |s: &StepSummary| println!("{target:>8} {}", s.line());
    let mut out = serde_json::Map::new();
    let mut results = Vec::new();
    if args.targets != Targets::Baseline {
        let r = loadgen::findmax::find_max(&scenario, &args.conn.chatd(), &search, print("chatd"))
            .await?;
        results.push(r);
    }
    if args.targets != Targets::Chatd {
        let (child, addr) = loadgen::spawn_baseline().await?;
        let opts = args.conn.baseline(&child, addr);
        let r = loadgen::findmax::find_max(&scenario, &opts, &search, print("baseline")).await?;
        results.push(r);
    }
    println!(
        "bounds: p99 send→ack ≤ {} ms, send→delivery ≤ {} ms",
        scenario.ack_p99_ms, scenario.delivery_p99_ms
    );
    for r in &results {
        println!(
            "{:>8}: max {:.0} msg/s held ({}) → sustained {:.0} acked/s, {:.0} deliveries/s",
            r.target,
            r.max_rate,
            r.saturated_at
                .map_or("no step saturated".to_owned(), |s| format!(
                    "{s:.0} saturated"
                )),
            r.sustained_acked_per_sec(),
            r.sustained_deliveries_per_sec()
        );
        out.insert(r.target.clone(), serde_json::to_value(r)?);
    }
    if let [chatd, baseline] = results.as_slice() {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let acked = ratio(
            chatd.sustained_acked_per_sec(),
            baseline.sustained_acked_per_sec(),
        );
        let deliveries = ratio(
            chatd.sustained_deliveries_per_sec(),
            baseline.sustained_deliveries_per_sec(),
        );
        println!(
            "chatd / baseline at their max: {acked:.2}× acked sends/s, {deliveries:.2}× deliveries/s"
        );
        out.insert(
            "ratio".into(),
            serde_json::json!({"sustained_acked": acked, "sustained_deliveries": deliveries}),
        );
    }
    if let Some(path) = &args.conn.report {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
