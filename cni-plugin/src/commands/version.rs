//! VERSION: the versions felt can speak.

use crate::protocol::version::{requested, SUPPORTED};
use serde_json::{json, Value};

pub fn run(stdin: &[u8]) -> Value {
    json!({"cniVersion": requested(stdin), "supportedVersions": SUPPORTED})
}
