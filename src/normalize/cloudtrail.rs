//! CloudTrail record JSON (as in `CloudTrailEvent` of LookupEvents, or an org-trail object's
//! `Records[]`) → a `cloudtrail_events` row; and the `finding_events` links.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, ListBuilder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
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
    #[error("not JSON: {0}")]
    NotJson(String),
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
    text(identity, "/userName").or_else(|| {
        user_name_by_type(
            identity.get("type").and_then(Value::as_str),
            text(identity, "/arn").as_deref(),
            text(identity, "/invokedBy").as_deref(),
        )
    })
}

/// The user name of an identity without `userName`: root, the role session (the ARN's last
/// part), or the service that acted.
fn user_name_by_type(
    identity_type: Option<&str>,
    arn: Option<&str>,
    invoked_by: Option<&str>,
) -> Option<String> {
    match identity_type {
        Some("Root") => Some("root".into()),
        Some("AssumedRole") | Some("FederatedUser") => {
            arn.and_then(|a| a.rsplit('/').next().map(str::to_owned))
        }
        Some("AWSService") => invoked_by.map(str::to_owned),
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

/// A member as it appears in the record, not yet interpreted (a string, a number, an object…).
type Member<'a> = Option<&'a RawValue>;

/// The members of a CloudTrail record that become columns, borrowed from the record's text.
/// Members not named here are skipped; they stay in `raw`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(rename = "eventID", borrow)]
    event_id: Member<'a>,
    #[serde(borrow)]
    event_time: Member<'a>,
    #[serde(borrow)]
    event_version: Member<'a>,
    #[serde(borrow)]
    event_source: Member<'a>,
    #[serde(borrow)]
    event_name: Member<'a>,
    #[serde(borrow)]
    event_type: Member<'a>,
    #[serde(borrow)]
    event_category: Member<'a>,
    #[serde(borrow)]
    recipient_account_id: Member<'a>,
    #[serde(borrow)]
    aws_region: Member<'a>,
    #[serde(rename = "sourceIPAddress", borrow)]
    source_ip_address: Member<'a>,
    #[serde(borrow)]
    user_agent: Member<'a>,
    #[serde(borrow)]
    user_identity: Option<WireIdentity<'a>>,
    #[serde(borrow)]
    error_code: Member<'a>,
    #[serde(borrow)]
    error_message: Member<'a>,
    #[serde(borrow)]
    read_only: Member<'a>,
    #[serde(borrow)]
    management_event: Member<'a>,
    #[serde(borrow)]
    resources: Option<Vec<WireResource<'a>>>,
    #[serde(borrow)]
    request_parameters: Member<'a>,
    #[serde(borrow)]
    response_elements: Member<'a>,
    #[serde(borrow)]
    additional_event_data: Member<'a>,
    #[serde(borrow)]
    tls_details: Option<WireTls<'a>>,
    #[serde(borrow)]
    vpc_endpoint_id: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireIdentity<'a> {
    #[serde(rename = "type", borrow)]
    kind: Member<'a>,
    #[serde(borrow)]
    arn: Member<'a>,
    #[serde(borrow)]
    principal_id: Member<'a>,
    #[serde(borrow)]
    access_key_id: Member<'a>,
    #[serde(borrow)]
    user_name: Member<'a>,
    #[serde(borrow)]
    invoked_by: Member<'a>,
    #[serde(borrow)]
    account_id: Member<'a>,
    #[serde(borrow)]
    session_context: Option<WireSession<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSession<'a> {
    #[serde(borrow)]
    session_issuer: Option<WireArn<'a>>,
    #[serde(borrow)]
    attributes: Option<WireAttributes<'a>>,
}

#[derive(Deserialize)]
struct WireArn<'a> {
    #[serde(borrow)]
    arn: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAttributes<'a> {
    #[serde(borrow)]
    mfa_authenticated: Member<'a>,
}

#[derive(Deserialize)]
struct WireResource<'a> {
    #[serde(rename = "type", borrow)]
    kind: Member<'a>,
    #[serde(rename = "ARN", borrow)]
    arn: Member<'a>,
    #[serde(rename = "accountId", borrow)]
    account_id: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTls<'a> {
    #[serde(borrow)]
    tls_version: Member<'a>,
}

/// A member as text: a string's value, a number or boolean as written, an object or array as
/// compact JSON text; `null` or absent is `None`. The same rules as `text` on a parsed value.
fn member_text(member: Member<'_>) -> Option<String> {
    let written = member?.get();
    match written.as_bytes().first()? {
        b'"' => {
            let inner = &written[1..written.len() - 1];
            if inner.contains('\\') {
                serde_json::from_str(written).ok()
            } else {
                Some(inner.to_owned())
            }
        }
        b'n' => None,
        b'{' | b'[' => Some(compact_json(written)),
        _ => Some(written.to_owned()),
    }
}

