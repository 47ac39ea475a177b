//! The lake's object store: a local directory or an S3 bucket and prefix, with the conditional
//! operations the publish protocol (`crate::state::journal`, `crate::state::lock`) is built on.
//!
//! S3 facts: `If-None-Match: *` and `If-Match: <etag>` on PutObject / CompleteMultipartUpload
//! answer 412 on conflict; multipart parts are 5 MiB–5 GiB. The local store gives the same
//! guarantees with a hard link (fails if the name exists) and an atomic rename, a compare-and-swap
//! serialised by an advisory lock, and temporary files kept under `_staging/.tmp/`, outside every
//! table location.

use std::path::{Path, PathBuf};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, EncodingType, ServerSideEncryption,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use tokio::io::AsyncReadExt;
use tracing::warn;

/// The code of an answer that carried none: its HTTP status (`HTTP 503`). API errors and S3
/// store errors are named the same way.
pub fn http_code(status: u16) -> String {
    format!("HTTP {status}")
}

/// Default multipart threshold and part size: uploads above it use multipart, in parts of it.
/// S3 parts must be 5 MiB to 5 GiB (all but the last).
pub const MULTIPART_PART_BYTES: u64 = 16 << 20;

/// Where the local store keeps files while they are written (never inside a table location).
const LOCAL_TMP: &str = "_staging/.tmp";

#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {message}")]
pub struct StoreError {
    pub key: String,
    pub message: String,
    /// The service's error code (`AccessDenied`, `SlowDown`, …), `HTTP <status>` when the answer
    /// had none, `Timeout` / `DispatchFailure` when no answer came; `None` for local errors.
    /// [`crate::error::classify_store`] reads it.
    pub code: Option<String>,
}

impl StoreError {
    pub fn new(key: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self {
            key: key.into(),
            message: message.to_string(),
            code: None,
        }
    }
}

/// A conditional write lost: the object existed, or changed since it was read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PutError {
    #[error("{0} changed or exists (precondition failed)")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type S3Error<E> = SdkError<E, HttpResponse>;

/// An S3 error as a store error that keeps the service's code (or the HTTP status) for the
/// classifier, instead of only its text.
fn sdk_error<E>(key: &str, err: S3Error<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = match &err {
        SdkError::ServiceError(service) => service
            .err()
            .code()
            .map(str::to_owned)
            .or_else(|| Some(http_code(service.raw().status().as_u16()))),
        SdkError::TimeoutError(_) => Some("Timeout".to_owned()),
        SdkError::DispatchFailure(_) => Some("DispatchFailure".to_owned()),
        SdkError::ResponseError(response) => Some(http_code(response.raw().status().as_u16())),
        _ => None,
    };
    StoreError {
        key: key.to_owned(),
        message: aws_smithy_types::error::display::DisplayErrorContext(err).to_string(),
        code,
    }
}

/// The largest object read whole into memory (state, journals, trail log objects): a
/// CloudTrail log object is a few MiB compressed, state a few KiB.
pub const MAX_GET_BYTES: u64 = 128 << 20;

