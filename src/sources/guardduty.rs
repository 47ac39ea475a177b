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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_sdk_guardduty::types::{Condition, DetectorStatus, FindingCriteria, OrderBy, SortCriteria};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    AfterDeserializationInterceptorContextRef, BeforeDeserializationInterceptorContextMut,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::warn;

use crate::error::{classify, TargetFailure, TargetStatus};
use crate::normalize::drift::{check_text, Drift};
use crate::normalize::finding_text::{normalize_str, Unreadable};
use crate::normalize::guardduty::FindingVersion;

/// ListFindings and GetFindings page limit (service model).
pub const PAGE_SIZE: i32 = 50;

/// The updatedAt window of a pull, epoch milliseconds, `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// The largest finding kept. A GuardDuty finding also travels as an EventBridge event (at most
/// 256 KiB), so this leaves room; a larger one is quarantined by its size, its text not kept.
pub const MAX_FINDING_BYTES: usize = 1 << 20;

/// The largest GetFindings body read. A larger answer (its Content-Length says so before it is
/// read) is dropped unread and its findings are asked for one by one.
pub const MAX_BODY_BYTES: u64 = 16 << 20;

/// One finding as received: its JSON text, exactly, and its parse (or why it cannot be used).
#[derive(Debug)]
pub struct RawFinding {
    /// The exact text; empty when the finding was over [`MAX_FINDING_BYTES`].
    pub raw: String,
    /// The size of the finding as received, in bytes.
    pub raw_bytes: usize,
    /// The id asked for, when a finding was fetched alone.
    pub requested_id: Option<String>,
    /// Why the finding cannot be read at all (over the size limit, not UTF-8); whether its text
    /// is JSON is judged when it is normalized.
    pub problem: Option<String>,
}

/// A finding read off the async runtime ([`read_page`]): its row or why it has none, the
/// members its owner is judged by, and how it differs from the known shape.
#[derive(Debug)]
pub struct ReadFinding {
    pub finding: RawFinding,
    pub row: Result<FindingVersion, Unreadable>,
    pub who: Who,
    pub drift: Vec<Drift>,
}

/// The members a finding names its owner and type with, where they are strings (`accountId` and
/// `type` are empty otherwise).
#[derive(Debug, Default)]
pub struct Who {
    pub id: Option<String>,
    pub account_id: String,
    pub region: Option<String>,
    pub finding_type: String,
}

impl Who {
    fn of_row(row: &FindingVersion) -> Self {
        Self {
            id: Some(row.id.clone()),
            account_id: row.account_id.clone(),
            region: Some(row.region.clone()),
            finding_type: row.finding_type.clone(),
        }
    }

    /// From the text of a finding that did not normalize (rare: read as a value).
    fn of_text(raw: &str) -> Self {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(raw) else {
            return Self::default();
        };
        let text = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        Self {
            id: text("id"),
            account_id: text("accountId").unwrap_or_default(),
            region: text("region"),
            finding_type: text("type").unwrap_or_default(),
        }
    }
}

/// Reads a page of findings: normalizes each (one pass over its text) and compares it with the
/// known shape. CPU work: callers run it with [`crate::cpu::run`].
pub fn read_page(page: Vec<RawFinding>) -> Vec<ReadFinding> {
    page.into_iter().map(read_finding).collect()
}

fn read_finding(finding: RawFinding) -> ReadFinding {
    if let Some(problem) = &finding.problem {
        return ReadFinding {
            row: Err(Unreadable::Unusable(problem.clone())),
            who: Who::default(),
            drift: Vec::new(),
            finding,
        };
    }
    let row = normalize_str(&finding.raw);
    let who = match &row {
        Ok(row) => Who::of_row(row),
        Err(_) => Who::of_text(&finding.raw),
    };
    let drift = match &row {
        Err(Unreadable::NotJson(_) | Unreadable::Unusable(_)) => Vec::new(),
        _ => check_text(&finding.raw),
    };
    ReadFinding {
        finding,
        row,
        who,
        drift,
    }
}

impl RawFinding {
    /// A finding from its bytes as they sit in the body: over the size limit or not UTF-8, it
    /// carries the reason as its problem.
    fn from_bytes(bytes: &[u8]) -> Self {
        if bytes.len() > MAX_FINDING_BYTES {
            return Self {
                raw: String::new(),
                raw_bytes: bytes.len(),
                requested_id: None,
                problem: Some(format!(
                    "the finding is {} bytes, over the limit of 1 MiB (MAX_FINDING_BYTES); its text was not kept",
                    bytes.len()
                )),
            };
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Self {
                raw: text.to_owned(),
                raw_bytes: bytes.len(),
                requested_id: None,
                problem: None,
            },
            Err(e) => Self {
                raw: String::from_utf8_lossy(bytes).into_owned(),
                raw_bytes: bytes.len(),
                requested_id: None,
                problem: Some(format!(
                    "not UTF-8 at byte {} (kept with U+FFFD for the bad bytes)",
                    e.valid_up_to()
                )),
            },
        }
    }
}

