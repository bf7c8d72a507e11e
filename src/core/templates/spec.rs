//! A template's `docker-compose-build.yml`: which services are built from which context,
//! the image tag each build gets, and the compose file of the app instance made from it
//! (the same file with every `build:` replaced by `image: <tag>`).

use serde_norway::{Mapping, Value};

use crate::core::apps::AppId;
use crate::core::{CoreError, CoreResult};

/// One service of a template that is built on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildService {
    pub service: String,
    /// The context directory inside the template, `/`-separated, "" for the top level.
    pub context: String,
    /// The Dockerfile's path inside the context.
    pub dockerfile: String,
    pub args: Vec<(String, String)>,
    /// `name:tag` of the built image, derived from the template's id and the service.
    pub image: String,
}

impl BuildService {
    /// The Dockerfile's path inside the template.
    pub fn dockerfile_path(&self) -> String {
        join(&self.context, &self.dockerfile)
    }
}

/// What a template's build file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The services with a `build:` context, in the file's order (the order they build in).
    pub builds: Vec<BuildService>,
    /// The instance's compose file: the build file with built images in place of `build:`.
    pub instance_compose: String,
}

fn invalid(message: impl Into<String>) -> CoreError {
    CoreError::Invalid(format!(
        "{}: {}",
        crate::core::apps::bundle::BUILD_FILE,
        message.into()
    ))
}

impl BuildSpec {
    /// Reads the build file of the template `template`. Only the build section is read here;
    /// the instance compose file it yields is checked as any app's compose file is.
    pub fn parse(text: &str, template: &AppId) -> CoreResult<BuildSpec> {
        let mut doc: Value =
            serde_norway::from_str(text).map_err(|e| invalid(format!("invalid YAML: {e}")))?;
        let services = doc
            .get_mut("services")
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| invalid("no services"))?;
        let mut builds = Vec::new();
        for (name, service) in services.iter_mut() {
            let name = name
                .as_str()
                .ok_or_else(|| invalid("a service name is not a string"))?;
            let Some(service) = service.as_mapping_mut() else {
                continue;
            };
            if let Some(build) = service.remove("build") {
                let b = build_service(name, &build, template)?;
                service.insert(Value::from("image"), Value::from(b.image.clone()));
                builds.push(b);
            }
        }
        if builds.is_empty() {
            return Err(invalid("no service has a build context"));
        }
        let instance_compose = serde_norway::to_string(&doc)
            .map_err(|e| invalid(format!("cannot write the instance's compose file: {e}")))?;
        Ok(BuildSpec {
            builds,
            instance_compose,
        })
    }

    /// Every build context holds its Dockerfile (`contains`: whether the template holds a
    /// file).
    pub fn check_files(&self, contains: impl Fn(&str) -> bool) -> CoreResult<()> {
        for b in &self.builds {
            let path = b.dockerfile_path();
            if !contains(&path) {
                return Err(invalid(format!(
                    "service \"{}\": the template has no {path}",
                    b.service
                )));
            }
        }
        Ok(())
    }
}

/// `build: ctx` or `build: {context, dockerfile, args}`.
fn build_service(service: &str, build: &Value, template: &AppId) -> CoreResult<BuildService> {
    let scope = |m: String| invalid(format!("service \"{service}\": {m}"));
    let (context, dockerfile, args) = match build {
        Value::String(ctx) => (ctx.clone(), "Dockerfile".to_string(), Vec::new()),
        Value::Mapping(m) => build_map(m).map_err(scope)?,
        _ => return Err(scope("build must be a path or a mapping".into())),
    };
    Ok(BuildService {
        service: service.to_string(),
        context: relative_path(&context).map_err(|m| scope(format!("build.context {m}")))?,
        dockerfile: relative_path(&dockerfile)
            .map_err(|m| scope(format!("build.dockerfile {m}")))?,
        args,
        image: image_for(template, service).map_err(scope)?,
    })
}

type BuildParts = (String, String, Vec<(String, String)>);

fn build_map(m: &Mapping) -> Result<BuildParts, String> {
    let mut context = ".".to_string();
    let mut dockerfile = "Dockerfile".to_string();
    let mut args = Vec::new();
    for (k, v) in m {
        let key = k.as_str().unwrap_or("");
        match key {
            "context" => context = scalar(v).ok_or("build.context must be a string")?,
            "dockerfile" => dockerfile = scalar(v).ok_or("build.dockerfile must be a string")?,
            "args" => args = build_args(v)?,
            other => {
                return Err(format!(
                    "build.{other} is not supported in a template (context, dockerfile and args \
                     are)"
                ))
            }
        }
    }
    Ok((context, dockerfile, args))
}