/// A key as ListObjectsV2 returns it with `encoding-type=url` (percent-encoded, `+` for a
/// space), decoded; `None` when it is not UTF-8 once decoded. Listing encoded keeps a key with
/// characters XML cannot carry (a NUL) from breaking the whole page.
pub fn url_decoded(listed: &str) -> Option<String> {
    let bytes = listed.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = listed.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// True when an S3 error is a failed precondition (412) or a conditional-write conflict (409).
fn is_precondition_failure<E>(err: &S3Error<E>) -> bool {
    match err {
        SdkError::ServiceError(service) => {
            matches!(service.raw().status().as_u16(), 409 | 412)
        }
        _ => false,
    }
}

/// Whether a key stays inside the lake: relative, no `.` or `..` segment, no backslash, no
/// control character. Keys read from state, journals and listings are checked with it.
pub fn is_safe_key(key: &str) -> bool {
    !key.starts_with('/')
        && !key.contains('\\')
        && !key.chars().any(char::is_control)
        && key
            .split('/')
            .all(|segment| segment != ".." && segment != ".")
}

/// The version tag of an object: the S3 ETag, or a hash of the local file's bytes.
pub type Tag = String;

fn content_tag(bytes: &[u8]) -> Tag {
    // FNV-1a: enough to tell two versions of a small state object apart.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}-{}", bytes.len())
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
        /// Multipart threshold and part size in bytes (at least 5 MiB).
        part_bytes: u64,
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

    /// A key as a path under the local root: a key that could leave it (`..`, absolute, a
    /// backslash or a control character) is refused, whatever it came from.
    fn under_root(root: &Path, key: &str) -> Result<PathBuf, StoreError> {
        if is_safe_key(key) {
            Ok(root.join(key))
        } else {
            Err(StoreError::new(
                key,
                "refused: the key could leave the lake",
            ))
        }
    }

    fn local_path(root: &Path, key: &str) -> Result<PathBuf, StoreError> {
        let path = Self::under_root(root, key)?;
        let dir = path
            .parent()
            .ok_or_else(|| StoreError::new(key, "key has no directory"))?;
        std::fs::create_dir_all(dir).map_err(|e| StoreError::new(key, e))?;
        Ok(path)
    }

    /// A fresh temporary path under `_staging/.tmp/` for the local store.
    fn local_tmp(root: &Path, key: &str) -> Result<PathBuf, StoreError> {
        let dir = root.join(LOCAL_TMP);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::new(key, e))?;
        Ok(dir.join(format!("{}-{}", std::process::id(), uuid::Uuid::new_v4())))
    }

    fn put_request(
        &self,
        key: &str,
        body: ByteStream,
    ) -> Option<aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder> {
        let Self::S3 {
            client,
            bucket,
            sse_kms_key_id,
            ..
        } = self
        else {
            return None;
        };
        let mut put = client
            .put_object()
            .bucket(bucket)
            .key(self.s3_key(key))
            .body(body);
        if let Some(kms) = sse_kms_key_id {
            put = put
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(kms);
        }
        Some(put)
    }

    /// Publishes a local file under `key`; fails if `key` exists. Returns its size in bytes.
    pub async fn create_from_file(&self, local: &Path, key: &str) -> Result<u64, PutError> {
        let size = tokio::fs::metadata(local)
            .await
            .map_err(|e| StoreError::new(key, e))?
            .len();
        match self {
            Self::Local { root } => {
                let target = Self::local_path(root, key)?;
                let temp = Self::local_tmp(root, key)?;
                // The local file is finished and never written again: the lake may share it.
                link_or_copy(local, &temp)
                    .await
                    .map_err(|e| StoreError::new(key, e))?;
                let linked = tokio::fs::hard_link(&temp, &target).await;
                let _ = tokio::fs::remove_file(&temp).await;
                match linked {
                    Ok(()) => Ok(size),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Err(PutError::Conflict(key.to_owned()))
                    }
                    Err(e) => Err(StoreError::new(key, e).into()),
                }
            }
            Self::S3 {
                client,
                bucket,
                sse_kms_key_id,
                part_bytes,
                ..
            } => {
                if size <= *part_bytes {
                    let body = ByteStream::from_path(local)
                        .await
                        .map_err(|e| StoreError::new(key, e))?;
                    let put = self
                        .put_request(key, body)
                        .ok_or_else(|| StoreError::new(key, "not S3"))?;
                    match put.if_none_match("*").send().await {
                        Ok(_) => Ok(size),
                        Err(e) if is_precondition_failure(&e) => {
                            Err(PutError::Conflict(key.to_owned()))
                        }
                        Err(e) => Err(sdk_error(key, e).into()),
                    }
                } else {
                    let s3_key = self.s3_key(key);
                    multipart(
                        client,
                        bucket,
                        (key, &s3_key),
                        local,
                        sse_kms_key_id.as_deref(),
                        *part_bytes,
                    )
                    .await?;
                    Ok(size)
                }
            }
        }
    }

    /// Reads an object; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.fetch(key, false).await?.map(|(bytes, _)| bytes))
    }

    /// Reads an object with its version tag, for a later `put_if`. An object over
    /// [`MAX_GET_BYTES`] is an error, not read.
    pub async fn get_tagged(&self, key: &str) -> Result<Option<(Vec<u8>, Tag)>, StoreError> {
        self.fetch(key, true).await
    }

    /// An object and, when `tagged`, its version tag (a local file's is a hash of its bytes,
    /// computed only then: trail objects are read untagged, and hashing each byte cost 1.5% of
    /// an org-trail run).
    async fn fetch(&self, key: &str, tagged: bool) -> Result<Option<(Vec<u8>, Tag)>, StoreError> {
        let too_large = |size: u64| {
            StoreError::new(
                key,
                format!("the object is {size} bytes, over the limit of {MAX_GET_BYTES} (MAX_GET_BYTES); it was not read"),
            )
        };
        match self {
            Self::Local { root } => {
                let path = Self::under_root(root, key)?;
                // The size check and the read in one blocking task: a task each cost the
                // org-trail readers two thread wake-ups per object.
                let read = tokio::task::spawn_blocking(move || read_local(&path))
                    .await
                    .map_err(|e| StoreError::new(key, e))?;
                match read {
                    Ok(Ok(bytes)) => {
                        let tag = match tagged {
                            true => content_tag(&bytes),
                            false => Tag::new(),
                        };
                        Ok(Some((bytes, tag)))
                    }
                    Ok(Err(size)) => Err(too_large(size)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(StoreError::new(key, e)),
                }
            }
            Self::S3 { client, bucket, .. } => match client
                .get_object()
                .bucket(bucket)
                .key(self.s3_key(key))
                .send()
                .await
            {
                Ok(object) => {
                    let size = object.content_length().unwrap_or(0).max(0) as u64;
                    if size > MAX_GET_BYTES {
                        return Err(too_large(size));
                    }
                    let tag = object.e_tag().unwrap_or_default().to_owned();
                    let bytes = object
                        .body
                        .collect()
                        .await
                        .map_err(|e| StoreError::new(key, e))?;
                    Ok(Some((bytes.into_bytes().to_vec(), tag)))
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                Err(e) => Err(sdk_error(key, e)),
            },
        }
    }

    /// Writes an object only if it is still at `expected` (`None`: only if it does not exist).
    /// S3: `If-Match` / `If-None-Match: *`; local: compare and rename under an advisory lock.
    pub async fn put_if(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expected: Option<&Tag>,
    ) -> Result<Tag, PutError> {
        match self {
            Self::Local { root } => {
                let target = Self::local_path(root, key)?;
                let guard = LocalLock::acquire(root).map_err(|e| StoreError::new(key, e))?;
                let current = match std::fs::read(&target) {
                    Ok(current) => Some(content_tag(&current)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(StoreError::new(key, e).into()),
                };
                if current.as_ref() != expected {
                    return Err(PutError::Conflict(key.to_owned()));
                }
                let tag = content_tag(&bytes);
                write_atomically(root, key, &target, &bytes)?;
                drop(guard);
                Ok(tag)
            }
            Self::S3 { .. } => {
                let put = self
                    .put_request(key, ByteStream::from(bytes))
                    .ok_or_else(|| StoreError::new(key, "not S3"))?;
                let put = match expected {
                    Some(tag) => put.if_match(tag),
                    None => put.if_none_match("*"),
                };
                match put.send().await {
                    Ok(output) => Ok(output.e_tag().unwrap_or_default().to_owned()),
                    Err(e) if is_precondition_failure(&e) => {
                        Err(PutError::Conflict(key.to_owned()))
                    }
                    Err(e) => Err(sdk_error(key, e).into()),
                }
            }
        }
    }

    /// Writes an object, replacing it (atomic rename on the local store).
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Self::Local { root } => {
                let target = Self::local_path(root, key)?;
                write_atomically(root, key, &target, &bytes)
            }
            Self::S3 { .. } => {
                let put = self
                    .put_request(key, ByteStream::from(bytes))
                    .ok_or_else(|| StoreError::new(key, "not S3"))?;
                put.send().await.map(|_| ()).map_err(|e| sdk_error(key, e))
            }
        }
    }

    /// Copies `from` to `to`, replacing `to`: idempotent, so a roll-forward can repeat it.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StoreError> {
        match self {
            Self::Local { root } => {
                let target = Self::local_path(root, to)?;
                let temp = Self::local_tmp(root, to)?;
                link_or_copy(&Self::under_root(root, from)?, &temp)
                    .await
                    .map_err(|e| StoreError::new(from, e))?;
                let renamed = tokio::fs::rename(&temp, &target).await;
                // Renaming a link onto another link of the same file (a copy applied again)
                // changes nothing and leaves the temporary link.
                let _ = tokio::fs::remove_file(&temp).await;
                renamed.map_err(|e| StoreError::new(to, e))
            }
            Self::S3 {
                client,
                bucket,
                sse_kms_key_id,
                ..
            } => {
                let source = format!("{bucket}/{}", self.s3_key(from));
                let mut copy = client
                    .copy_object()
                    .bucket(bucket)
                    .key(self.s3_key(to))
                    .copy_source(source);
                if let Some(kms) = sse_kms_key_id {
                    copy = copy
                        .server_side_encryption(ServerSideEncryption::AwsKms)
                        .ssekms_key_id(kms);
                }
                copy.send().await.map(|_| ()).map_err(|e| sdk_error(to, e))
            }
        }
    }

    /// Deletes an object; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Self::Local { root } => {
                match tokio::fs::remove_file(Self::under_root(root, key)?).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(StoreError::new(key, e)),
                }
            }
            Self::S3 { client, bucket, .. } => client
                .delete_object()
                .bucket(bucket)
                .key(self.s3_key(key))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sdk_error(key, e)),
        }
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            Self::Local { root } => Ok(Self::under_root(root, key)?.is_file()),
            Self::S3 { client, bucket, .. } => match client
                .head_object()
                .bucket(bucket)
                .key(self.s3_key(key))
                .send()
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
                Err(e) => Err(sdk_error(key, e)),
            },
        }
    }

    /// Every key under `prefix` (a folder path ending in '/'), with its size in bytes, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.list_after(prefix, None).await
    }

    /// The keys under `prefix` that sort after `start_after` (a whole key, as S3's
    /// `StartAfter`), with their sizes, sorted: listing costs what comes after, not the prefix.
    pub async fn list_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut keys = Vec::new();
        match self {
            Self::Local { root } => {
                let mut stack = vec![Self::under_root(root, prefix)?];
                while let Some(dir) = stack.pop() {
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(entries) => entries,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(StoreError::new(prefix, e)),
                    };
                    for entry in entries {
                        let entry = entry.map_err(|e| StoreError::new(prefix, e))?;
                        let path = entry.path();
                        let meta = entry.metadata().map_err(|e| StoreError::new(prefix, e))?;
                        if meta.is_dir() {
                            stack.push(path);
                        } else if let Ok(relative) = path.strip_prefix(root) {
                            keys.push((relative.to_string_lossy().replace('\\', "/"), meta.len()));
                        }
                    }
                }
            }
            Self::S3 { client, bucket, .. } => {
                let full = self.s3_key(prefix);
                let strip = full.len() - prefix.len();
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(&full)
                    .set_start_after(start_after.map(|key| self.s3_key(key)))
                    .encoding_type(EncodingType::Url)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.try_next().await.map_err(|e| sdk_error(prefix, e))? {
                    for object in page.contents() {
                        let Some(listed) = object.key() else { continue };
                        match url_decoded(listed) {
                            Some(key) if key.starts_with(&full) => keys.push((
                                key[strip..].to_owned(),
                                object.size().unwrap_or(0).max(0) as u64,
                            )),
                            _ => warn!(key = listed, "Passed over a listed key that is not UTF-8 or not under the prefix."),
                        }
                    }
                }
            }
        }
        keys.sort();
        if let Some(after) = start_after {
            keys.retain(|(key, _)| key.as_str() > after);
        }
        Ok(keys)
    }

    /// The names directly under `prefix` (sub-folders and objects, first 1,000), for messages
    /// that say what is there instead of what was expected.
    pub async fn list_children(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        match self {
            Self::Local { root } => match std::fs::read_dir(Self::under_root(root, prefix)?) {
                Ok(entries) => {
                    for entry in entries.flatten().take(1000) {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::new(prefix, e)),
            },
            Self::S3 { client, bucket, .. } => {
                let full = self.s3_key(prefix);
                let page = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(&full)
                    .delimiter("/")
                    .encoding_type(EncodingType::Url)
                    .send()
                    .await
                    .map_err(|e| sdk_error(prefix, e))?;
                let below = |listed: &str| {
                    url_decoded(listed)?
                        .strip_prefix(&full)
                        .map(|k| k.trim_end_matches('/').to_owned())
                };
                names.extend(
                    page.common_prefixes()
                        .iter()
                        .filter_map(|p| p.prefix().and_then(below)),
                );
                names.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key().and_then(below)),
                );
            }
        }
        names.sort();
        Ok(names)
    }

    /// Downloads an object to a local file.
    pub async fn download(&self, key: &str, local: &Path) -> Result<(), StoreError> {
        match self {
            Self::Local { root } => tokio::fs::copy(Self::under_root(root, key)?, local)
                .await
                .map(|_| ())
                .map_err(|e| StoreError::new(key, e)),
            Self::S3 { .. } => {
                let bytes = self
                    .get(key)
                    .await?
                    .ok_or_else(|| StoreError::new(key, "no such object"))?;
                tokio::fs::write(local, bytes)
                    .await
                    .map_err(|e| StoreError::new(key, e))
            }
        }
    }
}