/// What the interceptor saw of a response.
#[derive(Debug, Clone, Default)]
enum Captured {
    #[default]
    Nothing,
    Body(bytes::Bytes),
    /// Content-Length over [`MAX_BODY_BYTES`]: the body was not read.
    TooLarge(u64),
}

/// Keeps the body bytes of a successful response, for the operation it is attached to, and
/// refuses to read one over [`MAX_BODY_BYTES`].
#[derive(Debug, Clone, Default)]
struct CaptureBody(Arc<Mutex<Captured>>);

impl Intercept for CaptureBody {
    fn name(&self) -> &'static str {
        "guardlake::CaptureBody"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.parse::<u64>().ok());
        match length {
            Some(length) if length > MAX_BODY_BYTES && response.status().is_success() => {
                // Dropped unread: the connection is closed instead of reused.
                *response.body_mut() = SdkBody::empty();
                if let Ok(mut slot) = self.0.lock() {
                    *slot = Captured::TooLarge(length);
                }
                Err(format!("GetFindings answered {length} bytes, over {MAX_BODY_BYTES}").into())
            }
            _ => Ok(()),
        }
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
                    *slot = if body.len() as u64 > MAX_BODY_BYTES {
                        Captured::TooLarge(body.len() as u64)
                    } else {
                        Captured::Body(bytes::Bytes::copy_from_slice(body))
                    };
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

/// A detector as GetDetector describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    pub id: String,
    pub status: Option<String>,
    pub frequency: Option<String>,
    pub features: Vec<Feature>,
}

/// A detector feature (GetDetector / GetMemberDetectors `Features`) and its additional
/// configurations, names and statuses as the service spells them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional: Vec<(String, String)>,
}

impl Detector {
    pub fn is_disabled(&self) -> bool {
        self.status.as_deref() == Some(DetectorStatus::Disabled.as_str())
    }

    /// Whether its findings can be read: a disabled detector is the target's failure.
    pub fn readable(&self) -> Result<(), TargetFailure> {
        if !self.is_disabled() {
            return Ok(());
        }
        Err(TargetFailure::new(
            TargetStatus::NotEnabled,
            "DetectorDisabled",
            format!("detector {} is disabled", self.id),
        ))
    }
}

/// The features of a GetDetector or GetMemberDetectors answer (two SDK types, one shape).
macro_rules! features {
    ($list:expr) => {
        $list
            .iter()
            .map(|f| {
                let name = (f.name().map(|n| n.as_str()), f.status().map(|s| s.as_str()));
                let additional = f.additional_configuration().iter();
                feature(
                    name,
                    additional
                        .map(|a| (a.name().map(|n| n.as_str()), a.status().map(|s| s.as_str()))),
                )
            })
            .collect::<Vec<Feature>>()
    };
}

/// A feature from the service's (name, status) and its additional configurations'.
fn feature<'a>(
    (name, status): (Option<&'a str>, Option<&'a str>),
    additional: impl Iterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> Feature {
    let text = |v: Option<&str>| v.unwrap_or_default().to_owned();
    Feature {
        name: text(name),
        status: text(status),
        additional: additional.map(|(n, s)| (text(n), text(s))).collect(),
    }
}

/// Whether Runtime Monitoring (or its EKS-only predecessor) is on among `features`.
pub fn runtime_on(features: &[Feature]) -> bool {
    features.iter().any(|f| {
        (f.name == "RUNTIME_MONITORING" || f.name == "EKS_RUNTIME_MONITORING")
            && f.status == "ENABLED"
    })
}

/// The detector of the account in the client's region (disabled or not), or why there is none.
pub async fn detector(client: &aws_sdk_guardduty::Client) -> Result<Detector, TargetFailure> {
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
    let answer = client
        .get_detector()
        .detector_id(&id)
        .send()
        .await
        .map_err(|e| classify("guardduty:GetDetector", &e))?;
    let features = features!(answer.features());
    Ok(Detector {
        id,
        status: answer.status().map(|s| s.as_str().to_owned()),
        frequency: answer
            .finding_publishing_frequency()
            .map(|f| f.as_str().to_owned()),
        features,
    })
}

