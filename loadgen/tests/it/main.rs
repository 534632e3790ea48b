//! chat-loadgen's tests: the accounting as a pure component fed made-up streams (`ledger`), the
//! verdict on servers that cannot keep up (`overload`, over real sockets), the baseline
//! server, and runs against a real chatd in this process (`chatd`).
#![allow(clippy::unwrap_used)]

mod baseline;
mod chatd;
mod ledger;
mod overload;

use clap::Parser;
use loadgen::scenario::{Scenario, ScenarioArgs};

/// A scenario from command-line flags, as `chat-loadgen run` would parse them.
pub fn scenario(flags: &[&str]) -> Scenario {
    try_scenario(flags).unwrap()
}

/// The same, or why the flags make no scenario.
pub fn try_scenario(flags: &[&str]) -> anyhow::Result<Scenario> {
    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        s: ScenarioArgs,
    }
    let mut args = vec!["x"];
    args.extend_from_slice(flags);
    P::try_parse_from(args)?.s.resolve()
}
