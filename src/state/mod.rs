//! State beside the lake, under `<output>/_state/` (invisible to Athena: leading `_`):
//! checkpoints (a watermark per source, account and region), the run lock ([`lock`]) and the
//! publish journal ([`journal`]) that make a run exactly-once even when it is killed.
//!
//! A run pulls `[watermark - overlap, run start)`; the versions already published inside the
//! overlap are remembered in the checkpoint, so they are skipped instead of written twice.
//! Checkpoints advance only through a committed journal, after the data they cover.

pub mod journal;
pub mod lock;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

pub use crate::crash::{crash_point, set_crash_point, CrashPoint, Phase, Step};

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

impl Watermark {
    /// The checkpoint of a target that failed partway: the watermark stays where this run
    /// started (`start_ms + overlap_ms`, so the next run pulls the same window again), and the
    /// versions this run did publish are remembered, so the next run skips them instead of
    /// writing them twice.
    pub fn hold(
        &self,
        start_ms: i64,
        overlap_ms: i64,
        published_now: impl IntoIterator<Item = (String, i64)>,
    ) -> Watermark {
        let mut published: Vec<(String, i64)> = self
            .published
            .iter()
            .cloned()
            .chain(published_now)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        published.sort();
        Watermark {
            watermark_ms: start_ms + overlap_ms,
            published,
        }
    }
}

/// Object key of a target's state.
pub fn key(source: &str, account_id: &str, region: &str) -> String {
    format!("_state/{source}/{account_id}/{region}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_target_keeps_its_window_and_remembers_what_it_published() {
        let old = Watermark {
            watermark_ms: 10_000,
            published: vec![("a".into(), 9_500)],
        };
        let held = old.hold(
            9_000,
            1_000,
            vec![("b".into(), 3_000), ("c".into(), 12_000)],
        );
        assert_eq!(
            held.watermark_ms, 10_000,
            "the next run pulls the same window"
        );
        assert_eq!(
            held.published,
            vec![
                ("a".into(), 9_500),
                ("b".into(), 3_000),
                ("c".into(), 12_000)
            ]
        );
        // A first run that failed: the next one starts where it started.
        let first = Watermark::default().hold(5_000, 1_000, vec![("d".into(), 5_500)]);
        assert_eq!(first.watermark_ms - 1_000, 5_000);
        // The next complete pull forgets what its overlap cannot return again.
        let next = held.advance(20_000, 1_000, Vec::new());
        assert!(next.published.is_empty());
    }

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

#[cfg(test)]
mod crash_point_tests {
    use super::*;

    /// The names in the `*_POINTS = [...]` and `*_SEQUENCES = [...]` lists of the crash tests.
    fn names_the_crash_tests_kill_at() -> std::collections::BTreeSet<String> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/test_exactly_once.py");
        let text = std::fs::read_to_string(path).unwrap();
        let mut names = std::collections::BTreeSet::new();
        let mut depth = 0usize;
        for line in text.lines() {
            let starts = line
                .split_once(" = [")
                .is_some_and(|(name, _)| name.ends_with("_POINTS") || name.ends_with("_SEQUENCES"))
                && !line.contains(" for ");
            if depth == 0 && !starts {
                continue;
            }
            names.extend(line.split('"').skip(1).step_by(2).map(str::to_owned));
            depth = (depth + line.matches('[').count()).saturating_sub(line.matches(']').count());
        }
        names
    }

    #[test]
    fn the_crash_tests_kill_at_exactly_every_point() {
        let all: std::collections::BTreeSet<String> = CrashPoint::all()
            .into_iter()
            .map(CrashPoint::name)
            .collect();
        assert_eq!(all.len(), CrashPoint::all().len(), "names are unique");
        assert_eq!(names_the_crash_tests_kill_at(), all);
    }
}