/// An administrator's members in its region (ListMembers, associated or not): account →
/// (RelationshipStatus, the member's detector id).
pub async fn members(
    client: &aws_sdk_guardduty::Client,
    detector_id: &str,
) -> Result<BTreeMap<String, (String, Option<String>)>, TargetFailure> {
    let mut found = BTreeMap::new();
    let mut pages = client
        .list_members()
        .detector_id(detector_id)
        .only_associated("false")
        .max_results(50)
        .into_paginator()
        .send();
    while let Some(page) = pages
        .next()
        .await
        .transpose()
        .map_err(|e| classify("guardduty:ListMembers", &e))?
    {
        for member in page.members() {
            if let Some(account) = member.account_id() {
                let status = member.relationship_status().unwrap_or_default().to_owned();
                found.insert(
                    account.to_owned(),
                    (status, member.detector_id().map(str::to_owned)),
                );
            }
        }
    }
    Ok(found)
}

/// Members' features (GetMemberDetectors, 50 accounts a call).
pub async fn member_features(
    client: &aws_sdk_guardduty::Client,
    detector_id: &str,
    accounts: &[String],
) -> Result<BTreeMap<String, Vec<Feature>>, TargetFailure> {
    let mut found = BTreeMap::new();
    for batch in accounts.chunks(50) {
        let answer = client
            .get_member_detectors()
            .detector_id(detector_id)
            .set_account_ids(Some(batch.to_vec()))
            .send()
            .await
            .map_err(|e| classify("guardduty:GetMemberDetectors", &e))?;
        for member in answer.member_data_source_configurations() {
            let features = features!(member.features());
            if let Some(account) = member.account_id() {
                found.insert(account.to_owned(), features);
            }
        }
    }
    Ok(found)
}

/// Runtime Monitoring coverage of a detector (of one member's resources when `account` is
/// given): counts by coverage status and by resource type.
pub async fn runtime(
    client: &aws_sdk_guardduty::Client,
    detector_id: &str,
    account: Option<&str>,
) -> Result<Runtime, TargetFailure> {
    use aws_sdk_guardduty::types::{
        CoverageFilterCondition, CoverageFilterCriteria, CoverageFilterCriterion,
        CoverageFilterCriterionKey, CoverageStatisticsType,
    };
    let mut call = client
        .get_coverage_statistics()
        .detector_id(detector_id)
        .statistics_type(CoverageStatisticsType::CountByCoverageStatus)
        .statistics_type(CoverageStatisticsType::CountByResourceType);
    if let Some(account) = account {
        let criterion = CoverageFilterCriterion::builder()
            .criterion_key(CoverageFilterCriterionKey::AccountId)
            .filter_condition(CoverageFilterCondition::builder().equals(account).build())
            .build();
        call = call.filter_criteria(
            CoverageFilterCriteria::builder()
                .filter_criterion(criterion)
                .build(),
        );
    }
    let answer = call
        .send()
        .await
        .map_err(|e| classify("guardduty:GetCoverageStatistics", &e))?;
    let stats = answer.coverage_statistics();
    let counts = |map: Option<BTreeMap<String, i64>>| map.unwrap_or_default();
    Ok(Runtime {
        by_status: counts(
            stats
                .and_then(|s| s.count_by_coverage_status())
                .map(|m| m.iter().map(|(k, v)| (k.as_str().to_owned(), *v)).collect()),
        ),
        by_type: counts(
            stats
                .and_then(|s| s.count_by_resource_type())
                .map(|m| m.iter().map(|(k, v)| (k.as_str().to_owned(), *v)).collect()),
        ),
    })
}

/// Runtime Monitoring agents, counted by coverage status (HEALTHY, UNHEALTHY) and by resource
/// type (EC2, ECS, EKS).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    pub by_status: BTreeMap<String, i64>,
    pub by_type: BTreeMap<String, i64>,
}

/// The findings of a detector updated inside a window, a GetFindings page at a time, oldest
/// update first: ListFindings pages are read as their ids are used up.
pub struct Pages<'a> {
    client: &'a aws_sdk_guardduty::Client,
    detector_id: &'a str,
    window: Window,
    /// The next ListFindings page (None: the first; Some("") : none left).
    token: Option<String>,
    listed: std::collections::VecDeque<String>,
}

impl<'a> Pages<'a> {
    pub fn new(
        client: &'a aws_sdk_guardduty::Client,
        detector_id: &'a str,
        window: Window,
    ) -> Self {
        Self {
            client,
            detector_id,
            window,
            token: None,
            listed: std::collections::VecDeque::new(),
        }
    }

