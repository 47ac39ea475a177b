//! The lake's object store: a local directory or an S3 bucket and prefix.
//!
//! Data files are created, never overwritten: locally through a hidden temporary name and a
//! hard link (which fails if the name exists), on S3 with `If-None-Match: *` (412 when the key
//! exists), multipart above a threshold (parts of 5 MiB-5 GiB).

use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use tokio::io::AsyncReadExt;

/// Uploads above this size use multipart; parts are this size too.
pub const MULTIPART_PART_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {message}")]
pub struct StoreError {
    pub key: String,
    pub message: String,
}

fn sdk_text<E: std::error::Error>(err: E) -> String {
    aws_smithy_types::error::display::DisplayErrorContext(err).to_string()
}

fn store_error(key: &str, message: impl std::fmt::Display) -> StoreError {
    StoreError {
        key: key.to_owned(),
        message: message.to_string(),
    }
}

pub enum Store {
    Local {
        root: PathBuf,
    },
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
        sse_kms_key_id: Option<String>,
    },
}

impl Store {
    /// Human-readable location of a key, for reports.
    pub fn uri(&self, key: &str) -> String {
        match self {
            Self::Local { root } => root.join(key).display().to_string(),
            Self::S3 { bucket, .. } => format!("s3://{bucket}/{}", self.s3_key(key)),
        }
    }

    fn s3_key(&self, key: &str) -> String {
        match self {
            Self::S3 { prefix, .. } if !prefix.is_empty() => format!("{prefix}/{key}"),
            _ => key.to_owned(),
        }
    }

