//! felt-bench: felt's datapath benchmarks on the namespace cluster, each
//! side by side with a reference in the same run. Run through
//! `scripts/bench-datapath.sh` (which builds the release binaries); each
//! part also runs alone: `felt-bench throughput|convergence|scale|startup`.
//! Benchmarks, never tests: nothing here asserts a time.

mod convergence;
mod error;
mod floor;
mod monitor;
mod ns;
mod objects;
mod peers;
mod proc;
mod refpath;
mod report;
mod scale;
mod startup;
mod stats;
mod throughput;

use clap::{Parser, Subcommand};
use error::{BenchError, Result};
use felt_cluster::Backend;
use report::{Machine, Section};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "felt-bench",
    about = "felt's datapath benchmarks: throughput, convergence, scale, start-up (run as root)"
)]
struct Args {
    #[command(subcommand)]
    part: Part,
    #[command(flatten)]
    knobs: Knobs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum Part {
    /// Every part, one after another (what scripts/bench-datapath.sh runs).
    All,
    /// Pod-to-pod TCP throughput, felt against the hand-built datapath.
    Throughput,
    /// Lease put → route on a peer, felt against the floor watcher (and flanneld).
    Convergence,
    /// N peers in a wave of transactions; the steady state at N.
    Scale,
    /// overlayd spawn → /readyz 200.
    Startup,
}

/// Every part's settings; unset ones take the default of the mode
/// (full, or `--quick`: a subset in about two minutes).
#[derive(Debug, Clone, clap::Args)]
struct Knobs {
    /// The short subset (about two minutes for `all`).
    #[arg(long, global = true)]
    quick: bool,
    /// Also write the markdown section for docs/performance.md here.
    #[arg(long, global = true)]
    markdown: Option<PathBuf>,
    /// The felt commit being measured, for the report.
    #[arg(
        long,
        global = true,
        env = "FELT_BENCH_COMMIT",
        default_value = "unknown"
    )]
    commit: String,
    /// throughput: backends (vxlan, host-gw).
    #[arg(long, global = true, value_delimiter = ',')]
    backends: Vec<String>,
    /// throughput: iperf3 parallel streams per run.
    #[arg(long, global = true, value_delimiter = ',')]
    streams: Vec<u32>,
    /// throughput: measured seconds per iperf3 run (default 5; quick 2).
    #[arg(long, global = true)]
    secs: Option<u32>,
    /// throughput: runs per side and setting (default 3; quick 1).
    #[arg(long, global = true)]
    reps: Option<usize>,
    /// convergence: joins per mode, at most 200 (default 200; quick 50).
    #[arg(long, global = true)]
    joins: Option<usize>,
    /// convergence: ms between joins in the spaced mode.
    #[arg(long, global = true, default_value_t = 300)]
    spacing_ms: u64,
    /// convergence: flanneld to run beside felt (optional).
    #[arg(long, global = true, env = "FLANNELD_BIN")]
    flanneld: Option<PathBuf>,
    /// scale: numbers of peers (default 500,5000,20000,65000; quick 500,5000).
    #[arg(long, global = true, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// scale: puts per etcd transaction.
    #[arg(long, global = true, default_value_t = 100)]
    batch: usize,
    /// scale: longest wait for a wave or a restart, in seconds.
    #[arg(long, global = true, default_value_t = 600)]
    scale_timeout: u64,
    /// scale: keep overlayd's log of each size in this directory.
    #[arg(long, global = true)]
    logs: Option<PathBuf>,
    /// start-up: runs per kind of node (default 10; quick 5).
    #[arg(long, global = true)]
    runs: Option<usize>,
}

impl Knobs {
    fn pick<T: Clone>(&self, set: Option<T>, full: T, quick: T) -> T {
        set.unwrap_or(if self.quick { quick } else { full })
    }

