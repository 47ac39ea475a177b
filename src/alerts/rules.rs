//! Alert rules: which new finding versions matter. A rule names the changes it fires `on`
//! and filters (severity floor, type globs, accounts, OUs, samples, archived); the first rule a
//! version matches names its alert, so a version is alerted at most once.

use serde::{Deserialize, Serialize};

use super::Candidate;

/// A change between a finding's last published version and the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A finding guardlake has not published before, created since the target's last run.
    New,
    /// The severity label went up (Low < Medium < High < Critical).
    SeverityRaised,
    /// `count` grew by at least `spike_per_hour` per hour between consecutive versions.
    CountSpike,
    /// An archived finding was unarchived.
    Reopened,
    /// An open finding was archived (lets a pager resolve what it opened).
    Archived,
}

impl Trigger {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::SeverityRaised => "severity_raised",
            Self::CountSpike => "count_spike",
            Self::Reopened => "reopened",
            Self::Archived => "archived",
        }
    }
}

/// A severity floor as written: a GuardDuty label or a number from 0 to 10.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SeverityFloor {
    Number(f64),
    Label(String),
}

/// One `[[alerts]]` table of the config file (or an item of `GUARDLAKE_ALERTS`, a JSON list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// The rule's name, carried in each alert's `rule` (1-64 letters, digits, `_`, `-`, `.`).
    pub name: String,
    /// The changes the rule fires on: new, severity_raised, count_spike, reopened, archived.
    pub on: Vec<Trigger>,
    /// Lowest severity alerted: LOW, MEDIUM, HIGH, CRITICAL or a number [default: any].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_severity: Option<SeverityFloor>,
    /// Finding type globs (`*` any run of characters, `?` one) [default: every type].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Only findings of these accounts [default: every account].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<String>,
    /// Only findings of accounts under these OUs or roots, nested OUs included [default: all].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ous: Vec<String>,
    /// Alert sample findings (CreateSampleFindings) too [default: false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_samples: Option<bool>,
    /// Alert archived versions too (`archived` itself always is) [default: false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_archived: Option<bool>,
    /// `count_spike`: growth of `count` per hour that fires it [default: 10].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike_per_hour: Option<f64>,
}

/// The rule list as one option value: `[[alerts]]` in TOML, a JSON list in the environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AlertRules(pub Vec<AlertRule>);

/// Parses `--alerts` / `GUARDLAKE_ALERTS`: a JSON list of rule objects.
pub fn parse_rules(text: &str) -> Result<AlertRules, String> {
    serde_json::from_str(text).map_err(|e| format!("not a JSON list of alert rules: {e}"))
}

pub const DEFAULT_SPIKE_PER_HOUR: f64 = 10.0;

/// A rule that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub on: Vec<Trigger>,
    pub min_severity: f64,
    pub types: Vec<String>,
    pub accounts: Vec<String>,
    pub ous: Vec<String>,
    pub include_samples: bool,
    pub include_archived: bool,
    pub spike_per_hour: f64,
}

/// GuardDuty's severity bands: Low 1.0-3.9, Medium 4.0-6.9, High 7.0-8.9, Critical 9.0-10.0.
pub fn label(severity: f64) -> &'static str {
    match severity {
        s if s >= 9.0 => "CRITICAL",
        s if s >= 7.0 => "HIGH",
        s if s >= 4.0 => "MEDIUM",
        _ => "LOW",
    }
}

/// The lowest severity of a label.
fn floor_of(label: &str) -> Option<f64> {
    match label.to_ascii_uppercase().as_str() {
        "LOW" => Some(0.0),
        "MEDIUM" => Some(4.0),
        "HIGH" => Some(7.0),
        "CRITICAL" => Some(9.0),
        _ => None,
    }
}

/// The rules used when `alerts_bus` is set and no `[[alerts]]` are: the pager for urgent
/// changes, the tracker for all work, and a resolve for what was paged.
pub fn defaults() -> Vec<AlertRule> {
    let rule = |name: &str, on: Vec<Trigger>, floor: &str| AlertRule {
        name: name.to_owned(),
        on,
        min_severity: Some(SeverityFloor::Label(floor.to_owned())),
        types: Vec::new(),
        accounts: Vec::new(),
        ous: Vec::new(),
        include_samples: None,
        include_archived: None,
        spike_per_hour: None,
    };
    vec![
        rule(
            "urgent",
            vec![Trigger::New, Trigger::SeverityRaised, Trigger::CountSpike],
            "HIGH",
        ),
        rule("work", vec![Trigger::New, Trigger::Reopened], "MEDIUM"),
        rule("resolved", vec![Trigger::Archived], "HIGH"),
    ]
}

/// Checks every rule; the error names the rule and what to fix.
pub fn validate(rules: &[AlertRule]) -> Result<Vec<Rule>, String> {
    let mut names = std::collections::HashSet::new();
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let valid =
                validate_one(rule).map_err(|e| format!("rule {} ({:?}): {e}", i + 1, rule.name))?;
            if !names.insert(rule.name.clone()) {
                return Err(format!(
                    "rule {} ({:?}): the name is used twice",
                    i + 1,
                    rule.name
                ));
            }
            Ok(valid)
        })
        .collect()
}

