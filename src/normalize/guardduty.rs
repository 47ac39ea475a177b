//! GuardDuty finding JSON (wire names, as GetFindings returns it) → a `findings` row.
//!
//! Facts from the GuardDuty service model: top-level `createdAt` / `updatedAt` are ISO-8601
//! strings; `type`, `resource.resourceType` and `service.action.actionType` are open strings,
//! so unknown values flow through; `service.eventFirstSeen` / `eventLastSeen` are ISO strings.
//! The finding JSON is kept whole in `raw`, so nothing the typed columns miss is ever lost.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::ArrowError;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use super::schema;

/// One version of a finding, typed. Field names are the `findings` column names.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FindingVersion {
    pub id: String,
    pub arn: Option<String>,
    pub account_id: String,
    pub region: String,
    pub partition: Option<String>,
    pub finding_type: String,
    pub threat_purpose: Option<String>,
    pub resource_type_affected: Option<String>,
    pub severity: f64,
    pub confidence: Option<f64>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub archived: Option<bool>,
    pub count: Option<i64>,
    pub event_first_seen_ms: Option<i64>,
    pub event_last_seen_ms: Option<i64>,
    pub resource_type: Option<String>,
    pub instance_id: Option<String>,
    pub access_key_id: Option<String>,
    pub principal_id: Option<String>,
    pub user_name: Option<String>,
    pub s3_bucket_names: Option<Vec<String>>,
    pub eks_cluster_name: Option<String>,
    pub action_type: Option<String>,
    pub api: Option<String>,
    pub service_name: Option<String>,
    pub caller_type: Option<String>,
    pub remote_ip: Option<String>,
    pub remote_country: Option<String>,
    pub remote_city: Option<String>,
    pub remote_asn: Option<String>,
    pub remote_org: Option<String>,
    pub local_port: Option<i32>,
    pub remote_port: Option<i32>,
    pub protocol: Option<String>,
    pub connection_direction: Option<String>,
    pub blocked: Option<bool>,
    pub detector_id: Option<String>,
    pub feature_name: Option<String>,
    pub sequence_signal_count: Option<i32>,
    pub sequence_first_seen_ms: Option<i64>,
    pub sequence_last_seen_ms: Option<i64>,
    pub schema_version: Option<String>,
    pub sample: bool,
    pub raw: String,
}

/// Why a finding could not be normalized. It is quarantined with this reason, never dropped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Malformed {
    #[error("the finding is not a JSON object")]
    NotAnObject,
    #[error("required member {0} is missing or not a string")]
    MissingString(&'static str),
    #[error("required member {0} is missing or not a number")]
    MissingNumber(&'static str),
    #[error("{member} is not an ISO-8601 timestamp: {value:?}")]
    BadTimestamp { member: &'static str, value: String },
}

impl FindingVersion {
    /// UTC date of `updated_at`: the `dt` partition.
    pub fn dt(&self) -> NaiveDate {
        DateTime::<Utc>::from_timestamp_millis(self.updated_at_ms)
            .map(|t| t.date_naive())
            .unwrap_or_default()
    }

    /// GuardDuty's severity bands: Low < 4.0 ≤ Medium < 7.0 ≤ High < 9.0 ≤ Critical.
    pub fn severity_label(&self) -> &'static str {
        severity_label(self.severity)
    }

    /// Bytes this row holds in memory, roughly; the sink flushes by this.
    pub fn approx_bytes(&self) -> usize {
        self.raw.len() + 512
    }
}

/// GuardDuty's severity bands: Low < 4.0 ≤ Medium < 7.0 ≤ High < 9.0 ≤ Critical.
pub fn severity_label(severity: f64) -> &'static str {
    if severity >= 9.0 {
        "Critical"
    } else if severity >= 7.0 {
        "High"
    } else if severity >= 4.0 {
        "Medium"
    } else {
        "Low"
    }
}

/// Parses an ISO-8601 / RFC 3339 timestamp into epoch milliseconds.
pub fn parse_iso_ms(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn path<'a>(value: &'a Value, members: &[&str]) -> Option<&'a Value> {
    members
        .iter()
        .try_fold(value, |current, member| current.get(member))
}