fn write_atomically(root: &Path, key: &str, target: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let temp = Store::local_tmp(root, key)?;
    std::fs::write(&temp, bytes).map_err(|e| StoreError::new(key, e))?;
    std::fs::rename(&temp, target).map_err(|e| StoreError::new(key, e))
}

/// An advisory lock (flock) on `<root>/_state/.cas.lock`, held while a local compare-and-swap
/// runs; the kernel releases it if the process dies.
struct LocalLock(std::fs::File);

impl LocalLock {
    fn acquire(root: &Path) -> std::io::Result<Self> {
        let dir = root.join("_state");
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".cas.lock"))?;
        file.lock()?;
        Ok(Self(file))
    }
}

impl Drop for LocalLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// A second link to `from` at `to`, or (another filesystem, or one without hard links) a copy.
/// For lake files only: they are never written again once staged.
async fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    match tokio::fs::hard_link(from, to).await {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            tokio::fs::copy(from, to).await.map(|_| ())
        }
        linked => linked,
    }
}

/// A local file's bytes, or its size when it is over [`MAX_GET_BYTES`] (not read). The size is
/// the open file's, and the read stops one byte past the limit whatever the file grew to since.
fn read_local(path: &Path) -> std::io::Result<Result<Vec<u8>, u64>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > MAX_GET_BYTES {
        return Ok(Err(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_GET_BYTES + 1).read_to_end(&mut bytes)?;
    match bytes.len() as u64 {
        read if read > MAX_GET_BYTES => Ok(Err(read)),
        _ => Ok(Ok(bytes)),
    }
}

/// Uploads `local` in parts of `part_bytes`, one part in memory at a time.
async fn upload_parts(
    client: &aws_sdk_s3::Client,
    (bucket, key, s3_key): (&str, &str, &str),
    upload_id: &str,
    local: &Path,
    part_bytes: u64,
) -> Result<Vec<CompletedPart>, StoreError> {
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(|e| StoreError::new(key, e))?;
    let mut parts = Vec::new();
    for number in 1.. {
        let mut buffer = Vec::with_capacity(part_bytes as usize);
        (&mut file)
            .take(part_bytes)
            .read_to_end(&mut buffer)
            .await
            .map_err(|e| StoreError::new(key, e))?;
        if buffer.is_empty() {
            break;
        }
        let part = client
            .upload_part()
            .bucket(bucket)
            .key(s3_key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(buffer))
            .send()
            .await
            .map_err(|e| sdk_error(key, e))?;
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(part.e_tag().map(str::to_owned))
                .build(),
        );
        crate::crash::crash_point(crate::crash::CrashPoint::MidMultipart);
    }
    Ok(parts)
}

