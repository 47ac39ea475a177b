//! The names a reader of the lake sees: its tables (top-level folders and Glue tables), the
//! `runs.source` values, and every key format of the lake's files.

use std::fmt::Display;

/// A table of the lake: its folder and its Glue table have this name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Findings,
    Runs,
    CloudtrailEvents,
    FindingEvents,
    SchemaDrift,
    Coverage,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Self::Findings,
        Self::Runs,
        Self::Coverage,
        Self::CloudtrailEvents,
        Self::FindingEvents,
        Self::SchemaDrift,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Findings => "findings",
            Self::Runs => "runs",
            Self::CloudtrailEvents => "cloudtrail_events",
            Self::FindingEvents => "finding_events",
            Self::SchemaDrift => "schema_drift",
            Self::Coverage => "coverage",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The key of `file` in partition `dt` of this table.
    pub fn key(self, dt: impl Display, file: &str) -> String {
        format!("{}/dt={dt}/{file}", self.name())
    }
}

/// guardlake's own folders at the top of a lake (a leading `_` hides them from Athena).
pub const STATE_DIR: &str = "_state";
pub const STAGING_DIR: &str = "_staging";
pub const QUARANTINE_DIR: &str = "_quarantine";

/// Where a run's quarantined records of one kind (`findings`, `cloudtrail`) go.
pub fn quarantine_key(kind: &str, dt: impl Display, run_id: &str) -> String {
    format!("{QUARANTINE_DIR}/{kind}/dt={dt}/{run_id}.jsonl")
}

/// What a target reads; a `runs.source` value and the first folder of its state.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SourceName {
    GuardDuty,
    CloudTrail,
    /// The delivery of a run's alerts (a `runs` row of its own).
    Alerts,
}

impl SourceName {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::GuardDuty => "guardduty",
            Self::CloudTrail => "cloudtrail",
            Self::Alerts => "alerts",
        }
    }
}

impl Display for SourceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_a_schema_file_of_its_name() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        for table in Table::ALL {
            assert!(
                dir.join(format!("{}.json", table.name())).exists(),
                "{table:?}"
            );
            assert_eq!(Table::from_name(table.name()), Some(table));
        }
        assert_eq!(
            Table::Findings.key("2026-11-29", "a.parquet"),
            "findings/dt=2026-11-29/a.parquet"
        );
    }
}