    /// Publishes a local file under `key`; fails if `key` exists. Returns its size in bytes.
    pub async fn create_from_file(&self, local: &Path, key: &str) -> Result<u64, StoreError> {
        let size = tokio::fs::metadata(local)
            .await
            .map_err(|e| store_error(key, e))?
            .len();
        match self {
            Self::Local { root } => {
                let target = root.join(key);
                let dir = target
                    .parent()
                    .ok_or_else(|| store_error(key, "key has no directory"))?;
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| store_error(key, e))?;
                let file_name = target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // A name starting with '.' is invisible to Athena and DuckDB's hive reader.
                let hidden = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
                tokio::fs::copy(local, &hidden)
                    .await
                    .map_err(|e| store_error(key, e))?;
                let linked = tokio::fs::hard_link(&hidden, &target).await;
                let _ = tokio::fs::remove_file(&hidden).await;
                linked.map_err(|e| store_error(key, e))?;
                Ok(size)
            }
            Self::S3 {
                client,
                bucket,
                sse_kms_key_id,
                ..
            } => {
                let s3_key = self.s3_key(key);
                if size <= MULTIPART_PART_BYTES {
                    let body = ByteStream::from_path(local)
                        .await
                        .map_err(|e| store_error(key, e))?;
                    let mut put = client
                        .put_object()
                        .bucket(bucket)
                        .key(&s3_key)
                        .body(body)
                        .if_none_match("*");
                    if let Some(kms) = sse_kms_key_id {
                        put = put
                            .server_side_encryption(ServerSideEncryption::AwsKms)
                            .ssekms_key_id(kms);
                    }
                    put.send().await.map_err(|e| {
                        store_error(
                            key,
                            aws_smithy_types::error::display::DisplayErrorContext(e),
                        )
                    })?;
                } else {
                    self.multipart(client, bucket, &s3_key, local, sse_kms_key_id.as_deref())
                        .await
                        .map_err(|m| store_error(key, m))?;
                }
                Ok(size)
            }
        }
    }

    async fn multipart(
        &self,
        client: &aws_sdk_s3::Client,
        bucket: &str,
        s3_key: &str,
        local: &Path,
        kms: Option<&str>,
    ) -> Result<(), String> {
        let mut create = client.create_multipart_upload().bucket(bucket).key(s3_key);
        if let Some(kms) = kms {
            create = create
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(kms);
        }
        let upload = create.send().await.map_err(sdk_text)?;
        let upload_id = upload
            .upload_id()
            .ok_or("CreateMultipartUpload returned no upload id")?
            .to_owned();
        let result = async {
            let mut file = tokio::fs::File::open(local)
                .await
                .map_err(|e| e.to_string())?;
            let mut parts = Vec::new();
            let mut number = 1;
            loop {
                let mut buffer = Vec::with_capacity(MULTIPART_PART_BYTES as usize);
                (&mut file)
                    .take(MULTIPART_PART_BYTES)
                    .read_to_end(&mut buffer)
                    .await
                    .map_err(|e| e.to_string())?;
                if buffer.is_empty() {
                    break;
                }
                let part = client
                    .upload_part()
                    .bucket(bucket)
                    .key(s3_key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(buffer))
                    .send()
                    .await
                    .map_err(sdk_text)?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(str::to_owned))
                        .build(),
                );
                number += 1;
            }
            client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(s3_key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .if_none_match("*")
                .send()
                .await
                .map_err(sdk_text)?;
            Ok::<(), String>(())
        }
        .await;
        if result.is_err() {
            let _ = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(s3_key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// Reads a small object (state); `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::Local { root } => match tokio::fs::read(root.join(key)).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(store_error(key, e)),
            },
            Self::S3 { client, bucket, .. } => {
                match client
                    .get_object()
                    .bucket(bucket)
                    .key(self.s3_key(key))
                    .send()
                    .await
                {
                    Ok(object) => {
                        let bytes = object
                            .body
                            .collect()
                            .await
                            .map_err(|e| store_error(key, e))?;
                        Ok(Some(bytes.into_bytes().to_vec()))
                    }
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                    Err(e) => Err(store_error(
                        key,
                        aws_smithy_types::error::display::DisplayErrorContext(e),
                    )),
                }
            }
        }
    }

    /// Writes a small object (state), replacing it; atomic rename on the local store.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Self::Local { root } => {
                let target = root.join(key);
                let dir = target
                    .parent()
                    .ok_or_else(|| store_error(key, "key has no directory"))?;
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| store_error(key, e))?;
                let temp = dir.join(format!(
                    ".{}.tmp-{}",
                    target
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    std::process::id()
                ));
                tokio::fs::write(&temp, bytes)
                    .await
                    .map_err(|e| store_error(key, e))?;
                tokio::fs::rename(&temp, &target)
                    .await
                    .map_err(|e| store_error(key, e))
            }
            Self::S3 {
                client,
                bucket,
                sse_kms_key_id,
                ..
            } => {
                let mut put = client
                    .put_object()
                    .bucket(bucket)
                    .key(self.s3_key(key))
                    .body(ByteStream::from(bytes));
                if let Some(kms) = sse_kms_key_id {
                    put = put
                        .server_side_encryption(ServerSideEncryption::AwsKms)
                        .ssekms_key_id(kms);
                }
                put.send().await.map(|_| ()).map_err(|e| {
                    store_error(
                        key,
                        aws_smithy_types::error::display::DisplayErrorContext(e),
                    )
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_create_refuses_to_overwrite_and_leaves_no_temp_files() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: root.path().to_owned(),
        };
        let source = root.path().join("source.bin");
        std::fs::write(&source, b"hello").unwrap();
        assert_eq!(
            store
                .create_from_file(&source, "t/dt=2026-01-01/a.parquet")
                .await
                .unwrap(),
            5
        );
        assert!(store
            .create_from_file(&source, "t/dt=2026-01-01/a.parquet")
            .await
            .is_err());
        let names: Vec<String> = std::fs::read_dir(root.path().join("t/dt=2026-01-01"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a.parquet".to_owned()]);
        store.put("_state/x.json", b"{}".to_vec()).await.unwrap();
        assert_eq!(
            store.get("_state/x.json").await.unwrap(),
            Some(b"{}".to_vec())
        );
        assert_eq!(store.get("_state/none.json").await.unwrap(), None);
    }
}