/// `keys` is (the store key, for errors; the S3 key).
async fn multipart(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    (key, s3_key): (&str, &str),
    local: &Path,
    kms: Option<&str>,
    part_bytes: u64,
) -> Result<(), PutError> {
    let mut create = client.create_multipart_upload().bucket(bucket).key(s3_key);
    if let Some(kms) = kms {
        create = create
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(kms);
    }
    let upload = create.send().await.map_err(|e| sdk_error(key, e))?;
    let upload_id = upload
        .upload_id()
        .ok_or_else(|| StoreError::new(key, "CreateMultipartUpload returned no upload id"))?
        .to_owned();
    let result = async {
        let parts =
            upload_parts(client, (bucket, key, s3_key), &upload_id, local, part_bytes).await?;
        let completed = client
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
            .await;
        match completed {
            Ok(_) => Ok(()),
            Err(e) if is_precondition_failure(&e) => Err(PutError::Conflict(key.to_owned())),
            Err(e) => Err(sdk_error(key, e).into()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_keys_are_url_decoded() {
        assert_eq!(
            url_decoded("a/b%20c+d%2Be%00.gz").as_deref(),
            Some("a/b c d+e\0.gz")
        );
        assert_eq!(url_decoded("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(url_decoded("bad%FF"), None, "not UTF-8");
        assert_eq!(url_decoded("cut%4"), None);
    }

    /// A local object is read whole; one over the limit is refused unread with its size named
    /// (a sparse file: nothing is written or read); a missing one is `None`, not an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_get_reads_bounded_and_missing_is_none() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: root.path().to_owned(),
        };
        std::fs::write(root.path().join("small.json.gz"), b"bytes").unwrap();
        let huge = std::fs::File::create(root.path().join("huge.json.gz")).unwrap();
        huge.set_len(MAX_GET_BYTES + 1).unwrap();
        assert_eq!(
            store.get("small.json.gz").await.unwrap().as_deref(),
            Some(&b"bytes"[..])
        );
        let refused = store.get("huge.json.gz").await.unwrap_err().to_string();
        assert!(
            refused.contains(&format!("{} bytes, over the limit", MAX_GET_BYTES + 1)),
            "{refused}"
        );
        assert_eq!(store.get("gone.json.gz").await.unwrap(), None);
        let (bytes, tag) = store.get_tagged("small.json.gz").await.unwrap().unwrap();
        assert_eq!(
            (bytes.as_slice(), tag),
            (&b"bytes"[..], content_tag(b"bytes"))
        );
    }

    #[tokio::test]
    async fn local_copy_applied_again_keeps_the_file_and_no_temp_link() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: root.path().to_owned(),
        };
        store
            .put("_staging/r/t/a.parquet", b"rows".to_vec())
            .await
            .unwrap();
        // A roll-forward applies a journal's copies again: the target then already is a link
        // to the same file.
        for _ in 0..2 {
            store
                .copy("_staging/r/t/a.parquet", "t/a.parquet")
                .await
                .unwrap();
        }
        store.delete("_staging/r/t/a.parquet").await.unwrap();
        assert_eq!(
            store.get("t/a.parquet").await.unwrap(),
            Some(b"rows".to_vec())
        );
        assert_eq!(temp_files(root.path()), 0);
    }

    /// Files under the local store's temporary directory.
    fn temp_files(root: &Path) -> usize {
        std::fs::read_dir(root.join(LOCAL_TMP)).map_or(0, |d| d.count())
    }

    /// Publishes `source` under `key` as a run does: its size comes back, a second create is
    /// a conflict, nothing temporary stays, and the lake's file outlives `source` (a run
    /// removes its work directory).
    async fn publish_once(store: &Store, root: &Path, source: &Path, key: &str) {
        let bytes = std::fs::read(source).unwrap();
        assert_eq!(
            store.create_from_file(source, key).await.unwrap(),
            bytes.len() as u64
        );
        assert!(matches!(
            store.create_from_file(source, key).await,
            Err(PutError::Conflict(_))
        ));
        assert_eq!(temp_files(root), 0);
        std::fs::remove_file(source).unwrap();
        assert_eq!(store.get(key).await.unwrap(), Some(bytes));
    }

    /// A work directory on another filesystem than the lake (a hard link is refused there):
    /// the file is copied, whole, and nothing temporary stays.
    #[tokio::test]
    async fn local_create_from_another_filesystem_copies() {
        use std::os::unix::fs::MetadataExt;
        let shm = Path::new("/dev/shm");
        let root = tempfile::tempdir().unwrap();
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        if !shm.is_dir() || dev(shm) == dev(root.path()) {
            eprintln!("skipped: no /dev/shm on a filesystem of its own here");
            return;
        }
        let work = tempfile::tempdir_in(shm).unwrap();
        let source = work.path().join("a.parquet");
        std::fs::write(&source, b"rows").unwrap();
        let store = Store::Local {
            root: root.path().to_owned(),
        };
        publish_once(&store, root.path(), &source, "t/a.parquet").await;
    }

    #[tokio::test]
    async fn local_create_refuses_to_overwrite_and_leaves_no_temp_files() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: root.path().to_owned(),
        };
        let source = root.path().join("source.bin");
        std::fs::write(&source, b"hello").unwrap();
        publish_once(&store, root.path(), &source, "t/dt=2026-01-01/a.parquet").await;
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
        assert_eq!(
            store.list("t/").await.unwrap(),
            vec![("t/dt=2026-01-01/a.parquet".to_owned(), 5)]
        );
    }

    #[tokio::test]
    async fn local_compare_and_swap() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: root.path().to_owned(),
        };
        let first = store
            .put_if("_state/lock.json", b"a".to_vec(), None)
            .await
            .unwrap();
        assert!(matches!(
            store.put_if("_state/lock.json", b"b".to_vec(), None).await,
            Err(PutError::Conflict(_))
        ));
        let second = store
            .put_if("_state/lock.json", b"b".to_vec(), Some(&first))
            .await
            .unwrap();
        assert!(matches!(
            store
                .put_if("_state/lock.json", b"c".to_vec(), Some(&first))
                .await,
            Err(PutError::Conflict(_))
        ));
        let (bytes, tag) = store.get_tagged("_state/lock.json").await.unwrap().unwrap();
        assert_eq!((bytes, tag), (b"b".to_vec(), second));
    }
}