    /// The next page of findings (at most [`PAGE_SIZE`]), or None when the window is read.
    pub async fn next(&mut self) -> Result<Option<Vec<RawFinding>>, TargetFailure> {
        loop {
            if !self.listed.is_empty() {
                let n = self.listed.len().min(PAGE_SIZE as usize);
                let ids: Vec<String> = self.listed.drain(..n).collect();
                return get_findings(self.client, self.detector_id, &ids)
                    .await
                    .map(Some);
            }
            if self.token.as_deref() == Some("") {
                return Ok(None);
            }
            let page = self
                .client
                .list_findings()
                .detector_id(self.detector_id)
                .finding_criteria(criteria(self.window))
                .sort_criteria(
                    SortCriteria::builder()
                        .attribute_name("updatedAt")
                        .order_by(OrderBy::Asc)
                        .build(),
                )
                .max_results(PAGE_SIZE)
                .set_next_token(self.token.take())
                .send()
                .await
                .map_err(|e| classify("guardduty:ListFindings", &e))?;
            self.listed.extend(page.finding_ids().iter().cloned());
            self.token = Some(page.next_token().unwrap_or_default().to_owned());
        }
    }
}

/// `updatedAt` inside the window.
fn criteria(window: Window) -> FindingCriteria {
    FindingCriteria::builder()
        .criterion(
            "updatedAt",
            Condition::builder()
                .greater_than_or_equal(window.start_ms)
                .less_than(window.end_ms)
                .build(),
        )
        .build()
}

/// One GetFindings call; an answer over [`MAX_BODY_BYTES`] is asked for again one id at a
/// time, and a single finding that is still over it is quarantined by its id and size.
async fn get_findings(
    client: &aws_sdk_guardduty::Client,
    detector_id: &str,
    ids: &[String],
) -> Result<Vec<RawFinding>, TargetFailure> {
    match get_findings_once(client, detector_id, ids).await? {
        Ok(findings) => Ok(findings),
        Err(length) if ids.len() > 1 => {
            warn!(
                ids = ids.len(),
                bytes = length,
                "GetFindings answer over the size limit; asking for its findings one by one."
            );
            let mut findings = Vec::with_capacity(ids.len());
            for id in ids {
                match get_findings_once(client, detector_id, std::slice::from_ref(id)).await? {
                    Ok(mut one) => {
                        for finding in &mut one {
                            finding.requested_id = Some(id.clone());
                        }
                        findings.extend(one);
                    }
                    Err(length) => findings.push(oversized(id, length)),
                }
            }
            Ok(findings)
        }
        Err(length) => Ok(ids.iter().map(|id| oversized(id, length)).collect()),
    }
}

fn oversized(id: &str, length: u64) -> RawFinding {
    RawFinding {
        raw: String::new(),
        raw_bytes: length as usize,
        requested_id: Some(id.to_owned()),
        problem: Some(format!(
            "GetFindings answered {length} bytes for this finding alone, over the limit of 16 MiB (MAX_BODY_BYTES); it was not read"
        )),
    }
}

/// The findings of one call, or `Err(bytes)` when the answer was over the size limit.
async fn get_findings_once(
    client: &aws_sdk_guardduty::Client,
    detector_id: &str,
    ids: &[String],
) -> Result<Result<Vec<RawFinding>, u64>, TargetFailure> {
    let capture = CaptureBody::default();
    let result = client
        .get_findings()
        .detector_id(detector_id)
        .set_finding_ids(Some(ids.to_vec()))
        .customize()
        .interceptor(capture.clone())
        .send()
        .await;
    let captured = capture
        .0
        .lock()
        .map(|mut slot| std::mem::take(&mut *slot))
        .unwrap_or_default();
    match (result, captured) {
        (_, Captured::TooLarge(length)) => Ok(Err(length)),
        // A body the SDK could not parse still holds the findings; they are judged one by one.
        (_, Captured::Body(body)) => split_findings(&body).map(Ok),
        (Err(err), Captured::Nothing) => Err(classify("guardduty:GetFindings", &err)),
        (Ok(_), Captured::Nothing) => Err(TargetFailure::new(
            TargetStatus::Error,
            "NoBody",
            "GetFindings answered without a body",
        )),
    }
}

