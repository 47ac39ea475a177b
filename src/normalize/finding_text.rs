//! GuardDuty findings normalized from their JSON text, as GetFindings returns it: read in one
//! pass into the members that become columns, borrowed from the text (no tree of values).
//! Members not named here are skipped; they stay in `raw`. A finding of an unusual shape (a
//! nested member of another JSON type than the service model's, a repeated member) is read
//! again as a JSON value by [`guardduty::normalize`], whose rules this module follows exactly;
//! the tests compare the two on every fixture and on mutated findings.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::guardduty::{self, parse_iso_ms, type_parts, FindingVersion, Malformed};

/// A member as it appears in the finding, not yet interpreted (a string, a number, an object…).
type Member<'a> = Option<&'a RawValue>;

/// A member as text, as `guardduty::text` reads a value: a string's contents or a number in
/// serde_json's spelling; anything else (null, a boolean, an object, an array) is `None`.
fn text(member: Member<'_>) -> Option<String> {
    let written = member?.get();
    match written.as_bytes().first()? {
        b'"' => {
            let inner = &written[1..written.len() - 1];
            if memchr::memchr(b'\\', inner.as_bytes()).is_some() {
                serde_json::from_str::<String>(written).ok()
            } else {
                Some(inner.to_owned())
            }
        }
        b'-' | b'0'..=b'9' => serde_json::from_str::<serde_json::Number>(written)
            .ok()
            .map(|n| n.to_string()),
        _ => None,
    }
}

fn number(member: Member<'_>) -> Option<serde_json::Number> {
    let written = member?.get();
    matches!(written.as_bytes().first()?, b'-' | b'0'..=b'9')
        .then(|| serde_json::from_str(written).ok())
        .flatten()
}

fn float(member: Member<'_>) -> Option<f64> {
    number(member)?.as_f64()
}

fn int(member: Member<'_>) -> Option<i64> {
    number(member)?.as_i64()
}

fn flag(member: Member<'_>) -> Option<bool> {
    match member?.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn port(member: Option<&WirePort<'_>>) -> Option<i64> {
    int(member?.port)
}

fn port_i32(port: Option<i64>) -> Option<i32> {
    port.and_then(|p| i32::try_from(p).ok())
}

fn required_text(member: Member<'_>, name: &'static str) -> Result<String, Malformed> {
    match member.map(RawValue::get) {
        Some(written) if written.starts_with('"') => {
            text(member).ok_or(Malformed::MissingString(name))
        }
        _ => Err(Malformed::MissingString(name)),
    }
}

fn required_time(member: Member<'_>, name: &'static str) -> Result<i64, Malformed> {
    let raw = required_text(member, name)?;
    parse_iso_ms(&raw).ok_or(Malformed::BadTimestamp {
        member: name,
        value: raw,
    })
}

/// An attack-sequence time: epoch seconds (milliseconds past year 5138) or ISO-8601 text.
fn model_time_ms(member: Member<'_>) -> Option<i64> {
    let written = member?.get();
    if written.starts_with('"') {
        return parse_iso_ms(&text(member)?);
    }
    let n = float(member)?;
    let ms = if n.abs() >= 1e11 { n } else { n * 1000.0 };
    ms.is_finite().then_some(ms.round() as i64)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(borrow)]
    id: Member<'a>,
    #[serde(borrow)]
    arn: Member<'a>,
    #[serde(borrow)]
    account_id: Member<'a>,
    #[serde(borrow)]
    region: Member<'a>,
    #[serde(borrow)]
    partition: Member<'a>,
    #[serde(rename = "type", borrow)]
    kind: Member<'a>,
    #[serde(borrow)]
    severity: Member<'a>,
    #[serde(borrow)]
    confidence: Member<'a>,
    #[serde(borrow)]
    title: Member<'a>,
    #[serde(borrow)]
    description: Member<'a>,
    #[serde(borrow)]
    created_at: Member<'a>,
    #[serde(borrow)]
    updated_at: Member<'a>,
    #[serde(borrow)]
    schema_version: Member<'a>,
    #[serde(borrow)]
    resource: Option<WireResource<'a>>,
    #[serde(borrow)]
    service: Option<WireService<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResource<'a> {
    #[serde(borrow)]
    resource_type: Member<'a>,
    #[serde(borrow)]
    instance_details: Option<WireInstance<'a>>,
    #[serde(borrow)]
    access_key_details: Option<WireAccessKey<'a>>,
    #[serde(borrow)]
    kubernetes_details: Option<WireKubernetes<'a>>,
    #[serde(borrow)]
    rds_db_user_details: Option<WireDbUser<'a>>,
    #[serde(borrow)]
    s3_bucket_details: Option<Vec<WireName<'a>>>,
    #[serde(borrow)]
    eks_cluster_details: Option<WireName<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireInstance<'a> {
    #[serde(borrow)]
    instance_id: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAccessKey<'a> {
    #[serde(borrow)]
    access_key_id: Member<'a>,
    #[serde(borrow)]
    principal_id: Member<'a>,
    #[serde(borrow)]
    user_name: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireKubernetes<'a> {
    #[serde(borrow)]
    kubernetes_user_details: Option<WireKubernetesUser<'a>>,
}