    fn throughput(&self) -> Result<throughput::Options> {
        let names = if self.backends.is_empty() {
            vec!["vxlan".to_string(), "host-gw".to_string()]
        } else {
            self.backends.clone()
        };
        let backends = names
            .iter()
            .map(|b| match Backend::parse(b) {
                Some(Backend::Udp) => Err(BenchError::Setup(refpath::UDP_HAS_ITS_OWN_BENCH.into())),
                Some(backend) => Ok(backend),
                None => Err(BenchError::Setup(format!("unknown backend {b}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let streams = if self.streams.is_empty() {
            vec![1, 4]
        } else {
            self.streams.clone()
        };
        Ok(throughput::Options {
            backends,
            streams,
            secs: self.pick(self.secs, 5, 2),
            reps: self.pick(self.reps, 3, 1),
        })
    }

    fn convergence(&self) -> convergence::Options {
        convergence::Options {
            joins: self.pick(self.joins, 200, 50),
            spacing: Duration::from_millis(self.spacing_ms),
            flanneld: self.flanneld.clone(),
            settle: Duration::from_secs(10),
        }
    }

    fn scale(&self) -> scale::Options {
        let sizes = if self.sizes.is_empty() {
            self.pick(None, vec![500, 5000, 20000, 65000], vec![500, 5000])
        } else {
            self.sizes.clone()
        };
        scale::Options {
            sizes,
            batch: self.batch,
            timeout: Duration::from_secs(self.scale_timeout),
            floor_runs: self.pick(None, 3, 2),
            incremental_reps: self.pick(None, 5, 3),
            idle_passes: self.pick(None, 2, 1),
            logs: self.logs.clone(),
        }
    }

    fn startup(&self) -> startup::Options {
        startup::Options {
            runs: self.pick(self.runs, 10, 5),
        }
    }
}

fn run_one(part: Part, k: &Knobs) -> Result<Section> {
    match part {
        Part::Throughput => throughput::run_part(&k.throughput()?),
        Part::Convergence => convergence::run_part(&k.convergence()),
        Part::Scale => scale::run_part(&k.scale()),
        Part::Startup => startup::run_part(&k.startup()),
        Part::All => Err(BenchError::Setup("`all` is not one part".into())),
    }
}

fn main() {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("felt-bench: run as root (it creates network namespaces)");
        std::process::exit(2);
    }
    let machine = Machine::probe();
    let parts = match args.part {
        Part::All => vec![
            Part::Throughput,
            Part::Convergence,
            Part::Scale,
            Part::Startup,
        ],
        p => vec![p],
    };
    let started = Instant::now();
    let mut sections = Vec::new();
    let mut failed = false;
    for part in parts {
        let t = Instant::now();
        match run_one(part, &args.knobs) {
            Ok(s) => {
                println!("{}", s.text());
                eprintln!("({part:?} took {:.0} s)", t.elapsed().as_secs_f64());
                sections.push(s);
            }
            Err(e) => {
                eprintln!("felt-bench: {part:?} failed: {e}");
                failed = true;
            }
        }
    }
    let md = markdown(&machine, &args, &sections, started.elapsed());
    println!("\n----- markdown for docs/performance.md -----\n\n{md}");
    if let Some(path) = &args.knobs.markdown {
        if let Err(e) = std::fs::write(path, &md) {
            eprintln!("felt-bench: cannot write {}: {e}", path.display());
            failed = true;
        }
    }
    std::process::exit(i32::from(failed));
}

fn markdown(machine: &Machine, args: &Args, sections: &[Section], took: Duration) -> String {
    let run = format!("felt-bench {}", shown_args(std::env::args().skip(1)));
    let mut md = String::from("## Datapath benchmarks\n\n");
    md.push_str(&format!(
        "Measured with `scripts/bench-datapath.sh` (`{run}`), everything side by side in one run of {:.0} s; release builds; every figure beside its reference from the same run.\n\n",
        took.as_secs_f64()
    ));
    md.push_str(&machine.markdown(&args.knobs.commit));
    for s in sections {
        md.push('\n');
        md.push_str(&s.markdown());
    }
    md
}

/// The command line without where output goes (local paths).
fn shown_args(args: impl Iterator<Item = String>) -> String {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        match a.as_str() {
            "--markdown" | "--logs" => skip_value = true,
            _ if a.starts_with("--markdown=") || a.starts_with("--logs=") => {}
            _ => out.push(a),
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_are_left_out_of_the_shown_command_line() {
        let args = ["all", "--markdown", "/tmp/x.md", "--quick", "--logs=/tmp/l"];
        assert_eq!(
            shown_args(args.iter().map(|s| s.to_string())),
            "all --quick"
        );
    }
}
