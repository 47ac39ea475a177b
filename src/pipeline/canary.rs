//! Canaries: proof that the whole path works, not only that detectors exist. `guardlake canary`
//! asks GuardDuty for one sample finding of a chosen type in every covered account × region
//! (CreateSampleFindings, the one write guardlake makes, behind an opt-in permission) and
//! records the request under `_state/canary/<account>/<region>.json`; every later run that
//! collects a sample of that type created after the request marks the canary arrived, with its
//! latency (the collecting run's start less the request). A canary still pending after
//! `canary_wait_secs` is a `canary_missing` gap in `coverage`.

use serde::{Deserialize, Serialize};

use crate::normalize::guardduty::FindingVersion;

/// Arrivals kept per account × region (the newest), and pending canaries at most.
const KEEP: usize = 10;
/// How much earlier than the request a sample may say it was created (clock skew).
const SKEW_MS: i64 = 60_000;

/// The canaries of one account × region.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryState {
    /// Requested, not yet seen, oldest first.
    #[serde(default)]
    pub pending: Vec<Canary>,
    /// Seen, newest last.
    #[serde(default)]
    pub arrived: Vec<Arrival>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub id: String,
    pub finding_type: String,
    pub requested_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrival {
    pub id: String,
    pub finding_id: String,
    pub requested_at_ms: i64,
    pub latency_ms: i64,
}

/// What a coverage row says of the newest canary of its account × region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStatus {
    pub id: String,
    pub requested_at_ms: i64,
    /// Arrived: after how long.
    pub latency_ms: Option<i64>,
    /// Still pending after the wait.
    pub missing: bool,
}

pub const DIR: &str = "_state/canary/";

pub fn key(account_id: &str, region: &str) -> String {
    format!("{DIR}{account_id}/{region}.json")
}

impl CanaryState {
    /// Records a new request (the oldest pending ones beyond [`KEEP`] are dropped).
    pub fn request(&mut self, canary: Canary) {
        self.pending.push(canary);
        let extra = self.pending.len().saturating_sub(KEEP);
        self.pending.drain(..extra);
    }

    /// A new finding version `row`, collected by the run that started at `run_start_ms`: if it
    /// is a sample of a pending canary's type created after its request, that canary arrived.
    pub fn arrive(&mut self, row: &FindingVersion, run_start_ms: i64) -> bool {
        if !row.sample {
            return false;
        }
        let Some(at) = self.pending.iter().position(|c| {
            c.finding_type == row.finding_type && row.created_at_ms >= c.requested_at_ms - SKEW_MS
        }) else {
            return false;
        };
        let canary = self.pending.remove(at);
        self.arrived.push(Arrival {
            latency_ms: (run_start_ms - canary.requested_at_ms).max(0),
            id: canary.id,
            finding_id: row.id.clone(),
            requested_at_ms: canary.requested_at_ms,
        });
        let extra = self.arrived.len().saturating_sub(KEEP);
        self.arrived.drain(..extra);
        true
    }

    /// The newest canary's status at a run that started at `run_start_ms`: pending ones older
    /// than `wait_ms` are missing.
    pub fn status(&self, run_start_ms: i64, wait_ms: i64) -> Option<CanaryStatus> {
        let pending = self.pending.last().map(|c| CanaryStatus {
            id: c.id.clone(),
            requested_at_ms: c.requested_at_ms,
            latency_ms: None,
            missing: c.requested_at_ms + wait_ms <= run_start_ms,
        });
        let arrived = self.arrived.last().map(|a| CanaryStatus {
            id: a.id.clone(),
            requested_at_ms: a.requested_at_ms,
            latency_ms: Some(a.latency_ms),
            missing: false,
        });
        match (pending, arrived) {
            (Some(p), Some(a)) if a.requested_at_ms > p.requested_at_ms => Some(a),
            (Some(p), _) => Some(p),
            (None, a) => a,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(finding_type: &str, created_at_ms: i64, sample: bool) -> FindingVersion {
        FindingVersion {
            id: "f1".into(),
            finding_type: finding_type.into(),
            created_at_ms,
            sample,
            ..FindingVersion::default()
        }
    }

    #[test]
    fn a_sample_of_the_type_after_the_request_answers_it_and_a_late_one_is_missing() {
        let mut state = CanaryState::default();
        state.request(Canary {
            id: "c1".into(),
            finding_type: "Recon:EC2/PortProbeUnprotectedPort".into(),
            requested_at_ms: 1_000_000,
        });
        assert!(
            !state.arrive(
                &sample("Recon:EC2/PortProbeUnprotectedPort", 2_000_000, false),
                3_000_000
            ),
            "not a sample"
        );
        assert!(
            !state.arrive(&sample("Backdoor:EC2/Spambot", 2_000_000, true), 3_000_000),
            "another type"
        );
        assert!(
            !state.arrive(
                &sample("Recon:EC2/PortProbeUnprotectedPort", 100_000, true),
                3_000_000
            ),
            "older than the request"
        );
        let missing = state.status(1_000_000 + 3_600_000, 3_600_000).unwrap();
        assert!(missing.missing && missing.latency_ms.is_none());
        assert!(
            !state.status(1_000_001, 3_600_000).unwrap().missing,
            "still within the wait"
        );
        assert!(state.arrive(
            &sample("Recon:EC2/PortProbeUnprotectedPort", 1_500_000, true),
            3_000_000
        ));
        let arrived = state.status(9_000_000, 3_600_000).unwrap();
        assert_eq!(
            (arrived.latency_ms, arrived.missing),
            (Some(2_000_000), false)
        );
        assert!(state.pending.is_empty());
    }
}