/// `args: {K: v}` or `args: ["K=v", "K"]` (a bare `K` is an empty value here: the device
/// has no environment to take it from).
fn build_args(v: &Value) -> Result<Vec<(String, String)>, String> {
    match v {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let k = k.as_str().ok_or("build.args keys must be strings")?;
                let v = if v.is_null() {
                    Some(String::new())
                } else {
                    scalar(v)
                };
                Ok((k.to_string(), v.ok_or("build.args values must be scalars")?))
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let s = item.as_str().ok_or("build.args entries must be strings")?;
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                Ok((k.to_string(), v.to_string()))
            })
            .collect(),
        _ => Err("build.args must be a mapping or a list".into()),
    }
}

/// A string as it is; a number or boolean as YAML writes it.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => serde_norway::to_string(v)
            .ok()
            .map(|text| text.trim_end().to_string()),
        _ => None,
    }
}

/// A path inside the template: relative, no `..`, normalised (`./a//b/` is `a/b`, `.` is "").
fn relative_path(p: &str) -> Result<String, String> {
    if p.starts_with('/') || p.contains('\\') {
        return Err(format!(
            "\"{p}\" must be a relative path inside the template"
        ));
    }
    let mut parts = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err(format!("\"{p}\" must stay inside the template (no \"..\")")),
            s => parts.push(s),
        }
    }
    Ok(parts.join("/"))
}

fn join(dir: &str, file: &str) -> String {
    if dir.is_empty() {
        file.to_string()
    } else {
        format!("{dir}/{file}")
    }
}

/// The tag of a service's built image: `<template slug>-<service>:latest`, lowercased, with
/// every run of characters a repository name cannot hold turned into one `-` (docker
/// compose's `<project>-<service>` naming, with the template's id as the project).
pub fn image_for(template: &AppId, service: &str) -> Result<String, String> {
    let raw = format!("{}-{}", template.slug(), service.to_lowercase());
    let mut repo = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            repo.push(c);
        } else if !repo.ends_with('-') {
            repo.push('-');
        }
    }
    let repo = repo.trim_matches('-');
    if repo.is_empty() {
        return Err(format!(
            "no image name can be derived from the template id and the service \"{service}\""
        ));
    }
    Ok(format!("{repo}:latest"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ErrorKind;

    fn tpl() -> AppId {
        AppId::new("Simple Web", "1.0.0-tpl")
    }

    #[test]
    fn builds_become_images_in_the_instance_compose() {
        let text = "
services:
  web:
    build: ./web
    ports: ['8080:80']
  api:
    build:
      context: api/
      dockerfile: docker/Dockerfile.api
      args: {PORT: 81, MODE: prod, EMPTY: null}
  db:
    image: busybox
";
        let spec = BuildSpec::parse(text, &tpl()).unwrap();
        assert_eq!(spec.builds.len(), 2);
        let web = &spec.builds[0];
        assert_eq!(
            (
                web.service.as_str(),
                web.context.as_str(),
                web.dockerfile.as_str()
            ),
            ("web", "web", "Dockerfile")
        );
        assert_eq!(web.image, "simpleweb100-tpl-web:latest");
        let api = &spec.builds[1];
        assert_eq!(api.dockerfile_path(), "api/docker/Dockerfile.api");
        assert_eq!(
            api.args,
            vec![
                ("PORT".into(), "81".into()),
                ("MODE".into(), "prod".into()),
                ("EMPTY".into(), String::new())
            ]
        );
        let doc: Value = serde_norway::from_str(&spec.instance_compose).unwrap();
        assert_eq!(
            doc["services"]["web"]["image"],
            "simpleweb100-tpl-web:latest"
        );
        assert!(doc["services"]["web"].get("build").is_none());
        assert_eq!(doc["services"]["web"]["ports"][0], "8080:80");
        assert_eq!(doc["services"]["db"]["image"], "busybox");
        assert!(spec.check_files(|f| f == "web/Dockerfile").is_err());
        assert!(spec
            .check_files(|f| ["web/Dockerfile", "api/docker/Dockerfile.api"].contains(&f))
            .is_ok());
    }

    #[test]
    fn contexts_stay_inside_and_unknown_build_keys_are_refused() {
        for (text, needle) in [
            ("services: {a: {build: ../x}}", "\"..\""),
            ("services: {a: {build: /etc}}", "relative"),
            (
                "services: {a: {build: {context: ., target: x}}}",
                "build.target",
            ),
            ("services: {a: {image: x}}", "no service has a build"),
            ("services: {a: {build: [x]}}", "path or a mapping"),
            ("nope: 1", "no services"),
            ("services: [", "invalid YAML"),
        ] {
            let e = BuildSpec::parse(text, &tpl()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{text}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
        let spec = BuildSpec::parse("services: {a: {build: .}}", &tpl()).unwrap();
        assert_eq!(spec.builds[0].context, "");
        assert_eq!(spec.builds[0].dockerfile_path(), "Dockerfile");
    }

    #[test]
    fn image_names_are_valid_repository_names() {
        assert_eq!(
            image_for(&AppId::from("web:1-"), "Front_End").unwrap(),
            "web1-front-end:latest"
        );
        assert!(image_for(&AppId::from(":"), "_").is_err());
    }
}