fn text(value: &Value, members: &[&str]) -> Option<String> {
    match path(value, members)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(value: &Value, members: &[&str]) -> Option<i64> {
    path(value, members)?.as_i64()
}

fn boolean(value: &Value, members: &[&str]) -> Option<bool> {
    path(value, members)?.as_bool()
}

fn required_text(value: &Value, member: &'static str) -> Result<String, Malformed> {
    value
        .get(member)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(Malformed::MissingString(member))
}

fn required_time(value: &Value, member: &'static str) -> Result<i64, Malformed> {
    let raw = required_text(value, member)?;
    parse_iso_ms(&raw).ok_or(Malformed::BadTimestamp { member, value: raw })
}

/// The action's remote IP details, wherever the action type keeps them (a null counts as
/// absent, as in `finding_text`).
fn remote_ip_details(action: &Value) -> Option<&Value> {
    [
        &["awsApiCallAction", "remoteIpDetails"][..],
        &["networkConnectionAction", "remoteIpDetails"],
        &["kubernetesApiCallAction", "remoteIpDetails"],
        &["rdsLoginAttemptAction", "remoteIpDetails"],
    ]
    .iter()
    .find_map(|members| path(action, members).filter(|v| !v.is_null()))
    .or_else(|| {
        path(action, &["portProbeAction", "portProbeDetails"])?
            .get(0)?
            .get("remoteIpDetails")
            .filter(|v| !v.is_null())
    })
}

/// A timestamp member of the service model's newer shapes (attack-sequence signals): epoch
/// seconds with a fraction as the API sends them; a value past year 5138 in seconds is taken as
/// epoch milliseconds, and ISO-8601 text is read too, as exports sometimes carry it.
fn model_time_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => {
            let n = n.as_f64()?;
            let ms = if n.abs() >= 1e11 { n } else { n * 1000.0 };
            ms.is_finite().then_some(ms.round() as i64)
        }
        Value::String(text) => parse_iso_ms(text),
        _ => None,
    }
}

/// Whether a finding is one of GuardDuty's samples. The API puts the flag in
/// `additionalInfo.value`, a JSON text (`{"value":"{\"sample\":true}","type":"default"}`);
/// exports and EventBridge events often carry it as a member (`{"sample":true}`), and some
/// carry `value` as an object. Every form is read.
fn sample_flag(additional_info: Option<&Value>) -> bool {
    let Some(info) = additional_info else {
        return false;
    };
    let from = |v: &Value| v.get("sample").and_then(Value::as_bool);
    from(info)
        .or_else(|| match info.get("value") {
            Some(Value::String(text)) => serde_json::from_str::<Value>(text)
                .ok()
                .as_ref()
                .and_then(from),
            Some(object @ Value::Object(_)) => from(object),
            _ => None,
        })
        .unwrap_or(false)
}

/// The threat purpose and the resource type affected, from a finding type of the form
/// `ThreatPurpose:ResourceTypeAffected/ThreatFamilyName.DetectionMechanism!Artifact`.
pub(super) fn type_parts(finding_type: &str) -> (Option<String>, Option<String>) {
    match finding_type.split_once(':') {
        Some((purpose, rest)) => (
            Some(purpose.to_owned()),
            rest.split_once('/')
                .map(|(affected, _)| affected.to_owned()),
        ),
        None => (None, None),
    }
}

