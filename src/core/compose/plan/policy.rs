//! The keys the gateway's `[apps]` policy gates ([`ComposePolicy`]): `privileged`, `devices`
//! and `cap_add`. (Bind mount and env file paths are checked where they are resolved, in
//! [`super::mounts`].)

use bollard::models::DeviceMapping;
use docker_compose_types::Service;

use super::{invalid, refused};
use crate::core::compose::{ComposeError, ComposePolicy};

/// Refuses what the policy does not allow; checked before anything else of a service, so a
/// refused app hears about it first.
pub(super) fn check(scope: &str, s: &Service, allowed: &ComposePolicy) -> Result<(), ComposeError> {
    let asked = [
        (
            s.privileged && !allowed.allow_privileged,
            "\"privileged\" is",
        ),
        (
            !s.devices.is_empty() && !allowed.allow_devices,
            "\"devices\" are",
        ),
        (
            !s.cap_add.is_empty() && !allowed.allow_capabilities,
            "\"cap_add\" is",
        ),
    ];
    match asked.iter().find(|(not_allowed, _)| *not_allowed) {
        Some((_, what)) => Err(refused(
            scope,
            format!("{what} not allowed by this gateway's policy"),
        )),
        None => Ok(()),
    }
}

/// `host[:container[:permissions]]`, permissions `rwm` unless given.
pub(super) fn devices(scope: &str, s: &Service) -> Result<Vec<DeviceMapping>, ComposeError> {
    s.devices
        .iter()
        .map(|d| {
            let parts: Vec<&str> = d.split(':').collect();
            let (host, cont, perms) = match parts.as_slice() {
                [h] => (*h, *h, "rwm"),
                [h, c] => (*h, *c, "rwm"),
                [h, c, p] => (*h, *c, *p),
                _ => return Err(invalid(scope, format!("invalid device \"{d}\""))),
            };
            Ok(DeviceMapping {
                path_on_host: Some(host.to_string()),
                path_in_container: Some(cont.to_string()),
                cgroup_permissions: Some(perms.to_string()),
            })
        })
        .collect()
}
