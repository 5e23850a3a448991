//! A set of Kubernetes objects (one YAML stream) as JSON values, with the
//! look-ups the tests make: an object by kind and name, the DaemonSet's
//! containers, what a container mounts where.

use crate::error::{manifest_err, Result};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it came from, for messages.
    pub what: String,
    pub docs: Vec<Value>,
}

/// A volume as a container sees it: where it is mounted and what backs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Backing {
    HostPath(PathBuf),
    ConfigMap(String),
    Secret(String),
    Other(Value),
}

impl Manifest {
    /// Parses a multi-document YAML stream; empty documents are skipped.
    pub fn parse(what: &str, text: &str) -> Result<Self> {
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = Value::deserialize(doc).map_err(|e| manifest_err(what, e))?;
            if v.is_null() {
                continue;
            }
            for key in ["apiVersion", "kind"] {
                if !v[key].is_string() {
                    return Err(manifest_err(what, format!("a document without {key}: {v}")));
                }
            }
            if !v["metadata"]["name"].is_string() {
                return Err(manifest_err(
                    what,
                    format!("a document without metadata.name: {v}"),
                ));
            }
            docs.push(v);
        }
        Ok(Manifest {
            what: what.to_string(),
            docs,
        })
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(crate::error::io_err(format!("read {}", path.display())))?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The one object of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> Result<&Value> {
        let mut found = self
            .docs
            .iter()
            .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name);
        match (found.next(), found.next()) {
            (Some(d), None) => Ok(d),
            (None, _) => Err(manifest_err(&self.what, format!("no {kind} {name}"))),
            (Some(_), Some(_)) => Err(manifest_err(&self.what, format!("two {kind} {name}"))),
        }
    }

    /// `(kind, namespace, name)` of every object, sorted: what a manifest
    /// creates, compared as a set.
    pub fn identities(&self) -> Vec<(String, String, String)> {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let mut ids: Vec<_> = self
            .docs
            .iter()
            .map(|d| {
                (
                    s(&d["kind"]),
                    s(&d["metadata"]["namespace"]),
                    s(&d["metadata"]["name"]),
                )
            })
            .collect();
        ids.sort();
        ids
    }

    pub fn daemonset(&self) -> Result<&Value> {
        self.get("DaemonSet", "felt")
    }

    /// The ConfigMap's `data[key]`.
    pub fn config_data(&self, key: &str) -> Result<String> {
        self.get("ConfigMap", "felt-cfg")?["data"][key]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| manifest_err(&self.what, format!("ConfigMap felt-cfg has no {key}")))
    }

    /// A container (or init container) of the DaemonSet's pod by name.
    pub fn container(&self, name: &str) -> Result<&Value> {
        let spec = &self.daemonset()?["spec"]["template"]["spec"];
        ["initContainers", "containers"]
            .iter()
            .filter_map(|k| spec[k].as_array())
            .flatten()
            .find(|c| c["name"] == name)
            .ok_or_else(|| manifest_err(&self.what, format!("no container {name}")))
    }

    /// Every image the DaemonSet runs, with its pull policy.
    pub fn images(&self) -> Result<Vec<(String, String)>> {
        let spec = &self.daemonset()?["spec"]["template"]["spec"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Ok(["initContainers", "containers"]
            .iter()
            .filter_map(|k| spec[k].as_array())
            .flatten()
            .map(|c| (s(&c["image"]), s(&c["imagePullPolicy"])))
            .collect())
    }

    /// `(mountPath, backing)` of every volume container `name` mounts.
    pub fn mounts(&self, name: &str) -> Result<Vec<(PathBuf, Backing)>> {
        let container = self.container(name)?;
        let volumes = self.daemonset()?["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut out = Vec::new();
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let vol = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .ok_or_else(|| {
                    manifest_err(
                        &self.what,
                        format!("{name} mounts an undefined volume {}", m["name"]),
                    )
                })?;
            let path = m["mountPath"].as_str().unwrap_or_default();
            out.push((PathBuf::from(path.trim_end_matches('/')), backing(vol)));
        }
        Ok(out)
    }

    /// The command line of container `name`: command followed by args.
    pub fn argv(&self, name: &str) -> Result<Vec<String>> {
        let c = self.container(name)?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        Ok([strings(&c["command"]), strings(&c["args"])].concat())
    }
}

fn backing(vol: &Value) -> Backing {
    if let Some(p) = vol["hostPath"]["path"].as_str() {
        Backing::HostPath(PathBuf::from(p))
    } else if let Some(n) = vol["configMap"]["name"].as_str() {
        Backing::ConfigMap(n.to_string())
    } else if let Some(n) = vol["secret"]["secretName"].as_str() {
        Backing::Secret(n.to_string())
    } else {
        Backing::Other(vol.clone())
    }
}
