//! TransferProgress steps (COMPAT-NOTES section 1) and how the core's progress maps onto
//! them (docs/DECISIONS.md, "Live operations").

use serde::Serialize;

use super::super::apps::process_lines;
use crate::core::apps::import::{ImportProgress, ImportStep};
use crate::core::ops::images::LoadProgress;
use crate::core::{CoreError, ErrorKind};

/// TransferProgress.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Step {
    pub step_type: &'static str,
    pub success: bool,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_line: Option<serde_json::Value>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl Step {
    pub fn ok(step_type: &'static str, subject: Option<&str>, message: impl Into<String>) -> Self {
        Step {
            step_type,
            success: true,
            required: true,
            subject: subject.map(str::to_string),
            process_result: None,
            process_line: None,
            message: message.into(),
            details: None,
        }
    }

    pub fn fail(
        step_type: &'static str,
        subject: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Step {
            success: false,
            ..Step::ok(step_type, subject, message)
        }
    }

    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = Some(d.into());
        self
    }

    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NameValue<'a, T> {
    pub name: &'a str,
    pub value: T,
}

/// A percentage as the transcripts show it: "0.25", "100".
pub(super) fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return "100".into();
    }
    let p = (done.min(total) as f64) * 100.0 / (total as f64);
    let s = format!("{p:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn step_name(step: ImportStep) -> (&'static str, &'static str) {
    match step {
        ImportStep::CheckZip => ("CHECK_ZIP", "ZIP Archive"),
        ImportStep::ParseConfig => ("CHECK_CONFIG", "config.yml"),
        ImportStep::ParseCompose => ("CHECK_COMPOSE", "Compose file"),
        ImportStep::CheckDiskSpace => ("CHECK_DISK_SPACE", "Disk space"),
        ImportStep::LoadImages => ("LOAD_IMAGE", "Images"),
        ImportStep::StoreInstance => ("STORE_INSTANCE", "App"),
    }
}

/// Maps an import's progress onto steps. `images_announced` remembers whether the
/// "Loading images" announcement went out (a bundle without images has no image steps);
/// `cancelled`: the import was cancelled, so its failure is a CANCEL step.
pub(super) fn import_steps(
    p: ImportProgress,
    images_announced: &mut bool,
    cancelled: bool,
) -> Vec<Step> {
    match p {
        ImportProgress::Done {
            step: ImportStep::LoadImages,
            message,
        } => {
            let mut v = Vec::new();
            if *images_announced {
                v.push(Step::ok("LOAD_IMAGE", Some("Images"), message));
            }
            v.push(Step::ok("ANNOUNCEMENT", Some("Import"), "Storing App"));
            v
        }
        ImportProgress::Done { step, message } => {
            let (name, subject) = step_name(step);
            vec![Step::ok(name, Some(subject), message)]
        }
        ImportProgress::Failed { step, message } => {
            let (name, subject) = step_name(step);
            let name = if cancelled { "CANCEL" } else { name };
            vec![Step::fail(name, Some(subject), message)]
        }
        ImportProgress::ImageStarted { file, .. } => {
            let mut v = Vec::new();
            if !std::mem::replace(images_announced, true) {
                v.push(Step::ok("ANNOUNCEMENT", Some("Import"), "Loading images"));
            }
            v.push(Step::ok("LOAD_IMAGE", Some(&file), "0").details("0"));
            v
        }
        // The last count (all bytes) is followed by ImageLoaded or Failed: skip it.
        ImportProgress::ImageBytes { file, done, size } if done < size => {
            vec![Step::ok("LOAD_IMAGE", Some(&file), percent(done, size)).details(done.to_string())]
        }
        ImportProgress::ImageBytes { .. } => Vec::new(),
        ImportProgress::ImageLoaded { file, references } => {
            vec![Step::ok("LOAD_IMAGE", Some(&file), "100").details(references.join(", "))]
        }
    }
}

/// The step of an image load's byte count: the first (0) and those in between; the last
/// (all bytes) is followed by the result's step.
pub(super) fn load_step(p: LoadProgress) -> Option<Step> {
    let step = |message: String| {
        Step::ok("LOAD_IMAGE", Some("Image"), message).details(p.done.to_string())
    };
    match p.total {
        _ if p.done == 0 => Some(step("0".into())),
        Some(total) if p.done < total => Some(step(percent(p.done, total))),
        _ => None,
    }
}

/// A PROCESS_PROGRESS step (Required false) carrying one output line.
pub(super) fn line_step(l: String) -> Step {
    let lines = [l];
    let pl = process_lines(&lines);
    let mut s = Step::ok("PROCESS_PROGRESS", None, "").optional();
    s.process_line = pl.first().and_then(|p| serde_json::to_value(p).ok());
    s.message = lines[0].trim_end().to_string();
    s
}

/// The step a start or stop that did not complete ends with (`doing`: "Starting App x").
pub(super) fn failed_step(e: CoreError, doing: &str) -> Step {
    match e.kind() {
        ErrorKind::Cancelled => Step::fail("CANCEL", None, e.to_string()),
        _ => Step::fail("ANNOUNCEMENT", None, format!("{doing} failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_read_like_the_transcript() {
        assert_eq!(percent(130966, 51893840), "0.25");
        assert_eq!(percent(51893840, 51893840), "100");
        assert_eq!(percent(1, 2), "50");
        assert_eq!(percent(0, 10), "0");
        assert_eq!(percent(5, 0), "100");
    }

    #[test]
    fn steps_serialise_pascal_case_without_empty_fields() {
        let s = Step::ok("DATA_TRANSFER", None, "0.25").details("130966");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"StepType":"DATA_TRANSFER","Success":true,"Required":true,"Message":"0.25","Details":"130966"}"#
        );
    }

    #[test]
    fn import_progress_maps_to_named_steps() {
        let mut announced = false;
        let steps = import_steps(
            ImportProgress::ImageStarted {
                file: "docker/a.tar".into(),
                size: 10,
            },
            &mut announced,
            false,
        );
        assert_eq!(steps[0].step_type, "ANNOUNCEMENT");
        assert_eq!(steps[1].step_type, "LOAD_IMAGE");
        assert!(announced);
        let steps = import_steps(
            ImportProgress::Failed {
                step: ImportStep::LoadImages,
                message: "x".into(),
            },
            &mut announced,
            true,
        );
        assert_eq!(steps[0].step_type, "CANCEL");
        assert!(!steps[0].success && steps[0].required);
    }

    #[test]
    fn a_failed_operation_ends_with_cancel_or_its_announcement() {
        let cancelled = failed_step(
            CoreError::Cancelled("stopped again".into()),
            "Starting App a",
        );
        assert_eq!((cancelled.step_type, cancelled.success), ("CANCEL", false));
        let e = crate::core::compose::ComposeError::Yaml {
            message: "bad".into(),
        };
        let failed = failed_step(CoreError::from(e), "Starting App a");
        assert_eq!(failed.step_type, "ANNOUNCEMENT");
        assert!(
            failed.message.starts_with("Starting App a failed: "),
            "{}",
            failed.message
        );
    }

    #[test]
    fn load_progress_maps_to_steps_without_the_last_count() {
        let first = load_step(LoadProgress {
            done: 0,
            total: Some(8),
        });
        assert_eq!(first.unwrap().message, "0");
        let mid = load_step(LoadProgress {
            done: 2,
            total: Some(8),
        })
        .unwrap();
        assert_eq!(
            (mid.message.as_str(), mid.details.as_deref()),
            ("25", Some("2"))
        );
        assert!(load_step(LoadProgress {
            done: 8,
            total: Some(8)
        })
        .is_none());
    }
}
