//! `felt`: the CNI plugin. Reads CNI_* and the config from stdin, runs one
//! command, prints the result (or the spec's error JSON) on stdout.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);

/// Debug logging to stderr, on with FELT_LOG=debug; quiet by default
/// because runtimes capture stderr into their own logs.
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::debug_enabled() {
            eprintln!("felt: {}", format!($($arg)*));
        }
    };
}

pub(crate) fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

mod commands;
mod error;
mod ipam;
mod link;
mod masq;
mod protocol;

use error::Error;
use protocol::env::Command;

fn main() {
    if std::env::var("FELT_LOG").is_ok_and(|v| v.eq_ignore_ascii_case("debug")) {
        DEBUG.store(true, Ordering::Relaxed);
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        // A bug must still end in the spec's error JSON, never a bare
        // panic message the runtime cannot parse.
        Ok(_) => std::panic::catch_unwind(|| run(&stdin))
            .unwrap_or_else(|_| Err(Error::Internal("internal error (panic), see stderr".into()))),
        Err(e) => Err(Error::Io {
            what: "read network configuration from stdin".into(),
            source: e,
        }),
    };
    let code = match outcome {
        Ok(Some(result)) => print(&result).map_or(1, |_| 0),
        Ok(None) => 0,
        Err(e) => {
            debug!("error: {e}");
            let _ = print(&error_json(&stdin, &e));
            1
        }
    };
    std::process::exit(code);
}

fn print(v: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The spec's error object; cniVersion echoes the config's when readable.
fn error_json(stdin: &[u8], e: &Error) -> Value {
    let version = protocol::version::requested(stdin);
    let details = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    json!({"cniVersion": version, "code": e.code(), "msg": e.to_string(), "details": details})
}

fn run(stdin: &[u8]) -> Result<Option<Value>, Error> {
    let cmd = match std::env::var("CNI_COMMAND") {
        Ok(c) if !c.is_empty() => Command::parse(&c)?,
        _ => {
            return Err(Error::InvalidEnv(
                "required environment variable CNI_COMMAND is missing or empty".into(),
            ))
        }
    };
    debug!("{cmd:?}");
    match cmd {
        Command::Version => Ok(Some(commands::version::run(stdin))),
        Command::Add => {
            let env = protocol::env::load(cmd)?;
            let conf = protocol::config::parse(stdin)?;
            commands::add::run(&conf, &env).map(Some)
        }
        Command::Del => {
            let env = protocol::env::load(cmd)?;
            let conf = protocol::config::parse(stdin)?;
            commands::del::run(&conf, &env).map(|_| None)
        }
        Command::Check => {
            let env = protocol::env::load(cmd)?;
            let conf = protocol::config::parse(stdin)?;
            commands::check::run(&conf, &env).map(|_| None)
        }
        Command::Status => commands::status::run(stdin).map(|_| None),
        Command::Gc => {
            let conf = protocol::config::parse(stdin)?;
            commands::gc::run(&conf).map(|_| None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::version::LATEST;

    #[test]
    fn error_json_echoes_config_version_and_falls_back() {
        let e = Error::InvalidEnv("CNI_IFNAME: bad".into());
        let v = error_json(br#"{"cniVersion":"0.4.0","name":"n"}"#, &e);
        assert_eq!(
            v,
            json!({"cniVersion":"0.4.0","code":4,"msg":"CNI_IFNAME: bad","details":""})
        );
        let v = error_json(b"{garbage", &Error::Decode("x".into()));
        assert_eq!(
            (v["cniVersion"].as_str(), v["code"].as_u64()),
            (Some(LATEST), Some(6))
        );
    }

    #[test]
    fn version_answers_requested_version() {
        let v = commands::version::run(br#"{"cniVersion":"0.3.1"}"#);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["supportedVersions"].as_array().map(Vec::len), Some(5));
        assert_eq!(commands::version::run(b"")["cniVersion"], LATEST);
    }
}
