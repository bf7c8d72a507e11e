//! Recognising apps among the host's containers by naming conventions (Transfer App v3.1's
//! `DockerApp`): one app per compose project, its parts picked by service name.

use std::collections::BTreeMap;

use bollard::models::ContainerSummary;

use super::lifecycle::Apps;
use crate::core::CoreResult;

use crate::core::compose::plan::LABEL_PROJECT as PROJECT_LABEL;
const SERVICE_LABEL: &str = "com.docker.compose.service";

/// A container playing a part of a recognised app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppContainer {
    pub image: String,
    /// Published host ports when the container publishes any, else its exposed ports.
    pub ports: Vec<u16>,
    /// Docker's status text ("Up 3 minutes", "Exited (0) ...").
    pub status: String,
    pub id: String,
    /// Docker's names without the leading `/`.
    pub names: Vec<String>,
}

/// A compose project seen as an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecognizedApp {
    pub project: String,
    pub frontend: Option<AppContainer>,
    pub middlelayer: Option<AppContainer>,
}

fn service(c: &ContainerSummary) -> String {
    c.labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_LABEL))
        .cloned()
        .unwrap_or_default()
        .to_lowercase()
}

fn container(c: &ContainerSummary) -> AppContainer {
    let ports = c.ports.as_deref().unwrap_or_default();
    let mut published: Vec<u16> = ports.iter().filter_map(|p| p.public_port).collect();
    if published.is_empty() {
        published = ports.iter().map(|p| p.private_port).collect();
    }
    published.sort_unstable();
    published.dedup();
    AppContainer {
        image: c.image.clone().unwrap_or_default(),
        ports: published,
        status: c.status.clone().unwrap_or_default(),
        id: c.id.clone().unwrap_or_default(),
        names: c
            .names
            .iter()
            .flatten()
            .map(|n| n.trim_start_matches('/').to_string())
            .collect(),
    }
}

/// Groups containers by compose project. In each project (services sorted by name) the
/// middlelayer is the first service whose name contains "middlelayer", "middleware" or
/// "backend"; the frontend is the first whose name contains "frontend", else the first
/// service that is not the middlelayer. Projects sorted by name.
pub fn recognize(containers: &[ContainerSummary]) -> Vec<RecognizedApp> {
    let mut projects: BTreeMap<String, Vec<&ContainerSummary>> = BTreeMap::new();
    for c in containers {
        if let Some(p) = c.labels.as_ref().and_then(|l| l.get(PROJECT_LABEL)) {
            projects.entry(p.clone()).or_default().push(c);
        }
    }
    projects
        .into_iter()
        .map(|(project, mut cs)| {
            cs.sort_by_key(|c| (service(c), c.id.clone()));
            let middle = cs.iter().position(|c| {
                let s = service(c);
                s.contains("middlelayer") || s.contains("middleware") || s.contains("backend")
            });
            let front = cs
                .iter()
                .position(|c| service(c).contains("frontend"))
                .or_else(|| (0..cs.len()).find(|i| Some(*i) != middle));
            RecognizedApp {
                project,
                frontend: front.map(|i| container(cs[i])),
                middlelayer: middle.map(|i| container(cs[i])),
            }
        })
        .collect()
}

impl Apps {
    /// Compose projects on this host as DockerApps (see [`recognize`]).
    pub async fn recognize_apps(&self) -> CoreResult<Vec<RecognizedApp>> {
        Ok(recognize(&self.recognize().await?))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::PortSummary;

    use super::*;

    fn c(id: &str, project: &str, svc: &str, ports: &[(u16, Option<u16>)]) -> ContainerSummary {
        ContainerSummary {
            id: Some(id.into()),
            names: Some(vec![format!("/{project}-{svc}-1")]),
            image: Some(format!("img/{svc}")),
            status: Some("Up 1 second".into()),
            labels: Some(HashMap::from([
                (PROJECT_LABEL.to_string(), project.to_string()),
                (SERVICE_LABEL.to_string(), svc.to_string()),
            ])),
            ports: Some(
                ports
                    .iter()
                    .map(|(private, public)| PortSummary {
                        private_port: *private,
                        public_port: *public,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn parts_are_picked_by_service_name() {
        let apps = recognize(&[
            c("3", "shop", "db", &[(5432, None)]),
            c(
                "1",
                "shop",
                "Frontend",
                &[(80, Some(54180)), (80, Some(54180))],
            ),
            c("2", "shop", "backend-api", &[(8080, Some(54179))]),
            c("4", "plain", "web", &[(8080, None)]),
            ContainerSummary {
                id: Some("5".into()),
                ..Default::default()
            },
        ]);
        assert_eq!(apps.len(), 2, "{apps:?}");
        assert_eq!(apps[0].project, "plain");
        let web = apps[0].frontend.as_ref().unwrap();
        assert_eq!(web.ports, [8080]);
        assert_eq!(apps[0].middlelayer, None);
        let shop = &apps[1];
        let front = shop.frontend.as_ref().unwrap();
        assert_eq!(front.id, "1");
        assert_eq!(front.ports, [54180]);
        assert_eq!(front.names, ["shop-Frontend-1"]);
        assert_eq!(front.image, "img/Frontend");
        assert_eq!(front.status, "Up 1 second");
        assert_eq!(shop.middlelayer.as_ref().unwrap().id, "2");
    }
}