fn validate_one(rule: &AlertRule) -> Result<Rule, String> {
    let name_ok = (1..=64).contains(&rule.name.len())
        && rule
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !name_ok {
        return Err("`name` must be 1-64 letters, digits, '_', '-' or '.'".into());
    }
    if rule.on.is_empty() {
        return Err("`on` is empty; name at least one of new, severity_raised, count_spike, reopened, archived".into());
    }
    let min_severity = match &rule.min_severity {
        None => 0.0,
        Some(SeverityFloor::Number(n)) if (0.0..=10.0).contains(n) => *n,
        Some(SeverityFloor::Number(n)) => {
            return Err(format!("`min_severity` {n} is outside 0-10"))
        }
        Some(SeverityFloor::Label(l)) => floor_of(l).ok_or_else(|| {
            format!("`min_severity` {l:?} is not LOW, MEDIUM, HIGH, CRITICAL or a number")
        })?,
    };
    if let Some(bad) = rule.types.iter().find(|t| t.is_empty() || t.len() > 256) {
        return Err(format!("`types` item {bad:?} is not a finding type glob"));
    }
    let is_account = |a: &&String| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit());
    if let Some(bad) = rule.accounts.iter().find(|a| !is_account(a)) {
        return Err(format!(
            "`accounts` item {bad:?} is not a 12-digit account id"
        ));
    }
    if let Some(bad) = rule
        .ous
        .iter()
        .find(|ou| !(ou.starts_with("ou-") || ou.starts_with("r-")))
    {
        return Err(format!(
            "`ous` item {bad:?} is not an OU or root id (ou-…, r-…)"
        ));
    }
    let spike_per_hour = rule.spike_per_hour.unwrap_or(DEFAULT_SPIKE_PER_HOUR);
    if !(spike_per_hour.is_finite() && spike_per_hour > 0.0) {
        return Err(format!("`spike_per_hour` {spike_per_hour} must be above 0"));
    }
    let mut on = rule.on.clone();
    on.sort();
    on.dedup();
    Ok(Rule {
        name: rule.name.clone(),
        on,
        min_severity,
        types: rule.types.clone(),
        accounts: rule.accounts.clone(),
        ous: rule.ous.clone(),
        include_samples: rule.include_samples.unwrap_or(false),
        include_archived: rule.include_archived.unwrap_or(false),
        spike_per_hour,
    })
}

impl Rule {
    /// The trigger this rule alerts `candidate` for, if it matches.
    pub fn fires(&self, candidate: &Candidate) -> Option<Trigger> {
        let trigger = candidate.triggers.iter().copied().find(|t| {
            self.on.contains(t)
                && (*t != Trigger::CountSpike
                    || candidate
                        .count_per_hour
                        .is_some_and(|r| r >= self.spike_per_hour))
        })?;
        let archived_ok =
            trigger == Trigger::Archived || !candidate.archived || self.include_archived;
        let ou_ok = self.ous.is_empty()
            || candidate
                .ou_path
                .as_deref()
                .is_some_and(|path| path.split('/').any(|ou| self.ous.iter().any(|o| o == ou)));
        let pass = candidate.severity >= self.min_severity
            && (self.types.is_empty()
                || self.types.iter().any(|g| glob(g, &candidate.finding_type)))
            && (self.accounts.is_empty() || self.accounts.contains(&candidate.account_id))
            && ou_ok
            && (!candidate.sample || self.include_samples)
            && archived_ok;
        pass.then_some(trigger)
    }
}

/// The first rule that fires for `candidate`, and on what.
pub fn first_match<'r>(rules: &'r [Rule], candidate: &Candidate) -> Option<(&'r Rule, Trigger)> {
    rules
        .iter()
        .find_map(|rule| rule.fires(candidate).map(|t| (rule, t)))
}

/// `*` matches any run of characters (`/` and `:` included), `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_finding_types() {
        assert!(glob("Recon:EC2/*", "Recon:EC2/PortProbeUnprotectedPort"));
        assert!(glob(
            "*:IAMUser/*",
            "UnauthorizedAccess:IAMUser/MaliciousIPCaller"
        ));
        assert!(glob(
            "Backdoor:EC2/C&CActivity.?",
            "Backdoor:EC2/C&CActivity.B"
        ));
        assert!(!glob("Recon:EC2/*", "Recon:IAMUser/TorIPCaller"));
        assert!(!glob(
            "Backdoor:EC2/C&CActivity.?",
            "Backdoor:EC2/C&CActivity.B!DNS"
        ));
        assert!(glob("*", ""));
    }

    #[test]
    fn labels_follow_guardduty_bands() {
        assert_eq!(label(3.9), "LOW");
        assert_eq!(label(4.0), "MEDIUM");
        assert_eq!(label(8.9), "HIGH");
        assert_eq!(label(9.0), "CRITICAL");
    }

    #[test]
    fn bad_rules_are_named() {
        let mut rule = defaults().remove(0);
        rule.min_severity = Some(SeverityFloor::Label("SEVERE".into()));
        let error = validate(&[rule.clone()]).unwrap_err();
        assert!(
            error.contains("rule 1 (\"urgent\")") && error.contains("SEVERE"),
            "{error}"
        );
        rule.min_severity = None;
        rule.accounts = vec!["12345".into()];
        assert!(validate(&[rule.clone()]).unwrap_err().contains("12345"));
        rule.accounts.clear();
        assert!(validate(&[rule.clone(), rule.clone()])
            .unwrap_err()
            .contains("twice"));
        let parsed = parse_rules(r#"[{"name":"x","on":["sometimes"]}]"#).unwrap_err();
        assert!(parsed.contains("sometimes"), "{parsed}");
        assert_eq!(validate(&defaults()).unwrap().len(), 3);
    }
}