#[derive(Deserialize)]
struct WireKubernetesUser<'a> {
    #[serde(borrow)]
    username: Member<'a>,
}

#[derive(Deserialize)]
struct WireDbUser<'a> {
    #[serde(borrow)]
    user: Member<'a>,
}

#[derive(Deserialize)]
struct WireName<'a> {
    #[serde(borrow)]
    name: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireService<'a> {
    #[serde(borrow)]
    archived: Member<'a>,
    #[serde(borrow)]
    count: Member<'a>,
    #[serde(borrow)]
    event_first_seen: Member<'a>,
    #[serde(borrow)]
    event_last_seen: Member<'a>,
    #[serde(borrow)]
    detector_id: Member<'a>,
    #[serde(borrow)]
    feature_name: Member<'a>,
    #[serde(borrow)]
    action: Option<WireAction<'a>>,
    #[serde(borrow)]
    additional_info: Option<WireInfo<'a>>,
    #[serde(borrow)]
    detection: Option<WireDetection<'a>>,
}

/// `additionalInfo`: the sample flag as a member, or inside `value` (JSON text or an object).
#[derive(Deserialize)]
struct WireInfo<'a> {
    #[serde(borrow)]
    sample: Member<'a>,
    #[serde(borrow)]
    value: Member<'a>,
}

#[derive(Deserialize)]
struct WireSample<'a> {
    #[serde(borrow)]
    sample: Member<'a>,
}

#[derive(Deserialize)]
struct WireDetection<'a> {
    #[serde(borrow)]
    sequence: Option<WireSequence<'a>>,
}

#[derive(Deserialize)]
struct WireSequence<'a> {
    #[serde(borrow)]
    signals: Option<Vec<WireSignal<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSignal<'a> {
    #[serde(borrow)]
    first_seen_at: Member<'a>,
    #[serde(borrow)]
    last_seen_at: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAction<'a> {
    #[serde(borrow)]
    action_type: Member<'a>,
    #[serde(borrow)]
    aws_api_call_action: Option<WireApiCall<'a>>,
    #[serde(borrow)]
    network_connection_action: Option<WireConnection<'a>>,
    #[serde(borrow)]
    kubernetes_api_call_action: Option<WireRemoteOf<'a>>,
    #[serde(borrow)]
    rds_login_attempt_action: Option<WireRemoteOf<'a>>,
    #[serde(borrow)]
    port_probe_action: Option<WirePortProbe<'a>>,
    #[serde(borrow)]
    dns_request_action: Option<WireDns<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireApiCall<'a> {
    #[serde(borrow)]
    api: Member<'a>,
    #[serde(borrow)]
    service_name: Member<'a>,
    #[serde(borrow)]
    caller_type: Member<'a>,
    #[serde(borrow)]
    remote_ip_details: Option<WireRemote<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireConnection<'a> {
    #[serde(borrow)]
    remote_ip_details: Option<WireRemote<'a>>,
    #[serde(borrow)]
    local_port_details: Option<WirePort<'a>>,
    #[serde(borrow)]
    remote_port_details: Option<WirePort<'a>>,
    #[serde(borrow)]
    protocol: Member<'a>,
    #[serde(borrow)]
    connection_direction: Member<'a>,
    #[serde(borrow)]
    blocked: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRemoteOf<'a> {
    #[serde(borrow)]
    remote_ip_details: Option<WireRemote<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePortProbe<'a> {
    #[serde(borrow)]
    port_probe_details: Option<Vec<WireProbe<'a>>>,
    #[serde(borrow)]
    blocked: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireProbe<'a> {
    #[serde(borrow)]
    local_port_details: Option<WirePort<'a>>,
    #[serde(borrow)]
    remote_ip_details: Option<WireRemote<'a>>,
}

