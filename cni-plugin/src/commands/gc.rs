//! GC: releases every reservation of this network not listed in
//! `cni.dev/valid-attachments`, and deletes host veths on the bridge whose
//! pod end is gone. Keeps going past errors; prints nothing on success.

use super::join_errors;
use crate::error::{Error, Result};
use crate::ipam::store::Store;
use crate::link::netlink::{Link, Socket};
use crate::protocol::config::NetConf;
use crate::protocol::version;

pub fn run(conf: &NetConf) -> Result<()> {
    version::require(&conf.cni_version, "1.1.0", "GC")?;
    let Some(valid) = &conf.valid_attachments else {
        return Err(Error::InvalidConfig(
            "GC needs cni.dev/valid-attachments in the configuration".into(),
        ));
    };
    let mut errors = Vec::new();
    if let Err(e) = release_unlisted(conf, valid, &mut errors) {
        errors.push(e);
    }
    if let Err(e) = delete_orphan_veths(conf, &mut errors) {
        errors.push(e);
    }
    join_errors(errors)
}

fn release_unlisted(
    conf: &NetConf,
    valid: &[(String, String)],
    errors: &mut Vec<Error>,
) -> Result<()> {
    let store = Store::open(&conf.data_dir, &conf.name)?;
    for entry in store.entries()? {
        let keep = valid.iter().any(|(id, ifname)| entry.matches(id, ifname));
        if keep {
            continue;
        }
        debug!(
            "gc: releasing {} of {}/{}",
            entry.ip, entry.container_id, entry.ifname
        );
        if let Err(e) = store.release(entry.ip) {
            errors.push(e);
        }
    }
    for (id, ifname) in store.indexed_owners() {
        if !valid
            .iter()
            .any(|(v_id, v_if)| *v_id == id && *v_if == ifname)
        {
            if let Err(e) = store.forget_owner(&id, &ifname) {
                errors.push(e);
            }
        }
    }
    Ok(())
}

/// A host veth whose peer is in no other netns and that has no carrier has
/// lost its pod. (An ADD in flight already has its peer in the pod netns,
/// so it is never mistaken for an orphan.)
fn is_orphan(link: &Link, bridge_index: u32) -> bool {
    link.master == Some(bridge_index)
        && link.kind.as_deref() == Some("veth")
        && link.link_netnsid.is_none()
        && link.carrier != Some(1)
}

fn delete_orphan_veths(conf: &NetConf, errors: &mut Vec<Error>) -> Result<()> {
    let mut sock = Socket::open()?;
    let Some(bridge) = sock.get_link(&conf.bridge)? else {
        return Ok(());
    };
    for link in sock.dump_links()? {
        if !is_orphan(&link, bridge.index) {
            continue;
        }
        debug!("gc: deleting orphan veth {}", link.name);
        match sock.del_link(link.index, &format!("delete orphan veth {}", link.name)) {
            Err(e) if !e.is_not_found() => errors.push(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphan_rule() {
        let base = Link {
            master: Some(3),
            kind: Some("veth".into()),
            carrier: Some(0),
            ..Default::default()
        };
        assert!(is_orphan(&base, 3));
        assert!(!is_orphan(
            &Link {
                link_netnsid: Some(0),
                ..base.clone()
            },
            3
        ));
        assert!(!is_orphan(
            &Link {
                carrier: Some(1),
                ..base.clone()
            },
            3
        ));
        assert!(!is_orphan(
            &Link {
                master: Some(4),
                ..base.clone()
            },
            3
        ));
        assert!(!is_orphan(
            &Link {
                kind: Some("vxlan".into()),
                ..base
            },
            3
        ));
    }
}
