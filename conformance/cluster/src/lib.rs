//! felt-cluster: a real multi-node felt cluster on one machine, for the
//! cluster tests (`tests/`) and the demo (`felt-demo`).
//!
//! An "underlay" network namespace holds a Linux bridge and a real etcd;
//! every node is a namespace plugged into that bridge by a veth, running
//! overlayd with flanneld's flags; every pod is a namespace wired up by
//! the `felt` CNI plugin, called exactly as a container runtime calls it.
//! Nothing touches the machine's own network namespace, and everything is
//! torn down on drop, also when a test fails.

pub mod cluster;
pub mod error;
pub mod etcd;
pub mod http;
pub mod kernel;
pub mod netns;
pub mod node;
pub mod pod;
pub mod process;
pub mod stream;
pub mod tcp;
pub mod udp;
pub mod wait;

pub use cluster::{net_conf, underlay_ip, Backend, Cluster, ETCD_PREFIX, NETWORK};
pub use error::{HarnessError, Result};
pub use kernel::{KernelState, Peer, VTEP};
pub use netns::{Naming, Netns};
pub use node::{lease_key, Node};
pub use pod::{Ping, Pod};