#[derive(Deserialize)]
struct WireDns<'a> {
    #[serde(borrow)]
    protocol: Member<'a>,
    #[serde(borrow)]
    blocked: Member<'a>,
}

#[derive(Deserialize)]
struct WirePort<'a> {
    #[serde(borrow)]
    port: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRemote<'a> {
    #[serde(borrow)]
    ip_address_v4: Member<'a>,
    #[serde(borrow)]
    ip_address_v6: Member<'a>,
    #[serde(borrow)]
    country: Option<WireCountry<'a>>,
    #[serde(borrow)]
    city: Option<WireCity<'a>>,
    #[serde(borrow)]
    organization: Option<WireOrganization<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCountry<'a> {
    #[serde(borrow)]
    country_name: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCity<'a> {
    #[serde(borrow)]
    city_name: Member<'a>,
}

#[derive(Deserialize)]
struct WireOrganization<'a> {
    #[serde(borrow)]
    asn: Member<'a>,
    #[serde(borrow)]
    org: Member<'a>,
}

/// Why a finding's text could not be normalized: not kept, not JSON at all, or JSON without
/// what a finding needs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unreadable {
    /// Its text was not kept or is not UTF-8 (the source says why).
    #[error("{0}")]
    Unusable(String),
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error(transparent)]
    Malformed(#[from] Malformed),
}

/// Normalizes one finding from its exact JSON text, which becomes `raw`.
pub fn normalize_text(raw: String) -> Result<FindingVersion, Unreadable> {
    let row = normalize_str(&raw)?;
    Ok(FindingVersion { raw, ..row })
}

/// [`normalize_text`] without keeping the text: `raw` of the row is empty.
pub fn normalize_str(raw: &str) -> Result<FindingVersion, Unreadable> {
    match serde_json::from_str::<Wire<'_>>(raw) {
        Ok(wire) => Ok(build(wire)?),
        Err(_) => {
            let value: Value =
                serde_json::from_str(raw).map_err(|e| Unreadable::NotJson(e.to_string()))?;
            Ok(guardduty::normalize(&value, String::new())?)
        }
    }
}

fn build(wire: Wire<'_>) -> Result<FindingVersion, Malformed> {
    let id = required_text(wire.id, "id")?;
    let account_id = required_text(wire.account_id, "accountId")?;
    let region = required_text(wire.region, "region")?;
    let finding_type = required_text(wire.kind, "type")?;
    let severity = float(wire.severity).ok_or(Malformed::MissingNumber("severity"))?;
    let created_at_ms = required_time(wire.created_at, "createdAt")?;
    let updated_at_ms = required_time(wire.updated_at, "updatedAt")?;
    let (threat_purpose, resource_type_affected) = type_parts(&finding_type);
    let mut row = FindingVersion {
        arn: text(wire.arn),
        partition: text(wire.partition),
        threat_purpose,
        resource_type_affected,
        severity,
        confidence: float(wire.confidence),
        title: text(wire.title),
        description: text(wire.description),
        created_at_ms,
        updated_at_ms,
        schema_version: text(wire.schema_version),
        id,
        account_id,
        region,
        finding_type,
        ..FindingVersion::default()
    };
    if let Some(resource) = &wire.resource {
        fill_resource(&mut row, resource);
    }
    if let Some(service) = &wire.service {
        fill_service(&mut row, service);
    }
    Ok(row)
}

fn fill_resource(row: &mut FindingVersion, resource: &WireResource<'_>) {
    let key = resource.access_key_details.as_ref();
    row.resource_type = text(resource.resource_type);
    row.instance_id = text(
        resource
            .instance_details
            .as_ref()
            .and_then(|i| i.instance_id),
    );
    row.access_key_id = text(key.and_then(|k| k.access_key_id));
    row.principal_id = text(key.and_then(|k| k.principal_id));
    row.user_name = text(key.and_then(|k| k.user_name))
        .or_else(|| {
            let user = resource.kubernetes_details.as_ref()?;
            text(user.kubernetes_user_details.as_ref()?.username)
        })
        .or_else(|| text(resource.rds_db_user_details.as_ref()?.user));
    row.s3_bucket_names = resource
        .s3_bucket_details
        .as_ref()
        .map(|buckets| buckets.iter().filter_map(|b| text(b.name)).collect());
    row.eks_cluster_name = text(resource.eks_cluster_details.as_ref().and_then(|e| e.name));
}

