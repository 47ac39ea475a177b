//! GuardDuty: ListDetectors → ListFindings (updatedAt window, archived and unarchived, pages of
//! 50) → GetFindings (batches of 50), one page at a time.
//!
//! Service-model facts: ListFindings maxResults ≤ 50; `updatedAt` criteria are epoch
//! milliseconds; leaving `service.archived` out returns archived and unarchived findings;
//! GetFindings takes at most 50 ids. One detector per account and region.
//!
//! GetFindings' response body is captured as received (an interceptor keeps the bytes the SDK
//! read), so each finding's JSON reaches the lake whole, with members the SDK does not know,
//! and a finding the SDK cannot parse is still there to be quarantined with a reason.

use std::sync::{Arc, Mutex};

use aws_sdk_guardduty::types::{Condition, DetectorStatus, FindingCriteria, OrderBy, SortCriteria};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::AfterDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{classify, TargetFailure, TargetStatus};

/// ListFindings and GetFindings page limit (service model).
pub const PAGE_SIZE: i32 = 50;

/// The updatedAt window of a pull, epoch milliseconds, `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// One finding as received: its JSON text, exactly, and its parse.
#[derive(Debug)]
pub struct RawFinding {
    pub raw: String,
    pub value: Result<serde_json::Value, String>,
}

/// Keeps the body bytes of a successful response, for the operation it is attached to.
#[derive(Debug, Clone, Default)]
struct CaptureBody(Arc<Mutex<Option<bytes::Bytes>>>);

impl Intercept for CaptureBody {
    fn name(&self) -> &'static str {
        "guardlake::CaptureBody"
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response();
        if response.status().is_success() {
            if let Some(body) = response.body().bytes() {
                if let Ok(mut slot) = self.0.lock() {
                    *slot = Some(bytes::Bytes::copy_from_slice(body));
                }
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct GetFindingsBody<'a> {
    #[serde(borrow, default)]
    findings: Vec<&'a RawValue>,
}

/// The detector of the account in the client's region, or why there is none to read.
pub async fn detector_id(client: &aws_sdk_guardduty::Client) -> Result<String, TargetFailure> {
    let detectors = client
        .list_detectors()
        .send()
        .await
        .map_err(|e| classify("guardduty:ListDetectors", &e))?;
    let Some(id) = detectors.detector_ids().first().cloned() else {
        return Err(TargetFailure::new(
            TargetStatus::NotEnabled,
            "NoDetector",
            "GuardDuty has no detector in this region",
        ));
    };
    let detector = client
        .get_detector()
        .detector_id(&id)
        .send()
        .await
        .map_err(|e| classify("guardduty:GetDetector", &e))?;
    if detector.status() == Some(&DetectorStatus::Disabled) {
        return Err(TargetFailure::new(
            TargetStatus::NotEnabled,
            "DetectorDisabled",
            format!("detector {id} is disabled"),
        ));
    }
    Ok(id)
}

/// Pulls every finding updated inside `window`, handing each GetFindings page to `on_page`.
pub async fn collect_findings(
    client: &aws_sdk_guardduty::Client,
    detector_id: &str,
    window: Window,
    mut on_page: impl FnMut(Vec<RawFinding>) -> Result<(), TargetFailure>,
) -> Result<(), TargetFailure> {
    let criteria = FindingCriteria::builder()
        .criterion(
            "updatedAt",
            Condition::builder()
                .greater_than_or_equal(window.start_ms)
                .less_than(window.end_ms)
                .build(),
        )
        .build();
    let sort = SortCriteria::builder()
        .attribute_name("updatedAt")
        .order_by(OrderBy::Asc)
        .build();
    let mut pages = client
        .list_findings()
        .detector_id(detector_id)
        .finding_criteria(criteria)
        .sort_criteria(sort)
        .max_results(PAGE_SIZE)
        .into_paginator()
        .send();
    while let Some(page) = pages
        .try_next()
        .await
        .map_err(|e| classify("guardduty:ListFindings", &e))?
    {
        for ids in page.finding_ids().chunks(PAGE_SIZE as usize) {
            if ids.is_empty() {
                continue;
            }
            on_page(get_findings(client, detector_id, ids).await?)?;
        }
    }
    Ok(())
}

async fn get_findings(
    client: &aws_sdk_guardduty::Client,
    detector_id: &str,
    ids: &[String],
) -> Result<Vec<RawFinding>, TargetFailure> {
    let capture = CaptureBody::default();
    let result = client
        .get_findings()
        .detector_id(detector_id)
        .set_finding_ids(Some(ids.to_vec()))
        .customize()
        .interceptor(capture.clone())
        .send()
        .await;
    let body = capture.0.lock().ok().and_then(|mut slot| slot.take());
    match (result, body) {
        // A body the SDK could not parse still holds the findings; they are judged one by one.
        (_, Some(body)) => split_findings(&body),
        (Err(err), None) => Err(classify("guardduty:GetFindings", &err)),
        (Ok(_), None) => Err(TargetFailure::new(
            TargetStatus::Error,
            "NoBody",
            "GetFindings answered without a body",
        )),
    }
}

/// Splits a GetFindings body into findings, each with its exact JSON text.
pub fn split_findings(body: &[u8]) -> Result<Vec<RawFinding>, TargetFailure> {
    let parsed: GetFindingsBody<'_> = serde_json::from_slice(body).map_err(|e| {
        TargetFailure::new(
            TargetStatus::Error,
            "MalformedResponse",
            format!("GetFindings body is not JSON: {e}"),
        )
    })?;
    Ok(parsed
        .findings
        .into_iter()
        .map(|raw| RawFinding {
            raw: raw.get().to_owned(),
            value: serde_json::from_str(raw.get()).map_err(|e| e.to_string()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_each_finding_text_exactly() {
        let body =
            br#"{"findings":[{"id":"a","x":{"y":1}} , {"id":"b","new":[true]}],"unprocessed":[]}"#;
        let findings = split_findings(body).unwrap();
        assert_eq!(
            findings.iter().map(|f| f.raw.as_str()).collect::<Vec<_>>(),
            [r#"{"id":"a","x":{"y":1}}"#, r#"{"id":"b","new":[true]}"#]
        );
        assert!(split_findings(b"not json").is_err());
    }
}
