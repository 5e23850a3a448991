//! flanneld's flags, by the same names, each also settable through
//! `FLANNELD_<NAME>` (upper case, dashes as underscores), as flanneld's
//! flagutil.SetFlagsFromEnv does. Go's single-dash spelling (`-iface`)
//! and `--flag=false` for booleans are accepted too.

use clap::builder::BoolishValueParser;
use clap::Parser;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "overlayd",
    version,
    about = "felt's per-node daemon: leases this node's pod subnet and routes to the other nodes' subnets (drop-in for flanneld)",
    long_about = None
)]
pub struct Flags {
    /// Comma-separated list of etcd endpoints.
    #[arg(
        long,
        env = "FLANNELD_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: String,

    /// etcd key prefix: the network config is read from <prefix>/config, leases live under <prefix>/subnets/.
    #[arg(
        long,
        env = "FLANNELD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub etcd_prefix: String,

    /// TLS client key for etcd (with --etcd-certfile; endpoints must then be https://).
    #[arg(long, env = "FLANNELD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,

    /// TLS client certificate for etcd (with --etcd-keyfile).
    #[arg(long, env = "FLANNELD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,

    /// CA certificate that signed etcd's server certificate (enough alone for TLS without a client certificate).
    #[arg(long, env = "FLANNELD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,

    /// User name for etcd authentication.
    #[arg(long, env = "FLANNELD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,

    /// Password for etcd authentication.
    #[arg(long, env = "FLANNELD_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,

    /// Interface (name or IPv4 address) for traffic between nodes. Repeat to give alternatives, tried in order.
    #[arg(long, env = "FLANNELD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,

    /// Regex matched against interface names and IPv4 addresses, tried after --iface. Repeatable.
    #[arg(long, env = "FLANNELD_IFACE_REGEX")]
    pub iface_regex: Vec<String>,

    /// Use the interface the kernel routes this IPv4 address through (`ip route get`), if --iface/--iface-regex found nothing.
    #[arg(long, env = "FLANNELD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<Ipv4Addr>,

    /// Address other nodes reach this node at (default: the interface's own IPv4 address).
    #[arg(long, env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,

    /// Where to write FLANNEL_NETWORK / FLANNEL_SUBNET / FLANNEL_MTU / FLANNEL_IPMASQ for the CNI plugin.
    #[arg(long, env = "FLANNELD_SUBNET_FILE", default_value = felt_common::subnet_env::DEFAULT_PATH)]
    pub subnet_file: PathBuf,

    /// Renew the 24h lease this many minutes before it expires (1 to 1439).
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..1440))]
    pub subnet_lease_renew_margin: u32,

    /// Masquerade traffic from pods to outside the pod network (flannel's rules, iptables or nftables per net-conf.json's EnableNFTables); also recorded in subnet.env (FLANNEL_IPMASQ).
    #[arg(long, env = "FLANNELD_IP_MASQ", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ip_masq: bool,

    /// Take the subnet from the Kubernetes API (Node.spec.podCIDR) instead of etcd, and the peers from the other Nodes' annotations.
    #[arg(long, env = "FLANNELD_KUBE_SUBNET_MGR", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub kube_subnet_mgr: bool,

    /// Kubernetes API server URL (with --kube-subnet-mgr; default: in-cluster, or the kubeconfig's server).
    #[arg(long, env = "FLANNELD_KUBE_API_URL")]
    pub kube_api_url: Option<String>,

    /// kubeconfig file (with --kube-subnet-mgr; default: the in-cluster service account).
    #[arg(long, env = "FLANNELD_KUBECONFIG_FILE")]
    pub kubeconfig_file: Option<PathBuf>,

    /// Node annotation prefix (with --kube-subnet-mgr); flannel's default, so felt and flannel nodes see each other.
    #[arg(
        long,
        env = "FLANNELD_KUBE_ANNOTATION_PREFIX",
        default_value = "flannel.alpha.coreos.com"
    )]
    pub kube_annotation_prefix: String,

    /// net-conf.json path, read with --kube-subnet-mgr (etcd mode reads <etcd-prefix>/config).
    #[arg(
        long,
        env = "FLANNELD_NET_CONFIG_PATH",
        default_value = "/etc/kube-flannel/net-conf.json"
    )]
    pub net_config_path: PathBuf,

    /// With --kube-subnet-mgr: set the Node condition NetworkUnavailable=False (reason FlannelIsUp) once routes are in place (flannel's flag; false leaves the condition to e.g. a cloud route controller).
    #[arg(long, env = "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub set_node_network_unavailable: bool,

    /// Address the health endpoint listens on (/healthz, /readyz, /metrics).
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: std::net::IpAddr,

    /// Port of the health endpoint; 0 = not served.
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,

    /// Install the FORWARD accept rules for the pod network (flannel's flag; rules as per EnableNFTables).
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub iptables_forward_rules: bool,

    /// Seconds between checks that the masquerade/forward rules are intact (flannel's flag; felt's default is 2, flannel's 5).
    #[arg(long, env = "FLANNELD_IPTABLES_RESYNC", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub iptables_resync: u64,

    /// felt only: remove the masquerade and forward rules felt (or flannel) installed, in both iptables and nftables, then exit. The datapath and leases are left alone.
    #[arg(long)]
    pub uninstall_rules: bool,

    /// felt only: log format, `text` (default) or `json` (one object per line).
    #[arg(long, env = "FLANNELD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::log::Format,

    /// felt only: lifetime of the etcd lease (flannel's is fixed at 24h); must be longer than the renew margin.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub subnet_lease_ttl: Duration,

    /// felt only: how often the kernel state is re-checked against the leases even without changes (e.g. 30s, 5m).
    #[arg(long, env = "FLANNELD_RESYNC_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub resync_interval: Duration,
}