/// A member that is an object or array, as compact JSON text (members in their original order).
fn member_json(member: Member<'_>) -> Option<String> {
    let written = member?.get();
    (written != "null").then(|| compact_json(written))
}

fn member_flag(member: Member<'_>) -> Option<bool> {
    match member?.get() {
        "true" | "\"true\"" => Some(true),
        "false" | "\"false\"" => Some(false),
        _ => None,
    }
}

/// JSON text without the whitespace between tokens (string contents untouched).
pub fn compact_json(text: &str) -> String {
    let bytes = text.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
    {
        return text.to_owned();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            continue;
        }
        out.push(b);
    }
    // Only ASCII whitespace outside strings was dropped, so the text is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

/// Normalizes one record from its JSON text, which becomes `raw`. The record is read in one
/// pass into borrowed members (no tree of values); a record of an unusual shape (a member of an
/// unexpected type, a repeated member) is read again as a JSON value with the same rules.
/// On failure the text is handed back with the reason, to be quarantined whole.
pub fn normalize_text(raw: String) -> Result<EventRow, (BadRecord, String)> {
    let typed = match serde_json::from_str::<Wire<'_>>(&raw) {
        Ok(wire) => from_wire(&wire),
        Err(_) => None,
    };
    match typed {
        Some(Ok(mut row)) => {
            row.raw = raw;
            Ok(row)
        }
        Some(Err(bad)) => Err((bad, raw)),
        None => match serde_json::from_str::<Value>(&raw) {
            Ok(value) => match normalize(&value, String::new()) {
                Ok(mut row) => {
                    // JSON members as written (member order kept), as on the usual path.
                    if let Ok(members) =
                        serde_json::from_str::<HashMap<Cow<'_, str>, &RawValue>>(&raw)
                    {
                        let json = |name: &str| member_json(members.get(name).copied());
                        row.request_parameters = json("requestParameters");
                        row.response_elements = json("responseElements");
                        row.additional_event_data = json("additionalEventData");
                    }
                    row.raw = raw;
                    Ok(row)
                }
                Err(bad) => Err((bad, raw)),
            },
            Err(e) => Err((BadRecord::NotJson(e.to_string()), raw)),
        },
    }
}

/// The row of a record read into members; `None` when it is not the usual shape (see
/// `normalize_text`), e.g. `userIdentity` not an object.
fn from_wire(wire: &Wire<'_>) -> Option<Result<EventRow, BadRecord>> {
    let Some(event_id) = member_text(wire.event_id).filter(|s| !s.is_empty()) else {
        return Some(Err(BadRecord::NoEventId));
    };
    let Some(event_time_ms) = member_text(wire.event_time).and_then(|t| parse_iso_ms(&t)) else {
        return Some(Err(BadRecord::NoEventTime));
    };
    let identity = wire.user_identity.as_ref();
    let id =
        |f: for<'w> fn(&WireIdentity<'w>) -> Member<'w>| identity.and_then(|i| member_text(f(i)));
    let identity_type = id(|i| i.kind);
    let identity_arn = id(|i| i.arn);
    let invoked_by = id(|i| i.invoked_by);
    let user_name = id(|i| i.user_name).or_else(|| {
        user_name_by_type(
            identity_type.as_deref(),
            identity_arn.as_deref(),
            invoked_by.as_deref(),
        )
    });
    let session = identity.and_then(|i| i.session_context.as_ref());
    let resources = wire.resources.as_ref().map(|list| {
        list.iter()
            .map(|r| {
                format!(
                    "{}|{}|{}",
                    member_text(r.kind).unwrap_or_default(),
                    member_text(r.arn).unwrap_or_default(),
                    member_text(r.account_id).unwrap_or_default()
                )
            })
            .collect()
    });
    Some(Ok(EventRow {
        event_id,
        event_time_ms,
        event_version: member_text(wire.event_version),
        event_source: member_text(wire.event_source),
        event_name: member_text(wire.event_name),
        event_type: member_text(wire.event_type),
        event_category: member_text(wire.event_category),
        account_id: member_text(wire.recipient_account_id)
            .or_else(|| id(|i| i.account_id))
            .unwrap_or_default(),
        region: member_text(wire.aws_region).unwrap_or_default(),
        source_ip: member_text(wire.source_ip_address),
        user_agent: member_text(wire.user_agent),
        identity_type,
        identity_arn,
        principal_id: id(|i| i.principal_id),
        access_key_id: id(|i| i.access_key_id).filter(|k| !k.is_empty()),
        user_name,
        session_issuer_arn: session
            .and_then(|s| s.session_issuer.as_ref())
            .and_then(|s| member_text(s.arn)),
        mfa_authenticated: session
            .and_then(|s| s.attributes.as_ref())
            .and_then(|a| member_flag(a.mfa_authenticated)),
        invoked_by,
        error_code: member_text(wire.error_code),
        error_message: member_text(wire.error_message),
        read_only: member_flag(wire.read_only),
        management_event: member_flag(wire.management_event),
        resources,
        request_parameters: member_json(wire.request_parameters),
        response_elements: member_json(wire.response_elements),
        additional_event_data: member_json(wire.additional_event_data),
        tls_version: wire
            .tls_details
            .as_ref()
            .and_then(|t| member_text(t.tls_version)),
        vpc_endpoint_id: member_text(wire.vpc_endpoint_id),
        raw: String::new(),
    }))
}