/// Normalizes one finding as received. `raw` is the exact JSON text it came in.
pub fn normalize(value: &Value, raw: String) -> Result<FindingVersion, Malformed> {
    if !value.is_object() {
        return Err(Malformed::NotAnObject);
    }
    let id = required_text(value, "id")?;
    let account_id = required_text(value, "accountId")?;
    let region = required_text(value, "region")?;
    let finding_type = required_text(value, "type")?;
    let severity = value
        .get("severity")
        .and_then(Value::as_f64)
        .ok_or(Malformed::MissingNumber("severity"))?;
    let created_at_ms = required_time(value, "createdAt")?;
    let updated_at_ms = required_time(value, "updatedAt")?;

    let (threat_purpose, resource_type_affected) = type_parts(&finding_type);

    let empty = Value::Null;
    let resource = value.get("resource").unwrap_or(&empty);
    let service = value.get("service").unwrap_or(&empty);
    let action = service.get("action").unwrap_or(&empty);
    let sample = sample_flag(service.get("additionalInfo"));

    let s3_bucket_names = resource
        .get("s3BucketDetails")
        .and_then(Value::as_array)
        .map(|buckets| buckets.iter().filter_map(|b| text(b, &["name"])).collect());

    Ok(FindingVersion {
        arn: text(value, &["arn"]),
        partition: text(value, &["partition"]),
        threat_purpose,
        resource_type_affected,
        severity,
        confidence: value.get("confidence").and_then(Value::as_f64),
        title: text(value, &["title"]),
        description: text(value, &["description"]),
        created_at_ms,
        updated_at_ms,
        archived: boolean(service, &["archived"]),
        count: int(service, &["count"]),
        event_first_seen_ms: text(service, &["eventFirstSeen"]).and_then(|t| parse_iso_ms(&t)),
        event_last_seen_ms: text(service, &["eventLastSeen"]).and_then(|t| parse_iso_ms(&t)),
        resource_type: text(resource, &["resourceType"]),
        instance_id: text(resource, &["instanceDetails", "instanceId"]),
        access_key_id: text(resource, &["accessKeyDetails", "accessKeyId"]),
        principal_id: text(resource, &["accessKeyDetails", "principalId"]),
        user_name: user_name(resource),
        s3_bucket_names,
        eks_cluster_name: text(resource, &["eksClusterDetails", "name"]),
        action_type: text(action, &["actionType"]),
        api: text(action, &["awsApiCallAction", "api"]),
        service_name: text(action, &["awsApiCallAction", "serviceName"]),
        caller_type: text(action, &["awsApiCallAction", "callerType"]),
        detector_id: text(service, &["detectorId"]),
        feature_name: text(service, &["featureName"]),
        schema_version: text(value, &["schemaVersion"]),
        sample,
        id,
        account_id,
        region,
        finding_type,
        raw,
        ..network(action)
    })
    .map(|row| with_sequence(row, service))
}

/// The principal a finding names: an IAM user, a Kubernetes user, or a database user.
fn user_name(resource: &Value) -> Option<String> {
    text(resource, &["accessKeyDetails", "userName"])
        .or_else(|| {
            text(
                resource,
                &["kubernetesDetails", "kubernetesUserDetails", "username"],
            )
        })
        .or_else(|| text(resource, &["rdsDbUserDetails", "user"]))
}

/// The network columns: the remote party, ports, protocol, direction, blocked.
fn network(action: &Value) -> FindingVersion {
    let empty = Value::Null;
    let remote = remote_ip_details(action).unwrap_or(&empty);
    let first_probe = path(action, &["portProbeAction", "portProbeDetails"])
        .and_then(|d| d.get(0))
        .unwrap_or(&empty);
    let port = |v: Option<i64>| v.and_then(|p| i32::try_from(p).ok());
    FindingVersion {
        remote_ip: text(remote, &["ipAddressV4"]).or_else(|| text(remote, &["ipAddressV6"])),
        remote_country: text(remote, &["country", "countryName"]),
        remote_city: text(remote, &["city", "cityName"]),
        remote_asn: text(remote, &["organization", "asn"]),
        remote_org: text(remote, &["organization", "org"]),
        local_port: port(
            int(
                action,
                &["networkConnectionAction", "localPortDetails", "port"],
            )
            .or_else(|| int(first_probe, &["localPortDetails", "port"])),
        ),
        remote_port: port(int(
            action,
            &["networkConnectionAction", "remotePortDetails", "port"],
        )),
        protocol: text(action, &["networkConnectionAction", "protocol"])
            .or_else(|| text(action, &["dnsRequestAction", "protocol"])),
        connection_direction: text(action, &["networkConnectionAction", "connectionDirection"]),
        blocked: boolean(action, &["networkConnectionAction", "blocked"])
            .or_else(|| boolean(action, &["portProbeAction", "blocked"]))
            .or_else(|| boolean(action, &["dnsRequestAction", "blocked"])),
        ..FindingVersion::default()
    }
}