fn fill_service(row: &mut FindingVersion, service: &WireService<'_>) {
    row.archived = flag(service.archived);
    row.count = int(service.count);
    row.event_first_seen_ms = text(service.event_first_seen).and_then(|t| parse_iso_ms(&t));
    row.event_last_seen_ms = text(service.event_last_seen).and_then(|t| parse_iso_ms(&t));
    row.detector_id = text(service.detector_id);
    row.feature_name = text(service.feature_name);
    row.sample = service.additional_info.as_ref().is_some_and(sample_flag);
    if let Some(action) = &service.action {
        fill_action(row, action);
    }
    let signals = service
        .detection
        .as_ref()
        .and_then(|d| d.sequence.as_ref())
        .and_then(|s| s.signals.as_ref());
    if let Some(signals) = signals {
        row.sequence_signal_count = Some(signals.len().min(i32::MAX as usize) as i32);
        row.sequence_first_seen_ms = signals
            .iter()
            .filter_map(|s| model_time_ms(s.first_seen_at))
            .min();
        row.sequence_last_seen_ms = signals
            .iter()
            .filter_map(|s| model_time_ms(s.last_seen_at))
            .max();
    }
}

/// The sample flag as a member, else inside `value` (JSON text or an object).
fn sample_flag(info: &WireInfo<'_>) -> bool {
    // A repeated `sample` fails the one-pass read; the value reader keeps the last, as ever.
    let from = |text: &str| match serde_json::from_str::<WireSample<'_>>(text) {
        Ok(sample) => flag(sample.sample),
        Err(_) => serde_json::from_str::<Value>(text)
            .ok()?
            .get("sample")?
            .as_bool(),
    };
    flag(info.sample)
        .or_else(|| {
            let written = info.value?.get();
            match written.as_bytes().first()? {
                b'"' => from(&text(info.value)?),
                b'{' => from(written),
                _ => None,
            }
        })
        .unwrap_or(false)
}