/// Splits a GetFindings body into findings, each with its exact JSON text. A body that is not
/// valid JSON as a whole (one finding with invalid UTF-8 or a raw control character) is split
/// by its structure instead, so the bad finding is quarantined and the others are kept.
pub fn split_findings(body: &[u8]) -> Result<Vec<RawFinding>, TargetFailure> {
    if let Ok(parsed) = serde_json::from_slice::<GetFindingsBody<'_>>(body) {
        return Ok(parsed
            .findings
            .into_iter()
            .map(|raw| RawFinding::from_bytes(raw.get().as_bytes()))
            .collect());
    }
    let items = split_findings_array(body).ok_or_else(|| {
        let detail = serde_json::from_slice::<serde::de::IgnoredAny>(body)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no findings array".into());
        TargetFailure::new(
            TargetStatus::Error,
            "MalformedResponse",
            format!("GetFindings body cannot be split into findings: {detail}"),
        )
    })?;
    Ok(items.into_iter().map(RawFinding::from_bytes).collect())
}

/// The items of the top-level `"findings"` array, found by structure alone (strings, escapes,
/// brackets), whatever bytes the strings hold. `None` when the body has no such array or its
/// brackets do not balance.
fn split_findings_array(body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut items = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut string_start = 0;
    let mut last_key: Option<&[u8]> = None;
    let mut in_findings = false;
    let mut found = false;
    let mut item_start: Option<usize> = None;
    for (i, &byte) in body.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
                if depth == 1 {
                    last_key = Some(&body[string_start + 1..i]);
                }
            }
            continue;
        }
        let at_item = in_findings && depth == 2;
        match byte {
            b'"' => {
                in_string = true;
                string_start = i;
                if at_item && item_start.is_none() {
                    item_start = Some(i);
                }
            }
            b'{' | b'[' => {
                if at_item && item_start.is_none() {
                    item_start = Some(i);
                }
                if depth == 1 && byte == b'[' && last_key == Some(&b"findings"[..]) {
                    in_findings = true;
                    found = true;
                }
                depth += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if in_findings && depth == 1 {
                    if let Some(start) = item_start.take() {
                        items.push(body[start..i].trim_ascii());
                    }
                    in_findings = false;
                }
            }
            b',' if at_item => {
                if let Some(start) = item_start.take() {
                    items.push(body[start..i].trim_ascii());
                }
            }
            b' ' | b'\t' | b'\r' | b'\n' | b':' | b',' => {}
            _ => {
                if at_item && item_start.is_none() {
                    item_start = Some(i);
                }
            }
        }
    }
    (found && depth == 0 && !in_string).then_some(items)
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

    #[test]
    fn one_bad_finding_is_split_out_and_the_others_kept() {
        let mut body = br#"{"findings":[{"id":"a","t":"[x]\"}"}, {"id":"b","bad":""#.to_vec();
        body.extend_from_slice(b"\xff\x00");
        body.extend_from_slice(br#""},{"id":"c","n":[1,{"d":2}]}],"unprocessedFindings":[]}"#);
        let findings = split_findings(&body).unwrap();
        assert_eq!(findings.len(), 3);
        assert_eq!(findings[0].raw, r#"{"id":"a","t":"[x]\"}"}"#);
        assert!(findings[0].problem.is_none());
        assert!(findings[1]
            .problem
            .as_ref()
            .unwrap()
            .contains("not UTF-8 at byte 17"));
        assert_eq!(findings[1].raw_bytes, 21);
        assert_eq!(findings[2].raw, r#"{"id":"c","n":[1,{"d":2}]}"#);
        // A raw NUL in valid UTF-8: the finding is not JSON, its text is kept exactly.
        let nul = b"{\"findings\":[{\"id\":\"x\x00\"},{\"id\":\"y\"}]}";
        let findings = split_findings(nul).unwrap();
        assert!(matches!(
            crate::normalize::finding_text::normalize_str(&findings[0].raw),
            Err(crate::normalize::finding_text::Unreadable::NotJson(_))
        ));
        assert_eq!(findings[0].raw, "{\"id\":\"x\u{0}\"}");
        assert_eq!(findings[1].raw, r#"{"id":"y"}"#);
        assert!(
            split_findings(br#"{"findings":[{"id":"a"}"#).is_err(),
            "unbalanced"
        );
    }

    #[test]
    fn a_finding_over_the_limit_is_not_kept() {
        let big = format!(
            r#"{{"findings":[{{"id":"a","p":"{}"}},{{"id":"b"}}]}}"#,
            "x".repeat(MAX_FINDING_BYTES)
        );
        let findings = split_findings(big.as_bytes()).unwrap();
        assert!(findings[0].raw.is_empty());
        assert!(findings[0].raw_bytes > MAX_FINDING_BYTES);
        assert!(findings[0]
            .problem
            .as_ref()
            .unwrap()
            .contains("MAX_FINDING_BYTES"));
        assert!(findings[1].problem.is_none());
    }
}