/// An attack sequence's signal count and the first and last time one was seen.
fn with_sequence(mut row: FindingVersion, service: &Value) -> FindingVersion {
    let sequence = path(service, &["detection", "sequence", "signals"]).and_then(Value::as_array);
    row.sequence_signal_count = sequence.map(|s| s.len().min(i32::MAX as usize) as i32);
    row.sequence_first_seen_ms = sequence.and_then(|s| {
        s.iter()
            .filter_map(|signal| signal.get("firstSeenAt").and_then(model_time_ms))
            .min()
    });
    row.sequence_last_seen_ms = sequence.and_then(|s| {
        s.iter()
            .filter_map(|signal| signal.get("lastSeenAt").and_then(model_time_ms))
            .max()
    });
    row
}

/// Run columns stamped on every row of a run.
#[derive(Debug, Clone)]
pub struct RunStamp {
    pub run_id: String,
    pub collected_at_ms: i64,
}

/// Builds one `findings` RecordBatch from rows (or references to rows), columns in
/// `schemas/findings.json` order, leaving out the columns named in `without`.
pub fn to_record_batch<R: std::borrow::Borrow<FindingVersion>>(
    rows: &[R],
    stamp: &RunStamp,
    without: &[&str],
) -> Result<RecordBatch, ArrowError> {
    let schema = schema::findings().arrow_schema_without(without);
    let c = Columns { rows };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        columns.push(column(&c, field.name(), stamp).ok_or_else(|| {
            ArrowError::SchemaError(format!(
                "schemas/findings.json has column {} that the normalizer does not fill",
                field.name()
            ))
        })?);
    }
    RecordBatch::try_new(schema, columns)
}

/// The `findings` column of this name.
fn column<R: std::borrow::Borrow<FindingVersion>>(
    c: &Columns<'_, R>,
    name: &str,
    stamp: &RunStamp,
) -> Option<ArrayRef> {
    Some(match name {
        "id" => c.strings(&|r| Some(&r.id)),
        "arn" => c.strings(&|r| r.arn.as_deref()),
        "account_id" => c.strings(&|r| Some(&r.account_id)),
        "region" => c.strings(&|r| Some(&r.region)),
        "partition" => c.strings(&|r| r.partition.as_deref()),
        "type" => c.strings(&|r| Some(&r.finding_type)),
        "threat_purpose" => c.strings(&|r| r.threat_purpose.as_deref()),
        "resource_type_affected" => c.strings(&|r| r.resource_type_affected.as_deref()),
        "severity" => c.doubles(&|r| Some(r.severity)),
        "severity_label" => c.strings(&|r| Some(r.severity_label())),
        "confidence" => c.doubles(&|r| r.confidence),
        "title" => c.strings(&|r| r.title.as_deref()),
        "description" => c.strings(&|r| r.description.as_deref()),
        "created_at" => c.times(&|r| Some(r.created_at_ms)),
        "updated_at" => c.times(&|r| Some(r.updated_at_ms)),
        "archived" => c.bools(&|r| r.archived),
        "count" => c.longs(&|r| r.count),
        "event_first_seen" => c.times(&|r| r.event_first_seen_ms),
        "event_last_seen" => c.times(&|r| r.event_last_seen_ms),
        "resource_type" => c.strings(&|r| r.resource_type.as_deref()),
        "instance_id" => c.strings(&|r| r.instance_id.as_deref()),
        "access_key_id" => c.strings(&|r| r.access_key_id.as_deref()),
        "principal_id" => c.strings(&|r| r.principal_id.as_deref()),
        "user_name" => c.strings(&|r| r.user_name.as_deref()),
        "s3_bucket_names" => c.string_lists(&|r| r.s3_bucket_names.as_deref()),
        "eks_cluster_name" => c.strings(&|r| r.eks_cluster_name.as_deref()),
        "action_type" => c.strings(&|r| r.action_type.as_deref()),
        "api" => c.strings(&|r| r.api.as_deref()),
        "service_name" => c.strings(&|r| r.service_name.as_deref()),
        "caller_type" => c.strings(&|r| r.caller_type.as_deref()),
        "remote_ip" => c.strings(&|r| r.remote_ip.as_deref()),
        "remote_country" => c.strings(&|r| r.remote_country.as_deref()),
        "remote_city" => c.strings(&|r| r.remote_city.as_deref()),
        "remote_asn" => c.strings(&|r| r.remote_asn.as_deref()),
        "remote_org" => c.strings(&|r| r.remote_org.as_deref()),
        "local_port" => c.ints(&|r| r.local_port),
        "remote_port" => c.ints(&|r| r.remote_port),
        "protocol" => c.strings(&|r| r.protocol.as_deref()),
        "connection_direction" => c.strings(&|r| r.connection_direction.as_deref()),
        "blocked" => c.bools(&|r| r.blocked),
        "detector_id" => c.strings(&|r| r.detector_id.as_deref()),
        "feature_name" => c.strings(&|r| r.feature_name.as_deref()),
        "sequence_signal_count" => c.ints(&|r| r.sequence_signal_count),
        "sequence_first_seen" => c.times(&|r| r.sequence_first_seen_ms),
        "sequence_last_seen" => c.times(&|r| r.sequence_last_seen_ms),
        "schema_version" => c.strings(&|r| r.schema_version.as_deref()),
        "sample" => c.bools(&|r| Some(r.sample)),
        "raw" => c.strings(&|r| Some(&r.raw)),
        "collected_at" => c.times(&|_| Some(stamp.collected_at_ms)),
        "run_id" => c.constant(&stamp.run_id),
        _ => return None,
    })
}