/// Builds a `cloudtrail_events` RecordBatch from rows (or references to rows), columns in
/// `schemas/cloudtrail_events.json` order.
pub fn events_batch<R: std::borrow::Borrow<EventRow>>(
    rows: &[R],
    stamp: &RunStamp,
) -> Result<RecordBatch, ArrowError> {
    let schema = schema::cloudtrail_events().arrow_schema();
    let n = rows.len();
    let rows = || rows.iter().map(|r| r.borrow());
    let strings = |f: &dyn Fn(&EventRow) -> Option<&str>| -> ArrayRef {
        let bytes = rows().map(|r| f(r).map_or(0, str::len)).sum();
        let mut b = StringBuilder::with_capacity(n, bytes);
        rows().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    };
    let bools = |f: &dyn Fn(&EventRow) -> Option<bool>| -> ArrayRef {
        let mut b = BooleanBuilder::with_capacity(n);
        rows().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    };
    let times = |f: &dyn Fn(&EventRow) -> i64| -> ArrayRef {
        let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        rows().for_each(|r| b.append_value(f(r)));
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
                for r in rows() {
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
                rows().for_each(|_| b.append_value(&stamp.run_id));
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

    /// The one-pass reading gives the same row as reading a JSON value, JSON members compared
    /// as JSON; so does the fallback for records of unusual shapes.
    #[test]
    fn text_and_value_readings_agree() {
        let mut records: Vec<String> = fixtures().into_iter().map(|(raw, _)| raw).collect();
        records.push(r#"{"eventID":"u1","eventTime":"2026-11-20T10:00:00Z","userIdentity":"odd","eventName":7,"requestParameters":{"b":1,"a":[1, 2]},"readOnly":"true"}"#.into());
        records.push(r#"{"eventID":"u2","eventTime":"2026-11-20T10:00:00Z","eventName":"A","eventName":"B","resources":{"not":"a list"}}"#.into());
        records.push(r#"{"eventID":"u\u00e9","eventTime":"2026-11-20T10:00:00Z","userAgent":"caf\u00e9 \"x\"","responseElements":null,"userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/R/s\/x"}}"#.into());
        for raw in records {
            let value: Value = serde_json::from_str(&raw).unwrap();
            let expected = normalize(&value, raw.clone()).unwrap();
            let got = normalize_text(raw.clone()).unwrap();
            let as_json = |t: &Option<String>| {
                t.as_deref()
                    .map(|t| serde_json::from_str::<Value>(t).unwrap())
            };
            for (a, b) in [
                (&got.request_parameters, &expected.request_parameters),
                (&got.response_elements, &expected.response_elements),
                (&got.additional_event_data, &expected.additional_event_data),
            ] {
                assert_eq!(as_json(a), as_json(b), "{raw}");
                assert!(
                    a.as_deref().is_none_or(|t| !t.contains('\n')),
                    "compact: {a:?}"
                );
            }
            let plain = |row: &EventRow| EventRow {
                request_parameters: None,
                response_elements: None,
                additional_event_data: None,
                ..row.clone()
            };
            assert_eq!(plain(&got), plain(&expected), "{raw}");
        }
    }

    #[test]
    fn bad_text_is_handed_back_with_the_reason() {
        for (raw, reason) in [
            ("{\"eventID\":", "not JSON"),
            ("[1,2]", "not a JSON object"),
            ("{\"eventTime\":\"2026-11-20T10:00:00Z\"}", "no eventID"),
            (
                "{\"eventID\":\"x\",\"eventTime\":\"soon\"}",
                "no valid eventTime",
            ),
        ] {
            let (bad, back) = normalize_text(raw.to_owned()).unwrap_err();
            assert!(bad.to_string().contains(reason), "{raw}: {bad}");
            assert_eq!(back, raw);
        }
    }

    #[test]
    fn compact_json_keeps_string_contents() {
        assert_eq!(
            compact_json("{ \"a b\" : [ 1, \"x \\\" y\" ],\n \"c\": {} }"),
            r#"{"a b":[1,"x \" y"],"c":{}}"#
        );
        assert_eq!(compact_json(r#"{"a":1}"#), r#"{"a":1}"#);
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
