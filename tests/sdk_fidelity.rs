//! The AWS SDK for Rust against the local backend: every operation guardlake uses parses, and
//! limits, throttling, disabled regions and denied roles surface as the codes AWS sends.
//!
//! Needs the backend (`make test` starts it; by hand: `make emulator`) at
//! `GUARDLAKE_TEST_ENDPOINT`; without that variable each test is skipped with a one-line reason. Run with `--test-threads=1`: each test resets the backend.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_guardduty::error::ProvideErrorMetadata;
use aws_sdk_guardduty::types::{Condition, FindingCriteria};

fn endpoint() -> String {
    std::env::var("GUARDLAKE_TEST_ENDPOINT").unwrap_or_default()
}

/// False (with a one-line reason) when no backend was named: plain `cargo test` on a fresh
/// clone skips these; `make test` starts the backend and sets `GUARDLAKE_TEST_ENDPOINT`.
fn backend() -> bool {
    let named = !endpoint().is_empty();
    if !named {
        eprintln!("skipped: no local AWS backend (GUARDLAKE_TEST_ENDPOINT is unset; `make test` starts one)");
    }
    named
}

/// An unsigned JSON request to the backend's control endpoints.
fn control(method: &str, path: &str, body: &str) -> String {
    let url = endpoint();
    let host = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).expect("backend reachable");
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "{method} {path}: {response}"
    );
    response
}