fn fill_action(row: &mut FindingVersion, action: &WireAction<'_>) {
    let api = action.aws_api_call_action.as_ref();
    let connection = action.network_connection_action.as_ref();
    let probe = action.port_probe_action.as_ref();
    let first_probe = probe
        .and_then(|p| p.port_probe_details.as_ref())
        .and_then(|d| d.first());
    let dns = action.dns_request_action.as_ref();
    row.action_type = text(action.action_type);
    row.api = text(api.and_then(|a| a.api));
    row.service_name = text(api.and_then(|a| a.service_name));
    row.caller_type = text(api.and_then(|a| a.caller_type));
    let remote = api
        .and_then(|a| a.remote_ip_details.as_ref())
        .or_else(|| connection.and_then(|c| c.remote_ip_details.as_ref()))
        .or_else(|| {
            action
                .kubernetes_api_call_action
                .as_ref()
                .and_then(|k| k.remote_ip_details.as_ref())
        })
        .or_else(|| {
            action
                .rds_login_attempt_action
                .as_ref()
                .and_then(|r| r.remote_ip_details.as_ref())
        })
        .or_else(|| first_probe.and_then(|p| p.remote_ip_details.as_ref()));
    if let Some(remote) = remote {
        row.remote_ip = text(remote.ip_address_v4).or_else(|| text(remote.ip_address_v6));
        row.remote_country = text(remote.country.as_ref().and_then(|c| c.country_name));
        row.remote_city = text(remote.city.as_ref().and_then(|c| c.city_name));
        row.remote_asn = text(remote.organization.as_ref().and_then(|o| o.asn));
        row.remote_org = text(remote.organization.as_ref().and_then(|o| o.org));
    }
    row.local_port = port_i32(
        port(connection.and_then(|c| c.local_port_details.as_ref()))
            .or_else(|| port(first_probe.and_then(|p| p.local_port_details.as_ref()))),
    );
    row.remote_port = port_i32(port(
        connection.and_then(|c| c.remote_port_details.as_ref()),
    ));
    row.protocol =
        text(connection.and_then(|c| c.protocol)).or_else(|| text(dns.and_then(|d| d.protocol)));
    row.connection_direction = text(connection.and_then(|c| c.connection_direction));
    row.blocked = flag(connection.and_then(|c| c.blocked))
        .or_else(|| flag(probe.and_then(|p| p.blocked)))
        .or_else(|| flag(dns.and_then(|d| d.blocked)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::drift::{check, check_text, Drift};
    use crate::normalize::guardduty::normalize;
    use std::path::Path;

    fn fixtures() -> Vec<(String, Value, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/guardduty/examples");
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|path| {
                let raw = std::fs::read_to_string(&path).unwrap();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, serde_json::from_str(&raw).unwrap(), raw)
            })
            .collect()
    }

    #[test]
    fn every_fixture_is_read_in_one_pass_as_the_value_reader_reads_it() {
        let all = fixtures();
        assert!(all.len() >= 10, "the examples are there");
        for (name, value, raw) in all {
            // The one-pass reader takes every real finding shape (no fallback to a value).
            let wire = serde_json::from_str::<Wire<'_>>(&raw)
                .unwrap_or_else(|e| panic!("{name}: the one-pass reader refused it: {e}"));
            let expected = normalize(&value, raw.clone()).unwrap();
            let fast = build(wire).unwrap();
            assert_eq!(
                fast,
                FindingVersion {
                    raw: String::new(),
                    ..expected.clone()
                },
                "{name}"
            );
            assert_eq!(normalize_text(raw).unwrap(), expected, "{name}");
        }
    }

    #[test]
    fn unusual_shapes_fall_back_and_text_that_is_not_json_says_so() {
        let (_, _, raw) = fixtures().remove(0);
        // A repeated member: the value reader keeps the last one, and so does normalize_text.
        let repeated = raw.replacen('{', r#"{"severity": 1.5, "#, 1);
        let value: Value = serde_json::from_str(&repeated).unwrap();
        assert!(serde_json::from_str::<Wire<'_>>(&repeated).is_err());
        assert_eq!(
            normalize_text(repeated.clone()).unwrap(),
            normalize(&value, repeated.clone()).unwrap()
        );
        assert_eq!(
            normalize_text(repeated.clone()).unwrap().severity,
            value["severity"].as_f64().unwrap()
        );
        // A repeated `sample` inside additionalInfo's JSON text: the last one counts.
        let twice = raw.replacen(
            "\"service\": {",
            r#""service": {"additionalInfo": {"value": "{\"sample\":false,\"sample\":true}"}, "#,
            1,
        );
        let value: Value = serde_json::from_str(&twice).unwrap();
        assert!(normalize(&value, String::new()).unwrap().sample);
        assert!(normalize_text(twice).unwrap().sample);
        assert!(matches!(
            normalize_text("{\"id\": ".into()),
            Err(Unreadable::NotJson(_))
        ));
        assert_eq!(
            normalize_text("[1]".into()),
            Err(Unreadable::Malformed(Malformed::NotAnObject))
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Every node of a value, as JSON pointers.
        fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
            match value {
                Value::Object(members) => members.iter().for_each(|(k, v)| {
                    pointers(
                        v,
                        format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                        out,
                    )
                }),
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .for_each(|(i, v)| pointers(v, format!("{at}/{i}"), out)),
                _ => {}
            }
            out.push(at);
        }

        fn replacement() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                Just(serde_json::json!(0)),
                Just(serde_json::json!(-1.5)),
                Just(serde_json::json!(1e20)),
                Just(serde_json::json!(70_000)),
                Just(serde_json::json!(1_700_000_000.25)),
                Just(serde_json::json!(true)),
                Just(serde_json::json!("2025-01-02T03:04:05.678Z")),
                Just(serde_json::json!({})),
                Just(serde_json::json!([])),
                Just(serde_json::json!([{}])),
                Just(serde_json::json!({"name": "n", "port": 22, "sample": true})),
                ".{0,12}".prop_map(Value::String),
            ]
        }

        fn sorted(mut found: Vec<Drift>) -> Vec<Drift> {
            found.sort_by(|a, b| (&a.path, a.kind, &a.example).cmp(&(&b.path, b.kind, &b.example)));
            found
        }

        proptest! {
            /// Whatever a member becomes, the one-pass readers (row and drift) agree with the
            /// value readers.
            #[test]
            fn the_text_readers_agree_with_the_value_readers(which in 0usize..64, node in 0usize..4096, with in replacement()) {
                let all = fixtures();
                let (_, mut value, _) = all[which % all.len()].clone();
                let mut paths = Vec::new();
                pointers(&value, String::new(), &mut paths);
                let at = &paths[node % paths.len()];
                if at.is_empty() { value = with; } else { *value.pointer_mut(at).unwrap() = with; }
                let raw = serde_json::to_string_pretty(&value).unwrap();
                prop_assert_eq!(sorted(check_text(&raw)), sorted(check(&value)), "{}", at);
                let expected = normalize(&value, raw.clone()).map_err(Unreadable::from);
                prop_assert_eq!(normalize_text(raw), expected, "{}", at);
            }
        }
    }
}
