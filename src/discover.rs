//! Which accounts and regions a run covers, and why anything is left out.
//!
//! Organizations facts: ListAccounts returns at most 20 per page and may return an empty page
//! with a NextToken, so paging goes on until the token is absent (the SDK paginator does);
//! `State` (ACTIVE, SUSPENDED, PENDING_CLOSURE, CLOSED) replaces the retired `Status`;
//! ListAccountsForParent lists only direct children, so OUs are walked with ListChildren.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_organizations::types::ChildType;

use crate::aws::Aws;
use crate::config::{ConfigError, Regions, ValidatedConfig};
use crate::error::{classify, TargetFailure};

/// ListAccounts' documented maximum page size.
const ORG_PAGE_SIZE: i32 = 20;

/// An account left out of the run, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub account_id: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Accounts {
    /// Active accounts to cover, sorted.
    pub active: Vec<String>,
    pub skipped: Vec<Skipped>,
    /// What the organization says of each account (organization discovery only).
    pub facts: BTreeMap<String, AccountFacts>,
}

/// An account's state and place in the organization, for the `coverage` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountFacts {
    /// ListAccounts `State`: ACTIVE, SUSPENDED, PENDING_CLOSURE, CLOSED.
    pub status: Option<String>,
    /// Root id then OU ids: `r-ab12/ou-ab12-11111111`.
    pub ou_path: Option<String>,
    /// The account's name (ListAccounts), for alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The accounts of the run: the static list, or the organization's ACTIVE accounts after
/// OU and exclusion filters.
pub async fn accounts(aws: &Aws, config: &ValidatedConfig) -> Result<Accounts, TargetFailure> {
    let mut result = Accounts::default();
    let excluded: BTreeSet<&String> = config.exclude_accounts.iter().collect();
    if let Some(list) = &config.accounts {
        for id in list {
            if excluded.contains(id) {
                result.skipped.push(Skipped {
                    account_id: id.clone(),
                    reason: "excluded by exclude_accounts".into(),
                });
            } else {
                result.active.push(id.clone());
            }
        }
        result.active.sort();
        return Ok(result);
    }

    let states = states(aws).await?;
    let included: Option<BTreeSet<String>> = if config.include_ous.is_empty() {
        None
    } else {
        Some(accounts_under(aws, &config.include_ous).await?)
    };
    let excluded_by_ou = if config.exclude_ous.is_empty() {
        BTreeSet::new()
    } else {
        accounts_under(aws, &config.exclude_ous).await?
    };

    // Where accounts sit is context for the coverage table: without it the run goes on.
    let paths = ou_paths(aws).await.unwrap_or_else(|failure| {
        tracing::warn!(message = %failure.message, "Could not read the organization's OU tree; coverage rows carry no OU path.");
        BTreeMap::new()
    });
    for (id, (state, name)) in states {
        result.facts.insert(
            id.clone(),
            AccountFacts {
                status: Some(state.clone()),
                ou_path: paths.get(&id).cloned(),
                name,
            },
        );
        let reason = if state != "ACTIVE" {
            Some(format!("account state is {state}"))
        } else if excluded.contains(&id) {
            Some("excluded by exclude_accounts".to_owned())
        } else if included.as_ref().is_some_and(|set| !set.contains(&id)) {
            Some("not under include_ous".to_owned())
        } else if excluded_by_ou.contains(&id) {
            Some("under exclude_ous".to_owned())
        } else {
            None
        };
        match reason {
            Some(reason) => result.skipped.push(Skipped {
                account_id: id,
                reason,
            }),
            None => result.active.push(id),
        }
    }
    Ok(result)
}

/// Every account of the organization, its `State` and name (ListAccounts, every page).
async fn states(aws: &Aws) -> Result<BTreeMap<String, (String, Option<String>)>, TargetFailure> {
    let org = aws.organizations();
    let mut states: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    let mut pages = org
        .list_accounts()
        .max_results(ORG_PAGE_SIZE)
        .into_paginator()
        .send();
    while let Some(page) = pages
        .try_next()
        .await
        .map_err(|e| classify("organizations:ListAccounts", &e))?
    {
        for account in page.accounts() {
            let state = account
                .state()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|| "ACTIVE".to_owned());
            if let Some(id) = account.id() {
                let name = account.name().map(str::to_owned);
                states.insert(id.to_owned(), (state, name));
            }
        }
    }
    Ok(states)
}

/// Every account under the given OUs or roots, nested OUs followed.
async fn accounts_under(aws: &Aws, parents: &[String]) -> Result<BTreeSet<String>, TargetFailure> {
    let start = parents.iter().map(|p| (p.clone(), p.clone())).collect();
    Ok(walk(aws, start).await?.into_keys().collect())
}

