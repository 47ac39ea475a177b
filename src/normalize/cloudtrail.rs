//! CloudTrail record JSON (as in `CloudTrailEvent` of LookupEvents, or an org-trail object's
//! `Records[]`) → a `cloudtrail_events` row; and the `finding_events` links.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, ListBuilder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use super::guardduty::{parse_iso_ms, RunStamp};
use super::schema;

/// One CloudTrail event, typed. Field names are the `cloudtrail_events` column names.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventRow {
    pub event_id: String,
    pub event_time_ms: i64,
    pub event_version: Option<String>,
    pub event_source: Option<String>,
    pub event_name: Option<String>,
    pub event_type: Option<String>,
    pub event_category: Option<String>,
    pub account_id: String,
    pub region: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub identity_type: Option<String>,
    pub identity_arn: Option<String>,
    pub principal_id: Option<String>,
    pub access_key_id: Option<String>,
    pub user_name: Option<String>,
    pub session_issuer_arn: Option<String>,
    pub mfa_authenticated: Option<bool>,
    pub invoked_by: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub read_only: Option<bool>,
    pub management_event: Option<bool>,
    pub resources: Option<Vec<String>>,
    pub request_parameters: Option<String>,
    pub response_elements: Option<String>,
    pub additional_event_data: Option<String>,
    pub tls_version: Option<String>,
    pub vpc_endpoint_id: Option<String>,
    pub raw: String,
}

/// Why a record could not be used; it is quarantined with this reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadRecord {
    #[error("the record is not a JSON object")]
    NotAnObject,
    #[error("the record has no eventID")]
    NoEventId,
    #[error("the record has no valid eventTime")]
    NoEventTime,
}

impl EventRow {
    pub fn dt(&self) -> NaiveDate {
        DateTime::<Utc>::from_timestamp_millis(self.event_time_ms)
            .map(|t| t.date_naive())
            .unwrap_or_default()
    }
}

fn text(value: &Value, pointer: &str) -> Option<String> {
    match value.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn flag(value: &Value, pointer: &str) -> Option<bool> {
    match value.pointer(pointer)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn json_text(value: &Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .filter(|v| !v.is_null())
        .map(Value::to_string)
}

/// The user name LookupEvents reports: the IAM user, the role session, root, or the service.
pub fn user_name(record: &Value) -> Option<String> {
    let identity = record.get("userIdentity")?;
    if let Some(name) = text(identity, "/userName") {
        return Some(name);
    }
    match identity.get("type").and_then(Value::as_str) {
        Some("Root") => Some("root".into()),
        Some("AssumedRole") | Some("FederatedUser") => {
            text(identity, "/arn").and_then(|a| a.rsplit('/').next().map(str::to_owned))
        }
        Some("AWSService") => text(identity, "/invokedBy"),
        _ => None,
    }
}

/// Normalizes one record. `raw` is its exact JSON text.
pub fn normalize(record: &Value, raw: String) -> Result<EventRow, BadRecord> {
    if !record.is_object() {
        return Err(BadRecord::NotAnObject);
    }
    let event_id = text(record, "/eventID")
        .filter(|s| !s.is_empty())
        .ok_or(BadRecord::NoEventId)?;
    let event_time_ms = text(record, "/eventTime")
        .and_then(|t| parse_iso_ms(&t))
        .ok_or(BadRecord::NoEventTime)?;
    let resources = record
        .get("resources")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|r| {
                    format!(
                        "{}|{}|{}",
                        text(r, "/type").unwrap_or_default(),
                        text(r, "/ARN").unwrap_or_default(),
                        text(r, "/accountId").unwrap_or_default()
                    )
                })
                .collect()
        });
    Ok(EventRow {
        event_id,
        event_time_ms,
        event_version: text(record, "/eventVersion"),
        event_source: text(record, "/eventSource"),
        event_name: text(record, "/eventName"),
        event_type: text(record, "/eventType"),
        event_category: text(record, "/eventCategory"),
        account_id: text(record, "/recipientAccountId")
            .or_else(|| text(record, "/userIdentity/accountId"))
            .unwrap_or_default(),
        region: text(record, "/awsRegion").unwrap_or_default(),
        source_ip: text(record, "/sourceIPAddress"),
        user_agent: text(record, "/userAgent"),
        identity_type: text(record, "/userIdentity/type"),
        identity_arn: text(record, "/userIdentity/arn"),
        principal_id: text(record, "/userIdentity/principalId"),
        access_key_id: text(record, "/userIdentity/accessKeyId").filter(|k| !k.is_empty()),
        user_name: user_name(record),
        session_issuer_arn: text(record, "/userIdentity/sessionContext/sessionIssuer/arn"),
        mfa_authenticated: flag(
            record,
            "/userIdentity/sessionContext/attributes/mfaAuthenticated",
        ),
        invoked_by: text(record, "/userIdentity/invokedBy"),
        error_code: text(record, "/errorCode"),
        error_message: text(record, "/errorMessage"),
        read_only: flag(record, "/readOnly"),
        management_event: flag(record, "/managementEvent"),
        resources,
        request_parameters: json_text(record, "/requestParameters"),
        response_elements: json_text(record, "/responseElements"),
        additional_event_data: json_text(record, "/additionalEventData"),
        tls_version: text(record, "/tlsDetails/tlsVersion"),
        vpc_endpoint_id: text(record, "/vpcEndpointId"),
        raw,
    })
}