async fn sdk(region: &str, attempts: u32) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new(region.to_owned()))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(attempts))
        .load()
        .await
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn fixtures() -> Vec<serde_json::Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/guardduty/examples");
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    all.sort();
    all.into_iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn guardduty_operations_parse_in_the_rust_sdk() {
    if !backend() {
        return;
    }
    control("POST", "/moto-api/reset", "");
    let gd = aws_sdk_guardduty::Client::new(&sdk("eu-west-1", 1).await);
    let detector = gd
        .create_detector()
        .enable(true)
        .send()
        .await
        .unwrap()
        .detector_id()
        .unwrap()
        .to_owned();
    let before = now_ms() - 1000;
    let types = [
        "Recon:EC2/PortProbeUnprotectedPort",
        "CredentialAccess:RDS/AnomalousBehavior.SuccessfulLogin",
        "Execution:Runtime/NewBinaryExecuted",
    ];
    gd.create_sample_findings()
        .detector_id(&detector)
        .set_finding_types(Some(types.iter().map(|t| t.to_string()).collect()))
        .send()
        .await
        .unwrap();

    let mut fixtures = fixtures();
    for f in &mut fixtures {
        f["accountId"] = "123456789012".into();
        f["region"] = "eu-west-1".into();
    }
    control("POST", "/moto-api/ext/guardduty/findings", &serde_json::json!({"account_id": "123456789012", "region": "eu-west-1", "findings": fixtures}).to_string());

    let mut ids = Vec::new();
    let mut pages = gd
        .list_findings()
        .detector_id(&detector)
        .max_results(5)
        .into_paginator()
        .send();
    while let Some(page) = pages.try_next().await.unwrap() {
        assert!(page.finding_ids().len() <= 5);
        ids.extend(page.finding_ids().iter().cloned());
    }
    assert_eq!(ids.len(), types.len() + fixtures.len());

    let recent = gd
        .list_findings()
        .detector_id(&detector)
        .finding_criteria(
            FindingCriteria::builder()
                .criterion(
                    "updatedAt",
                    Condition::builder().greater_than_or_equal(before).build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        recent.finding_ids().len(),
        types.len(),
        "only the samples are recent"
    );

    let found = gd
        .get_findings()
        .detector_id(&detector)
        .set_finding_ids(Some(ids.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(found.findings().len(), ids.len());
    let samples: Vec<_> = found
        .findings()
        .iter()
        .filter(|f| {
            recent
                .finding_ids()
                .iter()
                .any(|id| Some(id.as_str()) == f.id())
        })
        .collect();
    for finding in found.findings() {
        assert!(
            finding.resource().and_then(|r| r.resource_type()).is_some(),
            "{:?}",
            finding.id()
        );
    }
    assert_eq!(samples.len(), types.len());
    for sample in &samples {
        assert_eq!(
            sample
                .service()
                .unwrap()
                .additional_info()
                .and_then(|a| a.value()),
            Some("{\"sample\":true}")
        );
    }
    let probe = samples
        .iter()
        .find(|f| f.r#type() == Some(types[0]))
        .unwrap();
    assert_eq!(
        probe.service().unwrap().action().unwrap().action_type(),
        Some("PORT_PROBE")
    );
    let rds = samples
        .iter()
        .find(|f| f.r#type() == Some(types[1]))
        .unwrap();
    assert_eq!(
        rds.resource().unwrap().resource_type(),
        Some("RDSDBInstance")
    );
    assert_eq!(
        rds.service()
            .unwrap()
            .action()
            .unwrap()
            .rds_login_attempt_action()
            .unwrap()
            .login_attributes()
            .len(),
        1
    );

    gd.archive_findings()
        .detector_id(&detector)
        .finding_ids(&ids[0])
        .send()
        .await
        .unwrap();
    let archived = gd
        .list_findings()
        .detector_id(&detector)
        .finding_criteria(
            FindingCriteria::builder()
                .criterion(
                    "service.archived",
                    Condition::builder().equals("true").build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(archived.finding_ids(), &ids[..1]);
    gd.unarchive_findings()
        .detector_id(&detector)
        .finding_ids(&ids[0])
        .send()
        .await
        .unwrap();

    let too_many: Vec<String> = (0..51).map(|i| format!("{i:032x}")).collect();
    let err = gd
        .get_findings()
        .detector_id(&detector)
        .set_finding_ids(Some(too_many))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("BadRequestException"));
}

#[tokio::test]
async fn lookup_events_parses_and_the_third_call_in_a_second_is_throttled() {
    if !backend() {
        return;
    }
    control("POST", "/moto-api/reset", "");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cloudtrail");
    let events: Vec<serde_json::Value> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            serde_json::from_str(&std::fs::read_to_string(e.unwrap().path()).unwrap()).unwrap()
        })
        .collect();
    control(
        "POST",
        "/moto-api/ext/cloudtrail/events",
        &serde_json::json!({"account_id": "123456789012", "region": "eu-west-1", "events": events})
            .to_string(),
    );
    let ct = aws_sdk_cloudtrail::Client::new(&sdk("eu-west-1", 1).await);
    let all = ct.lookup_events().max_results(50).send().await.unwrap();
    assert_eq!(all.events().len(), events.len());
    for event in all.events() {
        let record: serde_json::Value =
            serde_json::from_str(event.cloud_trail_event().unwrap()).unwrap();
        assert_eq!(record["eventID"].as_str(), event.event_id());
        assert!(event.event_time().is_some());
    }
    let times: Vec<_> = all
        .events()
        .iter()
        .map(|e| e.event_time().unwrap().secs())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let third = ct
        .lookup_events()
        .send()
        .await
        .and(ct.lookup_events().send().await);
    let err = third.unwrap_err();
    assert_eq!(err.code(), Some("ThrottlingException"));
}

#[tokio::test]
async fn regions_disabled_regions_and_denied_roles_answer_like_aws() {
    if !backend() {
        return;
    }
    control("POST", "/moto-api/reset", "");
    let account = aws_sdk_account::Client::new(&sdk("us-east-1", 1).await);
    let regions = account.list_regions().max_results(50).send().await.unwrap();
    assert!(regions
        .regions()
        .iter()
        .any(|r| r.region_name() == Some("us-east-1")));
    control(
        "POST",
        "/moto-api/ext/regions",
        r#"{"account_id":"123456789012","region":"eu-west-3","status":"DISABLED"}"#,
    );
    let gd = aws_sdk_guardduty::Client::new(&sdk("eu-west-3", 1).await);
    let err = gd.list_detectors().send().await.unwrap_err();
    assert_eq!(err.code(), Some("UnrecognizedClientException"));
    assert_eq!(
        guardlake::error::classify("ListDetectors", &err).status,
        guardlake::error::TargetStatus::RegionDisabled
    );

    control(
        "POST",
        "/moto-api/ext/deny-assume",
        r#"{"account_id":"444455556666"}"#,
    );
    let sts = aws_sdk_sts::Client::new(&sdk("us-east-1", 1).await);
    let err = sts
        .assume_role()
        .role_arn("arn:aws:iam::444455556666:role/GuardlakeReadOnly")
        .role_session_name("t")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AccessDenied"));
    assert_eq!(
        guardlake::error::classify("AssumeRole", &err).status,
        guardlake::error::TargetStatus::AccessDenied
    );
}

#[tokio::test]
async fn discovery_pages_to_the_end_and_skips_suspended_accounts() {
    if !backend() {
        return;
    }
    control("POST", "/moto-api/reset", "");
    let base = sdk("us-east-1", 3).await;
    let org = aws_sdk_organizations::Client::new(&base);
    org.create_organization().send().await.unwrap();
    let mut created = Vec::new();
    for i in 0..25 {
        let status = org
            .create_account()
            .account_name(format!("a{i}"))
            .email(format!("a{i}@example.com"))
            .send()
            .await
            .unwrap();
        created.push(
            status
                .create_account_status()
                .unwrap()
                .account_id()
                .unwrap()
                .to_owned(),
        );
    }
    org.close_account()
        .account_id(&created[7])
        .send()
        .await
        .unwrap();

    let config = guardlake::config::Config {
        regions: Some(vec!["us-east-1".into()]),
        ..Default::default()
    }
    .validate()
    .unwrap();
    // aws-config reads the endpoint and credentials from the environment `make test` sets.
    let aws = guardlake::aws::Aws::load(&config, "test-run", true)
        .await
        .unwrap();
    let accounts = guardlake::discover::accounts(&aws, &config).await.unwrap();
    assert_eq!(
        accounts.active.len(),
        25,
        "24 members plus the management account, over two pages of 20"
    );
    assert!(!accounts.active.contains(&created[7]));
    assert_eq!(accounts.skipped.len(), 1);
    assert_eq!(accounts.skipped[0].account_id, created[7]);
    assert!(accounts.skipped[0].reason.contains("SUSPENDED"));
}
