//! `guardlake coverage --html FILE`: the `coverage` table as one self-contained HTML page (inline
//! CSS and SVG, no script, nothing fetched): an account × region grid coloured by what its
//! latest row says, a feature × account matrix, counts, and when the rows were collected.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMillisecondType;
use arrow_array::{Array, RecordBatch};
use chrono::Duration;

use crate::config::ValidatedConfig;
use crate::error::RunError;
use crate::pipeline::lock::open_store;
use crate::pipeline::workdir::WorkDir;
use crate::pipeline::RunOptions;
use crate::sink::lake;
use crate::table::Table;

/// What the latest `coverage` row of one account × region says.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub account_id: String,
    pub region: String,
    pub gaps: Vec<String>,
    pub features_enabled: Vec<String>,
    pub features_disabled: Vec<String>,
    pub collected_at_ms: i64,
    pub run_id: String,
}

/// A cell's colour class, the first that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    RoleDenied,
    NotOptedIn,
    Gap,
    Partial,
    Ok,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Self::Ok,
        Self::Partial,
        Self::Gap,
        Self::NotOptedIn,
        Self::RoleDenied,
    ];

    pub const fn css(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Gap => "gap",
            Self::NotOptedIn => "optout",
            Self::RoleDenied => "denied",
        }
    }

    const fn label(self) -> &'static str {
        match self {
            Self::Ok => "covered",
            Self::Partial => "partial (a required feature off)",
            Self::Gap => "gap",
            Self::NotOptedIn => "region not opted in",
            Self::RoleDenied => "role denied",
        }
    }

    const fn colour(self) -> &'static str {
        match self {
            Self::Ok => "#2e7d32",
            Self::Partial => "#f9a825",
            Self::Gap => "#c62828",
            Self::NotOptedIn => "#9e9e9e",
            Self::RoleDenied => "#6a1b9a",
        }
    }

    pub fn of(gaps: &[String]) -> Class {
        let has = |name: &str| gaps.iter().any(|g| g == name);
        if has("role_denied") {
            Self::RoleDenied
        } else if has("region_not_opted_in") {
            Self::NotOptedIn
        } else if gaps.iter().any(|g| !g.starts_with("feature_off:")) {
            Self::Gap
        } else if gaps.is_empty() {
            Self::Ok
        } else {
            Self::Partial
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:16px;color:#212121}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:20px 0 6px}
.meta{color:#616161;margin-bottom:12px}
.legend span{display:inline-flex;align-items:center;margin-right:14px}.legend svg{margin-right:4px}
.counts td,.counts th{padding:2px 10px;text-align:right}.counts th{text-align:left}
.scroll{overflow:auto;max-height:70vh;max-width:100%;border:1px solid #e0e0e0}
table.grid{border-collapse:separate;border-spacing:0}
.grid th{position:sticky;top:0;background:#fafafa;z-index:2;font-weight:600;padding:4px 6px;white-space:nowrap;font-size:12px}
.grid th.acct{left:0;z-index:3}
.grid td.acct{position:sticky;left:0;background:#fafafa;z-index:1;padding:2px 8px;font-family:monospace;white-space:nowrap}
.grid td.cell{width:22px;min-width:22px;height:18px;border:1px solid #fff;text-align:center;font-size:11px;color:#fff}
.grid td.none{background:#f5f5f5}
.ok{background:#2e7d32}.partial{background:#f9a825}.gap{background:#c62828}.optout{background:#9e9e9e}.denied{background:#6a1b9a}
.grid td.feat{min-width:34px;text-align:center;font-size:11px;border:1px solid #fff;padding:2px 4px}
.all{background:#c8e6c9}.some{background:#ffe082}.off{background:#ffcdd2}";

/// The page for the latest cells; `generated` is when it is rendered (RFC 3339).
pub fn render(cells: &[Cell], generated: &str) -> String {
    let accounts: BTreeSet<&str> = cells.iter().map(|c| c.account_id.as_str()).collect();
    let regions: BTreeSet<&str> = cells.iter().map(|c| c.region.as_str()).collect();
    let by_cell: BTreeMap<(&str, &str), &Cell> = cells
        .iter()
        .map(|c| ((c.account_id.as_str(), c.region.as_str()), c))
        .collect();
    let newest = cells.iter().map(|c| c.collected_at_ms).max();
    let mut out = String::with_capacity(4096 + cells.len() * 96);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>guardlake coverage</title><style>{STYLE}</style></head><body>\
<h1>GuardDuty coverage</h1><div class=\"meta\">{} accounts × {} regions; rows collected up to {}; page generated {generated}</div>",
        accounts.len(),
        regions.len(),
        newest.map(crate::clock::iso).unwrap_or_else(|| "never".into()),
    );
    legend_and_counts(&mut out, cells);
    out.push_str("<h2>Accounts × regions</h2><div class=\"scroll\"><table class=\"grid\" id=\"grid\"><thead><tr><th class=\"acct\">account</th>");
    for region in &regions {
        let _ = write!(out, "<th>{}</th>", escape(region));
    }
    out.push_str("</tr></thead><tbody>");
    for account in &accounts {
        let _ = write!(out, "<tr><td class=\"acct\">{}</td>", escape(account));
        for region in &regions {
            match by_cell.get(&(*account, *region)) {
                Some(cell) => {
                    let class = Class::of(&cell.gaps);
                    let title = if cell.gaps.is_empty() {
                        "covered".to_owned()
                    } else {
                        cell.gaps.join(", ")
                    };
                    let _ = write!(
                        out,
                        "<td class=\"cell {}\" title=\"{} {}: {}\"></td>",
                        class.css(),
                        escape(account),
                        escape(region),
                        escape(&title)
                    );
                }
                None => out.push_str(
                    "<td class=\"cell none\" title=\"not covered by any run read\"></td>",
                ),
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    features(&mut out, cells, &accounts);
    out.push_str("</body></html>\n");
    out
}

/// The legend (inline SVG swatches) and the number of cells of each colour.
fn legend_and_counts(out: &mut String, cells: &[Cell]) {
    let mut counts: BTreeMap<Class, usize> = BTreeMap::new();
    for cell in cells {
        *counts.entry(Class::of(&cell.gaps)).or_default() += 1;
    }
    out.push_str("<div class=\"legend\">");
    for class in Class::ALL {
        let _ = write!(
            out,
            "<span><svg width=\"12\" height=\"12\"><rect width=\"12\" height=\"12\" fill=\"{}\"/></svg>{}</span>",
            class.colour(),
            class.label()
        );
    }
    out.push_str("</div><h2>Counts</h2><table class=\"counts\" id=\"counts\">");
    for class in Class::ALL {
        let _ = write!(
            out,
            "<tr><th>{}</th><td data-class=\"{}\">{}</td></tr>",
            class.label(),
            class.css(),
            counts.get(&class).copied().unwrap_or(0)
        );
    }
    let _ = write!(
        out,
        "<tr><th>account × region cells</th><td>{}</td></tr></table>",
        cells.len()
    );
}

/// Features × accounts: in how many of the account's regions each feature is ENABLED.
fn features(out: &mut String, cells: &[Cell], accounts: &BTreeSet<&str>) {
    let names: BTreeSet<&str> = cells
        .iter()
        .flat_map(|c| c.features_enabled.iter().chain(&c.features_disabled))
        .filter(|n| !n.contains('/'))
        .map(String::as_str)
        .collect();
    if names.is_empty() {
        return;
    }
    out.push_str("<h2>Features × accounts (regions where enabled / regions reported)</h2><div class=\"scroll\"><table class=\"grid\" id=\"features\"><thead><tr><th class=\"acct\">account</th>");
    for name in &names {
        let _ = write!(out, "<th>{}</th>", escape(name));
    }
    out.push_str("</tr></thead><tbody>");
    for account in accounts {
        let mine: Vec<&Cell> = cells.iter().filter(|c| c.account_id == *account).collect();
        let _ = write!(out, "<tr><td class=\"acct\">{}</td>", escape(account));
        for name in &names {
            let on = mine
                .iter()
                .filter(|c| c.features_enabled.iter().any(|f| f == name))
                .count();
            let off = mine
                .iter()
                .filter(|c| c.features_disabled.iter().any(|f| f == name))
                .count();
            let class = match (on, off) {
                (0, 0) => "none",
                (_, 0) => "all",
                (0, _) => "off",
                _ => "some",
            };
            let shown = if class == "none" {
                "–".to_owned()
            } else {
                format!("{on}/{}", on + off)
            };
            let _ = write!(out, "<td class=\"feat {class}\">{shown}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
}

/// The strings of list column `name` at `row`.
fn list(batch: &RecordBatch, name: &str, row: usize) -> Vec<String> {
    let Some(column) = batch.column_by_name(name) else {
        return Vec::new();
    };
    let lists = column.as_list::<i32>();
    if lists.is_null(row) {
        return Vec::new();
    }
    let values = lists.value(row);
    let strings = values.as_string::<i32>();
    (0..strings.len())
        .filter(|i| !strings.is_null(*i))
        .map(|i| strings.value(i).to_owned())
        .collect()
}

fn text(batch: &RecordBatch, name: &str, row: usize) -> String {
    batch
        .column_by_name(name)
        .map(|c| c.as_string::<i32>().value(row).to_owned())
        .unwrap_or_default()
}

/// Folds `batches` into the latest row of each account × region found so far.
fn keep_latest(found: &mut BTreeMap<(String, String), Cell>, batches: &[RecordBatch]) {
    for batch in batches {
        let Some(times) = batch.column_by_name("collected_at") else {
            continue;
        };
        let times = times.as_primitive::<TimestampMillisecondType>();
        for row in 0..batch.num_rows() {
            let cell = Cell {
                account_id: text(batch, "account_id", row),
                region: text(batch, "region", row),
                gaps: list(batch, "gaps", row),
                features_enabled: list(batch, "features_enabled", row),
                features_disabled: list(batch, "features_disabled", row),
                collected_at_ms: times.value(row),
                run_id: text(batch, "run_id", row),
            };
            let key = (cell.account_id.clone(), cell.region.clone());
            let newer = found.get(&key).is_none_or(|old| {
                (cell.collected_at_ms, &cell.run_id) > (old.collected_at_ms, &old.run_id)
            });
            if newer {
                found.insert(key, cell);
            }
        }
    }
}

/// Reads the `coverage` partitions of the last `days` days and writes the page to `html`;
/// returns how many account × region cells it shows.
pub async fn write(
    config: ValidatedConfig,
    options: RunOptions,
    html: &Path,
    days: u32,
) -> Result<usize, RunError> {
    let s3 = || async {
        crate::aws::s3_client(
            &crate::aws::base_config(&config).await,
            options.s3_path_style,
        )
    };
    let store = Arc::new(open_store(&config, s3).await);
    let id = uuid::Uuid::now_v7().to_string();
    let work_dir = WorkDir::create(&config, &id)?;
    let today = chrono::Utc::now().date_naive();
    let first = today - Duration::days(i64::from(days));
    let read = |e: String| RunError::Publish(format!("reading the coverage table: {e}"));
    let mut keys = Vec::new();
    for (dt, files) in lake::partitions(&store, Table::Coverage.name())
        .await
        .map_err(|e| read(e.to_string()))?
    {
        if dt.as_str() >= first.format("%Y-%m-%d").to_string().as_str() {
            keys.extend(files.into_iter().map(|(k, _)| k));
        }
    }
    // One file at a time: memory holds the latest row per cell, not every run of the window.
    let mut found = BTreeMap::new();
    for key in keys {
        let batches = lake::read_files(&store, &[key], &work_dir.path)
            .await
            .map_err(read)?;
        keep_latest(&mut found, &batches);
    }
    let cells: Vec<Cell> = found.into_values().collect();
    let page = render(&cells, &crate::clock::iso(crate::clock::now_ms()));
    std::fs::write(html, page).map_err(|e| RunError::Store {
        key: html.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(cells.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(account: &str, region: &str, gaps: &[&str]) -> Cell {
        Cell {
            account_id: account.into(),
            region: region.into(),
            gaps: gaps.iter().map(|g| g.to_string()).collect(),
            features_enabled: vec!["S3_DATA_EVENTS".into()],
            features_disabled: vec![],
            collected_at_ms: 0,
            run_id: "r".into(),
        }
    }

    #[test]
    fn each_cell_gets_the_colour_of_its_worst_gap_and_text_is_escaped() {
        assert_eq!(Class::of(&[]), Class::Ok);
        assert_eq!(
            Class::of(&["feature_off:S3_DATA_EVENTS".into()]),
            Class::Partial
        );
        assert_eq!(
            Class::of(&["feature_off:X".into(), "no_detector".into()]),
            Class::Gap
        );
        assert_eq!(
            Class::of(&["region_not_opted_in".into()]),
            Class::NotOptedIn
        );
        assert_eq!(Class::of(&["role_denied".into()]), Class::RoleDenied);
        let page = render(
            &[
                cell("111111111111", "eu-west-1", &[]),
                cell("<b>", "us-east-1", &["no_detector"]),
            ],
            "now",
        );
        assert_eq!(
            page.matches("<td class=\"cell ").count(),
            4,
            "2 accounts × 2 regions"
        );
        assert_eq!(page.matches("class=\"cell none\"").count(), 2);
        assert!(page.contains("&lt;b&gt;") && !page.contains("<b>"));
        assert!(
            !page.contains("<script") && !page.contains("http"),
            "self-contained"
        );
    }

    #[test]
    fn a_large_organization_is_one_page_with_sticky_headers() {
        let cells: Vec<Cell> = (0..500)
            .flat_map(|a| {
                (0..20).map(move |r| cell(&format!("{a:012}"), &format!("r-{r:02}"), &[]))
            })
            .collect();
        let page = render(&cells, "now");
        assert_eq!(page.matches("<td class=\"cell ok\"").count(), 10_000);
        assert!(page.contains("position:sticky;top:0") && page.contains("position:sticky;left:0"));
        assert!(page.len() < 4 << 20, "{} bytes", page.len());
    }
}