/// Builds a `cloudtrail_events` RecordBatch, columns in `schemas/cloudtrail_events.json` order.
pub fn events_batch(rows: &[EventRow], stamp: &RunStamp) -> Result<RecordBatch, ArrowError> {
    let schema = schema::cloudtrail_events().arrow_schema();
    let n = rows.len();
    let strings = |f: &dyn Fn(&EventRow) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    };
    let bools = |f: &dyn Fn(&EventRow) -> Option<bool>| -> ArrayRef {
        let mut b = BooleanBuilder::with_capacity(n);
        rows.iter().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    };
    let times = |f: &dyn Fn(&EventRow) -> i64| -> ArrayRef {
        let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        rows.iter().for_each(|r| b.append_value(f(r)));
        Arc::new(b.finish())
    };
    let mut columns = Vec::new();
    for field in schema.fields() {
        columns.push(match field.name().as_str() {
            "event_id" => strings(&|r| Some(&r.event_id)),
            "event_time" => times(&|r| r.event_time_ms),
            "event_version" => strings(&|r| r.event_version.as_deref()),
            "event_source" => strings(&|r| r.event_source.as_deref()),
            "event_name" => strings(&|r| r.event_name.as_deref()),
            "event_type" => strings(&|r| r.event_type.as_deref()),
            "event_category" => strings(&|r| r.event_category.as_deref()),
            "account_id" => strings(&|r| Some(&r.account_id)),
            "region" => strings(&|r| Some(&r.region)),
            "source_ip" => strings(&|r| r.source_ip.as_deref()),
            "user_agent" => strings(&|r| r.user_agent.as_deref()),
            "identity_type" => strings(&|r| r.identity_type.as_deref()),
            "identity_arn" => strings(&|r| r.identity_arn.as_deref()),
            "principal_id" => strings(&|r| r.principal_id.as_deref()),
            "access_key_id" => strings(&|r| r.access_key_id.as_deref()),
            "user_name" => strings(&|r| r.user_name.as_deref()),
            "session_issuer_arn" => strings(&|r| r.session_issuer_arn.as_deref()),
            "mfa_authenticated" => bools(&|r| r.mfa_authenticated),
            "invoked_by" => strings(&|r| r.invoked_by.as_deref()),
            "error_code" => strings(&|r| r.error_code.as_deref()),
            "error_message" => strings(&|r| r.error_message.as_deref()),
            "read_only" => bools(&|r| r.read_only),
            "management_event" => bools(&|r| r.management_event),
            "resources" => {
                let item = Arc::new(Field::new("element", DataType::Utf8, true));
                let mut b = ListBuilder::new(StringBuilder::new()).with_field(item);
                for r in rows {
                    match &r.resources {
                        Some(list) => {
                            list.iter().for_each(|v| b.values().append_value(v));
                            b.append(true);
                        }
                        None => b.append(false),
                    }
                }
                Arc::new(b.finish())
            }
            "request_parameters" => strings(&|r| r.request_parameters.as_deref()),
            "response_elements" => strings(&|r| r.response_elements.as_deref()),
            "additional_event_data" => strings(&|r| r.additional_event_data.as_deref()),
            "tls_version" => strings(&|r| r.tls_version.as_deref()),
            "vpc_endpoint_id" => strings(&|r| r.vpc_endpoint_id.as_deref()),
            "raw" => strings(&|r| Some(&r.raw)),
            "collected_at" => times(&|_| stamp.collected_at_ms),
            "run_id" => {
                let mut b = StringBuilder::with_capacity(n, n * stamp.run_id.len());
                rows.iter().for_each(|_| b.append_value(&stamp.run_id));
                Arc::new(b.finish())
            }
            other => return Err(ArrowError::SchemaError(format!("schemas/cloudtrail_events.json has column {other} that the normalizer does not fill"))),
        });
    }
    RecordBatch::try_new(schema, columns)
}

