//! Incremental state: a watermark per (source, account, region) under `<output>/_state/`.
//!
//! A run pulls `[watermark - overlap, run start)`; the versions already published inside the
//! overlap are remembered here, so they are skipped instead of written twice. Everything about
//! state lives in this module, so the exactly-once work can harden it in one place.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::sink::store::{Store, StoreError};

/// What a target's last successful run published.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watermark {
    /// Everything with updatedAt before this (epoch ms) has been published.
    pub watermark_ms: i64,
    /// (finding id, updatedAt ms) of versions published with updatedAt inside the overlap.
    pub published: Vec<(String, i64)>,
}

impl Watermark {
    /// The versions to skip on the next pull.
    pub fn published_set(&self) -> HashSet<(String, i64)> {
        self.published.iter().cloned().collect()
    }

    /// The next watermark after a complete pull up to `until_ms`: keeps only the versions that
    /// the next run's overlap window can return again.
    pub fn advance(
        &self,
        until_ms: i64,
        overlap_ms: i64,
        new_versions: impl IntoIterator<Item = (String, i64)>,
    ) -> Watermark {
        let keep_from = until_ms - overlap_ms;
        let mut published: Vec<(String, i64)> = self
            .published
            .iter()
            .cloned()
            .chain(new_versions)
            .filter(|(_, updated)| *updated >= keep_from)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        published.sort();
        Watermark {
            watermark_ms: until_ms.max(self.watermark_ms),
            published,
        }
    }
}

/// Object key of a target's state.
pub fn key(source: &str, account_id: &str, region: &str) -> String {
    format!("_state/{source}/{account_id}/{region}.json")
}

pub async fn load(
    store: &Store,
    source: &str,
    account_id: &str,
    region: &str,
) -> Result<Option<Watermark>, StoreError> {
    let key = key(source, account_id, region);
    match store.get(&key).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError {
                key,
                message: format!("state is not valid JSON: {e}"),
            }),
    }
}

pub async fn save(
    store: &Store,
    source: &str,
    account_id: &str,
    region: &str,
    mark: &Watermark,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(mark).map_err(|e| StoreError {
        key: key(source, account_id, region),
        message: e.to_string(),
    })?;
    store.put(&key(source, account_id, region), bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_keeps_only_versions_inside_the_next_overlap() {
        let first = Watermark::default().advance(
            10_000,
            1_000,
            vec![("a".into(), 8_000), ("b".into(), 9_500)],
        );
        assert_eq!(first.watermark_ms, 10_000);
        assert_eq!(first.published, vec![("b".to_owned(), 9_500)]);
        let second = first.advance(20_000, 1_000, vec![("c".into(), 19_999)]);
        assert_eq!(second.published, vec![("c".to_owned(), 19_999)]);
        assert!(second.published_set().contains(&("c".to_owned(), 19_999)));
    }
}
