//! The host-gw backend: no device, no encapsulation; each peer's subnet is
//! routed via the peer's public IP on the external interface. That only
//! works when every peer is on a network directly connected to this node
//! (one L2 segment), which is why a peer that is not is reported.

use super::{direct_route, own_ip_problem, Backend, BackendError, ExternalInterface, Prepared};
use crate::lease::Lease;
use crate::spec::{ObjectKind, PeerObjects, Scope};
use async_trait::async_trait;
use ipnet::Ipv4Net;

#[derive(Default)]
pub struct HostGwBackend {
    ext: Option<ExternalInterface>,
}

impl HostGwBackend {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Backend for HostGwBackend {
    fn backend_type(&self) -> &'static str {
        "host-gw"
    }

    async fn prepare(&mut self, ext: &ExternalInterface) -> Result<Prepared, BackendError> {
        // Peers route to our PublicIP as a next hop on their own segment;
        // an address behind NAT is not one they can reach that way.
        if ext.public_ip != ext.iface_addr {
            return Err(BackendError::Config(format!(
                "host-gw: the public IP {} differs from {}'s address {} (NAT?); \
                 host-gw needs all nodes on one directly connected network",
                ext.public_ip, ext.name, ext.iface_addr
            )));
        }
        self.ext = Some(ext.clone());
        // flannel publishes no BackendData for host-gw (the key is omitted).
        Ok(Prepared {
            backend_data: serde_json::Value::Null,
            mtu: ext.mtu,
        })
    }

    async fn configure_own(&mut self, _own: &Lease) -> Result<(), BackendError> {
        Ok(())
    }

    async fn ensure(&self, _own: &Lease) -> Result<Vec<ObjectKind>, BackendError> {
        Ok(Vec::new())
    }

    fn scope(&self) -> Scope {
        Scope {
            ext_index: self.ext.as_ref().map_or(0, |e| e.index),
            device: None,
            ext_gateway_routes: true,
        }
    }

    fn peer_objects(&self, peer: &Lease, connected: &[Ipv4Net]) -> Result<PeerObjects, String> {
        let ext = self.ext.as_ref().ok_or("host-gw backend not prepared")?;
        own_ip_problem(ext, peer)?;
        let route = direct_route(ext, peer, connected).ok_or_else(|| {
            format!(
                "PublicIP {} is not on a network directly connected to {}; \
                 host-gw cannot route to it (use vxlan, or vxlan with DirectRouting)",
                peer.attrs.public_ip, ext.name
            )
        })?;
        Ok(PeerObjects {
            routes: vec![route],
            ..PeerObjects::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::test_lease;
    use crate::spec::RouteSpec;

    fn ext(public: &str) -> ExternalInterface {
        ExternalInterface {
            name: "eth0".into(),
            index: 2,
            iface_addr: "192.168.1.1".parse().unwrap(),
            public_ip: public.parse().unwrap(),
            mtu: 1500,
        }
    }

    fn lease(subnet: &str, ip: &str) -> Lease {
        test_lease(subnet, ip, "host-gw")
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn prepare_refuses_nat() {
        let mut b = HostGwBackend::new();
        let err = rt().block_on(b.prepare(&ext("203.0.113.7"))).unwrap_err();
        assert!(err.to_string().contains("203.0.113.7"), "{err}");
    }

    #[test]
    fn prepare_publishes_no_backend_data_and_ext_mtu() {
        let mut b = HostGwBackend::new();
        let p = rt().block_on(b.prepare(&ext("192.168.1.1"))).unwrap();
        assert_eq!(p.backend_data, serde_json::Value::Null);
        assert_eq!(p.mtu, 1500);
    }

    #[test]
    fn routes_connected_peers_reports_others() {
        let mut b = HostGwBackend::new();
        rt().block_on(b.prepare(&ext("192.168.1.1"))).unwrap();
        let own = lease("10.244.1.0/24", "192.168.1.1");
        let near = lease("10.244.2.0/24", "192.168.1.2");
        let far = lease("10.244.3.0/24", "10.9.9.9");
        let d = b.desired(&own, &[&near, &far], &["192.168.1.0/24".parse().unwrap()]);
        let want = RouteSpec {
            dst: near.subnet,
            gateway: Some("192.168.1.2".parse().unwrap()),
            oif: 2,
            onlink: false,
            metric: 0,
        };
        assert_eq!(d.routes.into_iter().collect::<Vec<_>>(), vec![want]);
        assert_eq!(d.problems.len(), 1);
        assert!(d.problems[0].contains("10.244.3.0/24"), "{}", d.problems[0]);
    }
}