impl Flags {
    /// Parses the process arguments (after rewriting Go-style `-flag`).
    pub fn from_args() -> Self {
        Flags::parse_from(go_style_args(std::env::args()))
    }

    pub fn etcd_endpoint_list(&self) -> Vec<String> {
        self.etcd_endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    pub fn renew_margin(&self) -> Duration {
        Duration::from_secs(u64::from(self.subnet_lease_renew_margin) * 60)
    }

    /// Where the health endpoint listens, if it is served.
    pub fn healthz_addr(&self) -> Option<std::net::SocketAddr> {
        (self.healthz_port != 0)
            .then(|| std::net::SocketAddr::new(self.healthz_ip, self.healthz_port))
    }
}

/// Go's flag package takes `-name` as well as `--name`: rewrite the
/// single-dash long form so flanneld command lines keep working.
pub fn go_style_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let long_single = a.starts_with('-') && !a.starts_with("--") && a.len() > 2;
            if i > 0 && long_single && a.as_bytes().get(1).is_some_and(u8::is_ascii_alphabetic) {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

/// `30s`, `5m`, `1h`, `250ms` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s"))?;
    let secs = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long"))
    };
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => secs(60)?,
        "h" => secs(3600)?,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    if d.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        let argv = std::iter::once("overlayd")
            .chain(args.iter().copied())
            .map(String::from);
        Flags::try_parse_from(go_style_args(argv))
    }

    #[test]
    fn flanneld_defaults() {
        let f = parse(&[]).unwrap();
        assert_eq!(
            f.etcd_endpoint_list(),
            ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(f.etcd_prefix, "/coreos.com/network");
        assert_eq!(f.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(f.renew_margin(), Duration::from_secs(3600));
        assert!(!f.ip_masq && !f.kube_subnet_mgr);
        assert_eq!(
            f.net_config_path,
            PathBuf::from("/etc/kube-flannel/net-conf.json")
        );
        assert_eq!(f.healthz_addr(), None);
        assert!(f.iptables_forward_rules);
        assert_eq!(f.subnet_lease_ttl, Duration::from_secs(86400));
        assert_eq!(f.resync_interval, Duration::from_secs(30));
        assert!(f.set_node_network_unavailable);
        assert!(
            !parse(&["--set-node-network-unavailable=false"])
                .unwrap()
                .set_node_network_unavailable
        );
    }

    #[test]
    fn kube_flannel_yml_command_line_and_go_spellings() {
        let f = parse(&[
            "--ip-masq",
            "--kube-subnet-mgr",
            "-iface=eth1",
            "--iface",
            "10.0.0.5",
            "-iface-regex",
            "^en",
        ])
        .unwrap();
        assert!(f.ip_masq && f.kube_subnet_mgr);
        assert_eq!(f.iface, ["eth1", "10.0.0.5"]);
        assert_eq!(f.iface_regex, ["^en"]);
        let f = parse(&[
            "--ip-masq=false",
            "--subnet-lease-renew-margin=5",
            "--resync-interval=2m",
        ])
        .unwrap();
        assert!(!f.ip_masq);
        assert_eq!(f.renew_margin(), Duration::from_secs(300));
        assert_eq!(f.resync_interval, Duration::from_secs(120));
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        assert!(parse(&["--subnet-lease-renew-margin=0"]).is_err());
        assert!(parse(&["--subnet-lease-renew-margin=1440"]).is_err());
        assert!(parse(&["--public-ip=fc00::1"]).is_err());
        assert!(parse(&["--resync-interval=0s"]).is_err());
        assert!(parse(&["--resync-interval=3d"]).is_err());
        assert!(parse(&["--no-such-flag"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
    }
}
