//! The S3 store against the backend's S3: conditional create, multipart, state round trip.
//! Needs the backend (`make test` starts it) at GUARDLAKE_TEST_ENDPOINT; skipped without it.

use aws_config::{BehaviorVersion, Region};
use guardlake::sink::store::Store;

/// The backend's S3, or `None` (with a one-line reason) when no backend was named: plain
/// `cargo test` on a fresh clone skips this test; `make test` sets `GUARDLAKE_TEST_ENDPOINT`.
async fn s3() -> Option<aws_sdk_s3::Client> {
    let Ok(endpoint) = std::env::var("GUARDLAKE_TEST_ENDPOINT") else {
        eprintln!("skipped: no local AWS backend (GUARDLAKE_TEST_ENDPOINT is unset; `make test` starts one)");
        return None;
    };
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    Some(aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    ))
}

#[tokio::test]
async fn create_is_conditional_and_large_files_go_multipart() {
    let Some(client) = s3().await else {
        return;
    };
    let bucket = format!("store-test-{}", std::process::id());
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let part_bytes = 5 << 20;
    let store = Store::S3 {
        client: client.clone(),
        bucket: bucket.clone(),
        prefix: "lake".into(),
        sse_kms_key_id: None,
        part_bytes,
    };

    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.parquet");
    std::fs::write(&small, b"small file").unwrap();
    assert_eq!(
        store
            .create_from_file(&small, "findings/dt=2026-11-01/a.parquet")
            .await
            .unwrap(),
        10
    );
    let again = store
        .create_from_file(&small, "findings/dt=2026-11-01/a.parquet")
        .await;
    assert!(again.is_err(), "If-None-Match: * refuses to overwrite");

    let large = dir.path().join("large.parquet");
    let content: Vec<u8> = (0..(11u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&large, &content).unwrap();
    store
        .create_from_file(&large, "findings/dt=2026-11-01/b.parquet")
        .await
        .unwrap();
    let object = client
        .get_object()
        .bucket(&bucket)
        .key("lake/findings/dt=2026-11-01/b.parquet")
        .send()
        .await
        .unwrap();
    let e_tag = object.e_tag().unwrap_or_default().to_owned();
    let body = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(body.len(), content.len());
    assert!(
        body.as_ref() == content.as_slice(),
        "multipart upload reassembles the file"
    );
    assert!(e_tag.ends_with("-3\""), "three parts of 5 MiB: {e_tag}");
    let again = store
        .create_from_file(&large, "findings/dt=2026-11-01/b.parquet")
        .await;
    assert!(
        again.is_err(),
        "CompleteMultipartUpload with If-None-Match: * refuses to overwrite"
    );

    assert_eq!(store.get("_state/guardduty/1/r.json").await.unwrap(), None);
    store
        .put("_state/guardduty/1/r.json", b"{\"a\":1}".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get("_state/guardduty/1/r.json").await.unwrap(),
        Some(b"{\"a\":1}".to_vec())
    );
}
