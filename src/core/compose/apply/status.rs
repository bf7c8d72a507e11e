//! `status`: the project's containers by service, as `docker-compose ps` lists them.

use bollard::models::ContainerSummary;

use super::super::plan::{LABEL_ONEOFF, LABEL_SERVICE};
use super::{container_name, is_running, label, project_label, ContainerStatus, ServiceStatus};
use crate::core::compose::{ComposeError, ComposeProject};
use crate::core::engine::{ContainerEngine, Filter};

pub async fn status(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
) -> Result<Vec<ServiceStatus>, ComposeError> {
    let containers = engine
        .list_containers_filtered(&[
            project_label(p),
            Filter::Label(format!("{LABEL_ONEOFF}=False")),
        ])
        .await
        .map_err(ComposeError::engine("listing the project's containers"))?;
    let to_status = |c: &ContainerSummary| ContainerStatus {
        name: container_name(c),
        id: c.id.clone().unwrap_or_default(),
        image: c.image.clone().unwrap_or_default(),
        state: c.state.map(|s| s.to_string()).unwrap_or_default(),
        status: c.status.clone().unwrap_or_default(),
        running: is_running(c),
        image_id: c.image_id.clone().unwrap_or_default(),
        created: c.created,
        ports: port_mappings(c),
    };
    let mut out: Vec<ServiceStatus> = p
        .plan()
        .services
        .iter()
        .map(|s| ServiceStatus {
            service: s.name.clone(),
            defined: true,
            containers: containers
                .iter()
                .filter(|c| label(c, LABEL_SERVICE) == Some(s.name.as_str()))
                .map(to_status)
                .collect(),
        })
        .collect();
    for c in &containers {
        let service = label(c, LABEL_SERVICE).unwrap_or_default();
        if p.plan().service(service).is_some() {
            continue;
        }
        match out.iter_mut().find(|s| s.service == service) {
            Some(s) => s.containers.push(to_status(c)),
            None => out.push(ServiceStatus {
                service: service.to_string(),
                defined: false,
                containers: vec![to_status(c)],
            }),
        }
    }
    Ok(out)
}

pub(crate) fn port_mappings(c: &ContainerSummary) -> Vec<String> {
    let mut out: Vec<String> = c
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let proto = p.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into());
            match (p.ip.as_deref(), p.public_port) {
                (Some(ip), Some(public)) if ip.contains(':') => {
                    format!("[{ip}]:{public}->{}/{proto}", p.private_port)
                }
                (Some(ip), Some(public)) => format!("{ip}:{public}->{}/{proto}", p.private_port),
                (None, Some(public)) => format!("{public}->{}/{proto}", p.private_port),
                _ => format!("{}/{proto}", p.private_port),
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
