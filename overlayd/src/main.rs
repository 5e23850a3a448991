//! overlayd: parse flanneld-compatible flags, run the daemon until it
//! fails or SIGTERM/SIGINT arrives. On a signal the datapath (device,
//! routes, neighbours) is left in place so pods keep working across a
//! restart; the next run reuses the same lease.

use overlayd::{cli::Flags, daemon};
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    let flags = Flags::from_args();
    overlayd::log::init(flags.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    if flags.uninstall_rules {
        return runtime.block_on(uninstall_rules());
    }
    runtime.block_on(run(flags))
}

/// `--uninstall-rules`: every masquerade/forward rule felt or flannel
/// installed goes, in both modes; nothing else is touched.
async fn uninstall_rules() -> ExitCode {
    match overlayd::firewall::uninstall_all().await {
        Ok(()) => {
            tracing::info!("masquerade and forward rules removed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> ExitCode {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        r = daemon::run(flags) => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        },
        _ = term.recv() => shutdown("SIGTERM"),
        _ = int.recv() => shutdown("SIGINT"),
    }
}

fn shutdown(sig: &str) -> ExitCode {
    tracing::info!(
        signal = sig,
        "shutting down; leaving the datapath and the lease in place"
    );
    ExitCode::SUCCESS
}
