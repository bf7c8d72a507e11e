//! "Transfer Technology - Templates": importing, listing and removing app templates,
//! building their images (a server-sent event stream) and instantiating them into apps.
//! The behaviour is the core's (`core::templates`); see docs/DECISIONS.md ("Templates").

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::StatusCode;
use serde_json::json;

use super::apps::{id_param, instance, op_start, upload_import, with_task, AppJson};
use super::sse::frame;
use super::{Call, Handler, Problem, Reply};
use crate::api::http;
use crate::api::router::Routes;
use crate::core::apps::bundle::BundleKind;
use crate::core::apps::import::ImportOptions;
use crate::core::apps::AppId;
use crate::core::ops::{Event, Operation};
use crate::core::templates::build::{BuildProgress, Built};
use crate::core::templates::TemplateView;
use crate::core::CoreResult;

pub fn register(r: &mut Routes<Handler>) {
    super::route_table!(r;
        "/transfer/templates" => POST import, GET list;
        "/transfer/templates/{id}" => GET get, DELETE remove;
        "/transfer/templates/{id}/build" => GET build;
        "/transfer/templates/{id}/instantiate" => POST instantiate;
    );
}

/// A Template: the stored bundle's id and config, whether it is busy and built, and the
/// image each built service gets.
fn template(v: &TemplateView) -> serde_json::Value {
    let services: Vec<serde_json::Value> = v
        .services
        .iter()
        .map(|s| json!({"Name": s.service, "Image": s.image, "Built": s.built}))
        .collect();
    json!({
        "Id": v.template.id().as_str(),
        "App": AppJson::of(&v.template),
        "Busy": v.busy,
        "Built": v.built(),
        "Services": services,
        "LastModified": v.template.record.imported,
    })
}

fn template_id(c: &Call) -> Result<AppId, Problem> {
    id_param(c, "template")
}

/// `POST /transfer/templates`: multipart with the template ZIP in the field `app`, as
/// `POST /transfer/import` takes an app (`?replace`, `?cancel_id` alike).
async fn import(c: Call) -> Reply {
    let (core, stored, task) = upload_import(c, |core, source, options, start| {
        core.import_bundle(BundleKind::Template, source, options, start)
    })
    .await?;
    let view = core.templates()?.get(stored.id()).await?;
    Ok(with_task(
        http::json(StatusCode::OK, &template(&view)),
        &task,
    ))
}

async fn list(c: Call) -> Reply {
    let views = c.core.templates()?.list().await?;
    if views.is_empty() {
        return Ok(http::empty(StatusCode::NO_CONTENT));
    }
    let body: Vec<_> = views.iter().map(template).collect();
    Ok(http::json(StatusCode::OK, &body))
}

async fn get(c: Call) -> Reply {
    let view = c.core.templates()?.get(&template_id(&c)?).await?;
    Ok(http::json(StatusCode::OK, &template(&view)))
}

/// `?remove_images` (default true): the images the template built or brought go too, unless
/// a stored app uses them.
async fn remove(c: Call) -> Reply {
    let id = template_id(&c)?;
    let remove_images = c.bool("remove_images", true)?;
    let in_use = c.core.apps.images_in_use()?;
    c.core
        .templates()?
        .remove(&id, remove_images, &in_use)
        .await?;
    Ok(http::empty(StatusCode::OK))
}

/// `POST /transfer/templates/{id}/instantiate` (`?replace`, `?cancel_id`): builds what is
/// not built yet, stores the app and answers its AppInstance.
async fn instantiate(c: Call) -> Reply {
    let id = template_id(&c)?;
    let options = ImportOptions {
        replace: c.bool("replace", false)?,
    };
    let op = c.core.instantiate_template(id, options, &op_start(&c))?;
    let task = op.id().to_string();
    let stored = op.finish().await?;
    let view = c.core.apps.get(stored.id()).await?;
    Ok(with_task(
        http::json(StatusCode::OK, &instance(&view)),
        &task,
    ))
}

/// `GET /transfer/templates/{id}/build`: builds every service, reporting as server-sent
/// events on the channels `status`, `progress` (build output lines) and `failure`; the
/// stream ends with the build. The operation's id is in `X-Cancel-Id` and the first event.
async fn build(c: Call) -> Reply {
    let id = template_id(&c)?;
    let op = c.core.build_template(id.clone(), &op_start(&c))?;
    let task = op.id().to_string();
    let first = frame(
        "status",
        json!({"Status": "Started", "Template": id.as_str(), "CancelId": task})
            .to_string()
            .as_bytes(),
    );
    let stream = futures_util::stream::unfold(BuildFeed::new(first, op), next_frame).boxed();
    let body = StreamBody::new(stream).boxed_unsync();
    let mut resp = http::with_type(StatusCode::OK, "text/event-stream", body);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(with_task(resp, &task))
}

type BuildOp = Operation<BuildProgress, Vec<Built>>;

struct BuildFeed {
    first: Option<Bytes>,
    op: Option<BuildOp>,
}

impl BuildFeed {
    fn new(first: Bytes, op: BuildOp) -> Self {
        Self {
            first: Some(first),
            op: Some(op),
        }
    }
}

async fn next_frame(
    mut feed: BuildFeed,
) -> Option<(Result<Frame<Bytes>, std::io::Error>, BuildFeed)> {
    if let Some(first) = feed.first.take() {
        return Some((Ok(Frame::data(first)), feed));
    }
    let op = feed.op.as_mut()?;
    let bytes = match op.next().await {
        Event::Progress(p) => progress_frame(&p),
        Event::Done(result) => {
            feed.op = None;
            done_frame(result)
        }
    };
    Some((Ok(Frame::data(bytes)), feed))
}

fn progress_frame(p: &BuildProgress) -> Bytes {
    let (channel, data) = match p {
        BuildProgress::Started { service, image } => (
            "status",
            json!({"Status": "Building", "Service": service, "Image": image}),
        ),
        BuildProgress::Line { service, line } => {
            ("progress", json!({"Service": service, "Line": line}))
        }
        BuildProgress::Built { service, image, id } => (
            "status",
            json!({"Status": "Built", "Service": service, "Image": image, "ImageId": id}),
        ),
    };
    frame(channel, data.to_string().as_bytes())
}

fn done_frame(result: CoreResult<Vec<Built>>) -> Bytes {
    match result {
        Ok(built) => {
            let images: Vec<&str> = built.iter().map(|b| b.image.as_str()).collect();
            let data = json!({"Status": "Succeeded", "Images": images});
            frame("status", data.to_string().as_bytes())
        }
        Err(e) => {
            let problem = Problem::from(e);
            let data = json!({"Status": problem.status.as_u16(), "Message": problem.detail});
            frame("failure", data.to_string().as_bytes())
        }
    }
}
