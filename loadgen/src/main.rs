use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
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
    /// Run a scenario against chatd (or the baseline).
    Run(Box<RunArgs>),
    /// Serve the bare WebSocket broadcast baseline.
    BaselineServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// chatd's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Run against a freshly started baseline server instead of chatd.
    #[arg(long)]
    baseline: bool,
    /// After the chatd run, run the same scenario against the baseline and report the ratio.
    #[arg(long)]
    compare_baseline: bool,
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
    /// Write the latency plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
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
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let scenario = args.scenario.resolve()?;
    let mut reports = Vec::new();
    if !args.baseline {
        let port = args
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok());
        let opts = Options {
            target: Target::Chatd {
                url: args.url.trim_end_matches('/').to_owned(),
                prefix: args.prefix.clone(),
            },
            server_pid: args
                .server_pid
                .or_else(|| port.and_then(loadgen::sysmon::pid_of_port)),
            source_addrs: args.source_addrs,
            progress: !args.quiet,
        };
        reports.push(loadgen::run(&scenario, &opts).await?);
    }
    if args.baseline || args.compare_baseline {
        let (child, addr) = loadgen::spawn_baseline().await?;
        let opts = Options {
            target: Target::Baseline { addr },
            server_pid: child.id(),
            source_addrs: args.source_addrs,
            progress: !args.quiet,
        };
        reports.push(loadgen::run(&scenario, &opts).await?);
    }
    for r in &reports {
        print!("{}", r.table());
    }
    if let [chatd, baseline] = reports.as_slice() {
        println!(
            "chatd / baseline deliveries/s: {:.2}",
            chatd.deliveries_per_sec / baseline.deliveries_per_sec.max(1.0)
        );
    }
    if let Some(path) = &args.report {
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