/// Where each account of the organization sits: `r-…/ou-…/ou-…` (ListRoots, then the tree).
pub async fn ou_paths(aws: &Aws) -> Result<BTreeMap<String, String>, TargetFailure> {
    let mut roots = Vec::new();
    let mut pages = aws.organizations().list_roots().into_paginator().send();
    while let Some(page) = pages
        .try_next()
        .await
        .map_err(|e| classify("organizations:ListRoots", &e))?
    {
        roots.extend(
            page.roots()
                .iter()
                .filter_map(|r| r.id().map(|id| (id.to_owned(), id.to_owned()))),
        );
    }
    walk(aws, roots).await
}

/// Account → the path of its parent, for every account under `start` ((parent id, its path)),
/// nested OUs followed (ListAccountsForParent lists only direct children).
async fn walk(
    aws: &Aws,
    start: Vec<(String, String)>,
) -> Result<BTreeMap<String, String>, TargetFailure> {
    let org = aws.organizations();
    let mut found = BTreeMap::new();
    let mut queue = start;
    let mut seen = BTreeSet::new();
    while let Some((parent, path)) = queue.pop() {
        if !seen.insert(parent.clone()) {
            continue;
        }
        let mut accounts = org
            .list_accounts_for_parent()
            .parent_id(&parent)
            .max_results(ORG_PAGE_SIZE)
            .into_paginator()
            .send();
        while let Some(page) = accounts
            .try_next()
            .await
            .map_err(|e| classify("organizations:ListAccountsForParent", &e))?
        {
            for id in page.accounts().iter().filter_map(|a| a.id()) {
                found.insert(id.to_owned(), path.clone());
            }
        }
        let mut children = org
            .list_children()
            .parent_id(&parent)
            .child_type(ChildType::OrganizationalUnit)
            .into_paginator()
            .send();
        while let Some(page) = children
            .try_next()
            .await
            .map_err(|e| classify("organizations:ListChildren", &e))?
        {
            for id in page.children().iter().filter_map(|c| c.id()) {
                queue.push((id.to_owned(), format!("{path}/{id}")));
            }
        }
    }
    Ok(found)
}

/// The regions to cover in `account_id`: the configured list, or every region the account
/// reports ENABLED or ENABLED_BY_DEFAULT (account:ListRegions with the account's credentials).
pub async fn regions(
    aws: &Aws,
    config: &ValidatedConfig,
    account_id: &str,
) -> Result<Vec<String>, TargetFailure> {
    match &config.regions {
        Regions::List(list) => Ok(list.clone()),
        Regions::Enabled => {
            let sdk = aws.account_config(account_id).await?;
            let client = aws.account(&sdk);
            let mut regions = Vec::new();
            let mut pages = client
                .list_regions()
                .max_results(50)
                .region_opt_status_contains(aws_sdk_account::types::RegionOptStatus::Enabled)
                .region_opt_status_contains(
                    aws_sdk_account::types::RegionOptStatus::EnabledByDefault,
                )
                .into_paginator()
                .send();
            while let Some(page) = pages
                .try_next()
                .await
                .map_err(|e| classify("account:ListRegions", &e))?
            {
                regions.extend(
                    page.regions()
                        .iter()
                        .filter_map(|r| r.region_name().map(str::to_owned)),
                );
            }
            regions.sort();
            Ok(regions)
        }
    }
}

/// An invocation's accounts: a subset of those the configuration covers (the organization's,
/// after its filters), never one more; an account it names that is not there is refused.
pub fn narrow(accounts: &mut Accounts, only: &[String]) -> Result<(), ConfigError> {
    let known = |id: &String| {
        accounts.active.contains(id) || accounts.skipped.iter().any(|s| &s.account_id == id)
    };
    let unknown: Vec<&str> = only
        .iter()
        .filter(|id| !known(id))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(ConfigError::Invalid {
            key: "accounts",
            flag: "payload accounts",
            problem: format!(
                "{} not among the accounts the configuration covers",
                unknown.join(", ")
            ),
            fix: "an invocation may only narrow the configured accounts".into(),
        });
    }
    accounts.active.retain(|id| only.contains(id));
    accounts.skipped.retain(|s| only.contains(&s.account_id));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invocation_narrows_the_discovered_accounts_and_never_adds_one() {
        let discovered = || Accounts {
            active: vec!["111111111111".into(), "222222222222".into()],
            skipped: vec![Skipped {
                account_id: "333333333333".into(),
                reason: "account state is SUSPENDED".into(),
            }],
            facts: BTreeMap::new(),
        };
        let mut accounts = discovered();
        narrow(
            &mut accounts,
            &["222222222222".into(), "333333333333".into()],
        )
        .unwrap();
        assert_eq!(accounts.active, ["222222222222"]);
        assert_eq!(accounts.skipped.len(), 1, "a skipped account stays skipped");
        let mut accounts = discovered();
        let err = narrow(&mut accounts, &["999999999999".into()]).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                key: "accounts",
                ..
            }
        ));
        assert!(err.to_string().contains("999999999999"), "{err}");
    }
}