/// Builds one Arrow column from a field of every row.
struct Columns<'a, R> {
    rows: &'a [R],
}

impl<R: std::borrow::Borrow<FindingVersion>> Columns<'_, R> {
    fn rows(&self) -> impl Iterator<Item = &FindingVersion> {
        self.rows.iter().map(|r| r.borrow())
    }

    fn strings(&self, f: &dyn Fn(&FindingVersion) -> Option<&str>) -> ArrayRef {
        let bytes = self.rows().map(|r| f(r).map_or(0, str::len)).sum();
        let mut b = StringBuilder::with_capacity(self.rows.len(), bytes);
        self.rows().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    }

    fn times(&self, f: &dyn Fn(&FindingVersion) -> Option<i64>) -> ArrayRef {
        let mut b =
            TimestampMillisecondBuilder::with_capacity(self.rows.len()).with_timezone("UTC");
        self.rows().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    }

    fn bools(&self, f: &dyn Fn(&FindingVersion) -> Option<bool>) -> ArrayRef {
        let mut b = BooleanBuilder::with_capacity(self.rows.len());
        self.rows().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    }

    fn doubles(&self, f: &dyn Fn(&FindingVersion) -> Option<f64>) -> ArrayRef {
        let mut b = Float64Builder::with_capacity(self.rows.len());
        self.rows().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    }

    fn ints(&self, f: &dyn Fn(&FindingVersion) -> Option<i32>) -> ArrayRef {
        let mut b = Int32Builder::with_capacity(self.rows.len());
        self.rows().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    }

    fn longs(&self, f: &dyn Fn(&FindingVersion) -> Option<i64>) -> ArrayRef {
        let mut b = Int64Builder::with_capacity(self.rows.len());
        self.rows().for_each(|r| b.append_option(f(r)));
        Arc::new(b.finish())
    }

    /// The same text in every row.
    fn constant(&self, value: &str) -> ArrayRef {
        let mut b = StringBuilder::with_capacity(self.rows.len(), self.rows.len() * value.len());
        self.rows().for_each(|_| b.append_value(value));
        Arc::new(b.finish())
    }

    /// A list of strings.
    fn string_lists(&self, f: &dyn Fn(&FindingVersion) -> Option<&[String]>) -> ArrayRef {
        super::schema::string_lists(self.rows().map(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture(name: &str) -> (Value, String) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/guardduty/examples")
            .join(name);
        let raw = std::fs::read_to_string(path).unwrap();
        (serde_json::from_str(&raw).unwrap(), raw)
    }

    #[test]
    fn port_probe_fixture_lands_in_typed_columns() {
        let (value, raw) = fixture("port_probe_instance.json");
        let row = normalize(&value, raw.clone()).unwrap();
        assert_eq!(row.finding_type, "Recon:EC2/PortProbeUnprotectedPort");
        assert_eq!(row.threat_purpose.as_deref(), Some("Recon"));
        assert_eq!(row.resource_type_affected.as_deref(), Some("EC2"));
        assert_eq!(row.action_type.as_deref(), Some("PORT_PROBE"));
        assert_eq!(row.resource_type.as_deref(), Some("Instance"));
        assert_eq!(row.local_port, Some(22));
        assert_eq!(row.remote_country.as_deref(), Some("Netherlands"));
        assert_eq!(
            row.instance_id,
            value["resource"]["instanceDetails"]["instanceId"]
                .as_str()
                .map(String::from)
        );
        assert_eq!(
            row.updated_at_ms,
            parse_iso_ms(value["updatedAt"].as_str().unwrap()).unwrap()
        );
        assert_eq!(row.raw, raw, "raw keeps the finding as received");
        assert!(!row.sample);
    }

    #[test]
    fn attack_sequences_get_their_signal_count_and_span() {
        let (value, raw) = fixture("attack_sequence.json");
        let row = normalize(&value, raw).unwrap();
        assert_eq!(row.resource_type.as_deref(), Some("AttackSequence"));
        assert_eq!(row.threat_purpose.as_deref(), Some("AttackSequence"));
        let signals = value["service"]["detection"]["sequence"]["signals"]
            .as_array()
            .unwrap();
        assert_eq!(row.sequence_signal_count, Some(signals.len() as i32));
        let seconds = |member: &str| -> Vec<i64> {
            signals
                .iter()
                .map(|s| (s[member].as_f64().unwrap() * 1000.0) as i64)
                .collect()
        };
        assert_eq!(
            row.sequence_first_seen_ms,
            seconds("firstSeenAt").into_iter().min()
        );
        assert_eq!(
            row.sequence_last_seen_ms,
            seconds("lastSeenAt").into_iter().max()
        );
        assert!(row.sequence_first_seen_ms < row.sequence_last_seen_ms);
        // Other findings have none; milliseconds and ISO text are read as well.
        let (other, _) = fixture("port_probe_instance.json");
        let plain = normalize(&other, String::new()).unwrap();
        assert_eq!(
            (plain.sequence_signal_count, plain.sequence_first_seen_ms),
            (None, None)
        );
        assert_eq!(
            model_time_ms(&serde_json::json!(1795169280123i64)),
            Some(1795169280123)
        );
        assert_eq!(
            model_time_ms(&serde_json::json!(1795169280.5)),
            Some(1795169280500)
        );
        assert_eq!(
            model_time_ms(&serde_json::json!("2026-11-20T10:08:00.000Z")),
            Some(1795169280000)
        );
    }

    #[test]
    fn the_sample_flag_is_read_in_every_form() {
        let (mut value, _) = fixture("port_probe_instance.json");
        let forms = [
            (
                serde_json::json!({"value": "{\"sample\":true}", "type": "default"}),
                true,
            ),
            (serde_json::json!({"sample": true}), true),
            (serde_json::json!({"value": {"sample": true}}), true),
            (serde_json::json!({"sample": false, "value": "{}"}), false),
            (
                serde_json::json!({"value": "not json", "type": "default"}),
                false,
            ),
            (serde_json::json!({"threatListName": "x"}), false),
        ];
        for (info, expected) in forms {
            value["service"]["additionalInfo"] = info.clone();
            let row = normalize(&value, String::new()).unwrap();
            assert_eq!(row.sample, expected, "{info}");
        }
    }

    #[test]
    fn severity_bands_follow_guardduty() {
        let cases = [
            (1.0, "Low"),
            (3.9, "Low"),
            (4.0, "Medium"),
            (6.9, "Medium"),
            (7.0, "High"),
            (8.9, "High"),
            (9.0, "Critical"),
            (10.0, "Critical"),
        ];
        for (severity, label) in cases {
            assert_eq!(severity_label(severity), label, "{severity}");
        }
    }

    #[test]
    fn unknown_types_and_fields_flow_through() {
        let (mut value, _) = fixture("network_instance.json");
        value["type"] = "NewPurpose:Bedrock/Something.Unseen".into();
        value["resource"]["resourceType"] = "BedrockModel".into();
        value["service"]["action"]["actionType"] = "MODEL_INVOCATION".into();
        value["brandNewMember"] = serde_json::json!({"nested": [1, 2]});
        let raw = value.to_string();
        let row = normalize(&value, raw.clone()).unwrap();
        assert_eq!(row.resource_type_affected.as_deref(), Some("Bedrock"));
        assert_eq!(row.resource_type.as_deref(), Some("BedrockModel"));
        assert_eq!(row.action_type.as_deref(), Some("MODEL_INVOCATION"));
        assert!(row.raw.contains("brandNewMember"));
    }

    #[test]
    fn malformed_findings_get_a_reason() {
        let (value, _) = fixture("dns_instance.json");
        let mut no_id = value.clone();
        no_id.as_object_mut().unwrap().remove("id");
        assert_eq!(
            normalize(&no_id, String::new()),
            Err(Malformed::MissingString("id"))
        );
        let mut bad_time = value.clone();
        bad_time["updatedAt"] = "yesterday".into();
        assert!(matches!(
            normalize(&bad_time, String::new()),
            Err(Malformed::BadTimestamp {
                member: "updatedAt",
                ..
            })
        ));
        let mut bad_severity = value;
        bad_severity["severity"] = "high".into();
        assert_eq!(
            normalize(&bad_severity, String::new()),
            Err(Malformed::MissingNumber("severity"))
        );
        assert_eq!(
            normalize(&Value::from(3), String::new()),
            Err(Malformed::NotAnObject)
        );
    }

    #[test]
    fn every_fixture_builds_a_batch_with_the_schema_columns() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/guardduty/examples");
        let mut rows = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let raw = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            rows.push(normalize(&serde_json::from_str(&raw).unwrap(), raw).unwrap());
        }
        let stamp = RunStamp {
            run_id: "r".into(),
            collected_at_ms: 0,
        };
        let batch = to_record_batch(&rows, &stamp, &[]).unwrap();
        assert_eq!(batch.num_rows(), rows.len());
        assert_eq!(batch.schema(), schema::findings().arrow_schema());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever JSON arrives, normalize answers a row or a reason, and never panics.
            #[test]
            fn normalize_never_panics(severity in proptest::num::f64::ANY, drop in 0usize..12, garbage in ".{0,20}") {
                let (mut value, _) = fixture("api_access_key.json");
                value["severity"] = serde_json::json!(severity);
                let keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
                if let Some(key) = keys.get(drop) { value[key.as_str()] = Value::String(garbage.clone()); }
                let raw = value.to_string();
                match normalize(&value, raw.clone()) {
                    // A row only from a finding whose required members are usable, and exactly
                    // what they say.
                    Ok(row) => {
                        prop_assert_eq!(&row.raw, &raw);
                        prop_assert_eq!(Some(row.id.as_str()), value["id"].as_str());
                        prop_assert_eq!(Some(row.finding_type.as_str()), value["type"].as_str());
                        prop_assert_eq!(Some(row.severity), value["severity"].as_f64());
                        prop_assert!(row.severity.is_finite());
                    }
                    // Otherwise a reason that says what is wrong.
                    Err(reason) => prop_assert!(!reason.to_string().is_empty()),
                }
            }
        }
    }
}
