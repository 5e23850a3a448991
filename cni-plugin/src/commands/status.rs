//! STATUS: ready when the config is valid and a subnet source exists
//! (explicit ranges, or a readable, valid subnet file).

use crate::error::{Error, Result};
use crate::protocol::config;
use crate::protocol::version;

pub fn run(stdin: &[u8]) -> Result<()> {
    let conf = config::parse(stdin).map_err(not_ready)?;
    version::require(&conf.cni_version, "1.1.0", "STATUS")?;
    if !conf.ranges.is_empty() {
        return Ok(());
    }
    let env = config::read_subnet_env(&conf).map_err(not_ready)?;
    if env.is_none() {
        return Err(Error::NotReady(format!(
            "subnet file {} not found (is overlayd running?)",
            conf.subnet_file.display()
        )));
    }
    config::resolve(&conf, env.as_ref())
        .map(|_| ())
        .map_err(not_ready)
}

/// Config problems make the plugin unusable: report them as "not ready",
/// except decode/version errors, which the runtime must see as such.
fn not_ready(e: Error) -> Error {
    match e {
        Error::Decode(_) | Error::IncompatibleVersion(_) => e,
        other => Error::NotReady(format!("plugin not ready: {other}")),
    }
}