/// One `finding_events` link.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FindingEvent {
    pub finding_account_id: String,
    pub finding_region: String,
    pub finding_id: String,
    pub finding_updated_at_ms: i64,
    pub event_id: String,
    pub event_region: String,
    pub reason: &'static str,
}

impl FindingEvent {
    pub fn dt(&self) -> NaiveDate {
        DateTime::<Utc>::from_timestamp_millis(self.finding_updated_at_ms)
            .map(|t| t.date_naive())
            .unwrap_or_default()
    }
}

pub fn links_batch(links: &[FindingEvent], run_id: &str) -> Result<RecordBatch, ArrowError> {
    let schema = schema::finding_events().arrow_schema();
    let strings = |f: &dyn Fn(&FindingEvent) -> &str| -> ArrayRef {
        Arc::new(
            links
                .iter()
                .map(|l| Some(f(l)))
                .collect::<arrow_array::StringArray>(),
        )
    };
    let mut columns = Vec::new();
    for field in schema.fields() {
        columns.push(match field.name().as_str() {
            "finding_id" => strings(&|l| &l.finding_id),
            "finding_account_id" => strings(&|l| &l.finding_account_id),
            "finding_region" => strings(&|l| &l.finding_region),
            "finding_updated_at" => Arc::new(
                arrow_array::TimestampMillisecondArray::from(
                    links
                        .iter()
                        .map(|l| l.finding_updated_at_ms)
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            "event_id" => strings(&|l| &l.event_id),
            "event_region" => strings(&|l| &l.event_region),
            "reason" => strings(&|l| l.reason),
            "run_id" => Arc::new(
                links
                    .iter()
                    .map(|_| Some(run_id))
                    .collect::<arrow_array::StringArray>(),
            ),
            other => {
                return Err(ArrowError::SchemaError(format!(
                    "schemas/finding_events.json has column {other} that the linker does not fill"
                )))
            }
        });
    }
    RecordBatch::try_new(schema, columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixtures() -> Vec<(String, Value)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cloudtrail");
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        all.sort();
        all.into_iter()
            .map(|p| {
                let raw = std::fs::read_to_string(p).unwrap();
                let value = serde_json::from_str(&raw).unwrap();
                (raw, value)
            })
            .collect()
    }

    #[test]
    fn every_identity_type_normalizes_and_builds_a_batch() {
        let rows: Vec<EventRow> = fixtures()
            .into_iter()
            .map(|(raw, v)| normalize(&v, raw).unwrap())
            .collect();
        let by_type = |t: &str| {
            rows.iter()
                .find(|r| r.identity_type.as_deref() == Some(t))
                .unwrap()
        };
        assert_eq!(by_type("Root").user_name.as_deref(), Some("root"));
        assert_eq!(
            by_type("AssumedRole").user_name.as_deref(),
            Some("ops-session")
        );
        assert_eq!(by_type("AssumedRole").mfa_authenticated, Some(true));
        assert_eq!(
            by_type("AssumedRole").session_issuer_arn.as_deref(),
            Some("arn:aws:iam::111122223333:role/Ops")
        );
        assert_eq!(
            by_type("AWSService").invoked_by.as_deref(),
            Some("lambda.amazonaws.com")
        );
        assert_eq!(
            by_type("FederatedUser").error_code.as_deref(),
            Some("AccessDenied")
        );
        assert_eq!(by_type("IAMUser").tls_version.as_deref(), Some("TLSv1.3"));
        assert_eq!(
            by_type("IAMUser").resources.as_deref(),
            Some(
                &[
                    "AWS::IAM::User|arn:aws:iam::111122223333:user/deploy-1|111122223333"
                        .to_owned()
                ][..]
            )
        );
        let stamp = RunStamp {
            run_id: "r".into(),
            collected_at_ms: 0,
        };
        assert_eq!(events_batch(&rows, &stamp).unwrap().num_rows(), 5);
    }

    #[test]
    fn records_without_id_or_time_are_refused() {
        let (_, mut record) = fixtures().remove(0);
        record["eventTime"] = "yesterday".into();
        assert_eq!(
            normalize(&record, String::new()),
            Err(BadRecord::NoEventTime)
        );
        record.as_object_mut().unwrap().remove("eventID");
        assert_eq!(normalize(&record, String::new()), Err(BadRecord::NoEventId));
        assert_eq!(
            normalize(&Value::from("x"), String::new()),
            Err(BadRecord::NotAnObject)
        );
    }
}
