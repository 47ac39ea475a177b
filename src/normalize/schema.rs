//! The lake's table definitions, parsed from `schemas/*.json` (the one definition that the
//! Arrow schema, the Athena DDL and the docs all come from).

use std::sync::{Arc, OnceLock};

use arrow_array::builder::{Int64Builder, ListBuilder, StringBuilder, TimestampMillisecondBuilder};
use arrow_array::ArrayRef;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

/// One table of `schemas/`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDef {
    pub table: String,
    pub version: u32,
    pub description: String,
    pub partition_keys: Vec<ColumnDef>,
    pub columns: Vec<ColumnDef>,
}

/// One column: name, Athena type, nullability and what it holds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default = "default_nullable")]
    pub nullable: bool,
    pub description: String,
}

const fn default_nullable() -> bool {
    true
}

fn parse(text: &'static str) -> TableDef {
    // The definitions are compiled in; a test parses each one, so this cannot fail at run time.
    serde_json::from_str(text).expect("schemas/*.json is valid (checked by tests)")
}

/// The `findings` table.
pub fn findings() -> &'static TableDef {
    static DEF: OnceLock<TableDef> = OnceLock::new();
    DEF.get_or_init(|| parse(include_str!("../../schemas/findings.json")))
}

/// The `runs` table.
pub fn runs() -> &'static TableDef {
    static DEF: OnceLock<TableDef> = OnceLock::new();
    DEF.get_or_init(|| parse(include_str!("../../schemas/runs.json")))
}

/// The `schema_drift` table.
pub fn schema_drift() -> &'static TableDef {
    static DEF: OnceLock<TableDef> = OnceLock::new();
    DEF.get_or_init(|| parse(include_str!("../../schemas/schema_drift.json")))
}

/// The `cloudtrail_events` table.
pub fn cloudtrail_events() -> &'static TableDef {
    static DEF: OnceLock<TableDef> = OnceLock::new();
    DEF.get_or_init(|| parse(include_str!("../../schemas/cloudtrail_events.json")))
}

/// The `finding_events` table.
pub fn finding_events() -> &'static TableDef {
    static DEF: OnceLock<TableDef> = OnceLock::new();
    DEF.get_or_init(|| parse(include_str!("../../schemas/finding_events.json")))
}

/// The `coverage` table.
pub fn coverage() -> &'static TableDef {
    static DEF: OnceLock<TableDef> = OnceLock::new();
    DEF.get_or_init(|| parse(include_str!("../../schemas/coverage.json")))
}

/// Every table of the lake, in documentation order.
pub fn tables() -> [&'static TableDef; 6] {
    [
        findings(),
        runs(),
        coverage(),
        schema_drift(),
        cloudtrail_events(),
        finding_events(),
    ]
}

/// The Arrow type of an Athena type name used in `schemas/`.
pub fn arrow_type(type_name: &str) -> Option<DataType> {
    Some(match type_name {
        "string" => DataType::Utf8,
        "double" => DataType::Float64,
        "bigint" => DataType::Int64,
        "int" => DataType::Int32,
        "boolean" => DataType::Boolean,
        // Parquet INT64 TIMESTAMP(MILLIS, UTC): what Athena engine v3 reads natively.
        "timestamp" => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        "array<string>" => DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
        _ => return None,
    })
}

/// A `string` column: one value (or null) per row.
pub fn strings<T>(rows: &[T], f: impl Fn(&T) -> Option<String>) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 16);
    rows.iter().for_each(|r| b.append_option(f(r)));
    Arc::new(b.finish())
}

/// A `bigint` column.
pub fn longs<T>(rows: &[T], f: impl Fn(&T) -> Option<i64>) -> ArrayRef {
    let mut b = Int64Builder::with_capacity(rows.len());
    rows.iter().for_each(|r| b.append_option(f(r)));
    Arc::new(b.finish())
}

/// A `timestamp` column (epoch ms, UTC).
pub fn times<T>(rows: &[T], f: impl Fn(&T) -> Option<i64>) -> ArrayRef {
    let mut b = TimestampMillisecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
    rows.iter().for_each(|r| b.append_option(f(r)));
    Arc::new(b.finish())
}

/// An `array<string>` column (`element` items, as Athena and Spark name them): one list (or
/// null) per row.
pub fn string_lists<L, S>(lists: impl Iterator<Item = Option<L>>) -> ArrayRef
where
    L: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let item = Arc::new(Field::new("element", DataType::Utf8, true));
    let mut b = ListBuilder::new(StringBuilder::new()).with_field(item);
    for list in lists {
        match list {
            Some(items) => {
                items.into_iter().for_each(|i| b.values().append_value(i));
                b.append(true);
            }
            None => b.append(false),
        }
    }
    Arc::new(b.finish())
}

impl TableDef {
    /// The Arrow schema of the data files (partition keys are in the path, not the file).
    pub fn arrow_schema(&self) -> SchemaRef {
        self.arrow_schema_without(&[])
    }

    /// The Arrow schema less the columns named in `without` (those written apart from Arrow).
    pub fn arrow_schema_without(&self, without: &[&str]) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .filter(|c| !without.contains(&c.name.as_str()))
            .map(|c| {
                let data_type = arrow_type(&c.type_name).unwrap_or(DataType::Utf8);
                Field::new(&c.name, data_type, c.nullable)
            })
            .collect();
        Arc::new(Schema::new(fields))
    }
}

/// Output formats of `guardlake schema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Athena (Hive) DDL with partition projection on `dt`.
    Ddl,
    /// A Markdown table of the columns and what they hold.
    Markdown,
    /// A JSON Schema (draft 2020-12) of one row.
    Json,
}

fn quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

impl TableDef {
    /// Athena DDL: columns in file order, `dt` as a projected partition, so no crawler and no
    /// MSCK REPAIR are needed. `location` is the lake's root (e.g. `s3://bucket/prefix`).
    pub fn ddl(&self, database: &str, location: &str) -> String {
        let root = location.trim_end_matches('/');
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!(
                    "  `{}` {} COMMENT '{}'",
                    c.name,
                    c.type_name,
                    quote(&c.description)
                )
            })
            .collect();
        let partitions: Vec<String> = self
            .partition_keys
            .iter()
            .map(|c| {
                format!(
                    "`{}` {} COMMENT '{}'",
                    c.name,
                    c.type_name,
                    quote(&c.description)
                )
            })
            .collect();
        format!(
            "CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`{table}` (\n{columns}\n)\nCOMMENT '{comment}'\nPARTITIONED BY ({partitions})\nSTORED AS PARQUET\nLOCATION '{root}/{table}/'\nTBLPROPERTIES (\n  'projection.enabled'='true',\n  'projection.dt.type'='date',\n  'projection.dt.format'='yyyy-MM-dd',\n  'projection.dt.range'='2020-01-01,NOW',\n  'projection.dt.interval'='1',\n  'projection.dt.interval.unit'='DAYS',\n  'storage.location.template'='{root}/{table}/dt=${{dt}}/',\n  'parquet.compression'='ZSTD',\n  'guardlake.schema.version'='{version}'\n);\n",
            table = self.table,
            columns = columns.join(",\n"),
            comment = quote(&self.description),
            partitions = partitions.join(", "),
            version = self.version,
        )
    }

    /// The columns as a Markdown table.
    pub fn markdown(&self) -> String {
        let mut out = format!("## `{}` (version {})\n\n{}\n\n| column | type | null | description |\n|---|---|---|---|\n", self.table, self.version, self.description);
        for c in self.columns.iter().chain(self.partition_keys.iter()) {
            let partition = if self.partition_keys.iter().any(|k| k.name == c.name) {
                " (partition)"
            } else {
                ""
            };
            out += &format!(
                "| `{}`{partition} | {} | {} | {} |\n",
                c.name,
                c.type_name,
                if c.nullable { "yes" } else { "no" },
                c.description.replace('|', "\\|")
            );
        }
        out
    }

    /// A JSON Schema of one row, as DuckDB or pyarrow would render it to JSON.
    pub fn json_schema(&self) -> serde_json::Value {
        let mut properties = serde_json::Map::new();
        for c in self.columns.iter().chain(self.partition_keys.iter()) {
            let base = match c.type_name.as_str() {
                "string" => serde_json::json!({"type": "string"}),
                "double" => serde_json::json!({"type": "number"}),
                "bigint" | "int" => serde_json::json!({"type": "integer"}),
                "boolean" => serde_json::json!({"type": "boolean"}),
                "timestamp" => serde_json::json!({"type": "string", "format": "date-time"}),
                "array<string>" => {
                    serde_json::json!({"type": "array", "items": {"type": "string"}})
                }
                _ => serde_json::json!({}),
            };
            let mut schema = base;
            if c.nullable {
                if let Some(kind) = schema.get("type").cloned() {
                    schema["type"] = serde_json::json!([kind, "null"]);
                }
            }
            schema["description"] = c.description.clone().into();
            properties.insert(c.name.clone(), schema);
        }
        let required: Vec<&str> = self
            .columns
            .iter()
            .chain(self.partition_keys.iter())
            .filter(|c| !c.nullable)
            .map(|c| c.name.as_str())
            .collect();
        serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": self.table,
            "description": self.description,
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_parses_and_every_type_maps_to_arrow() {
        for def in tables() {
            assert!(!def.columns.is_empty(), "{}", def.table);
            for column in &def.columns {
                assert!(
                    arrow_type(&column.type_name).is_some(),
                    "{}.{}: {}",
                    def.table,
                    column.name,
                    column.type_name
                );
                assert!(
                    !column.description.is_empty(),
                    "{}.{} has no description",
                    def.table,
                    column.name
                );
                assert_eq!(
                    column.name,
                    column.name.to_lowercase(),
                    "snake_case column names"
                );
            }
            assert_eq!(
                def.partition_keys
                    .iter()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>(),
                ["dt"]
            );
        }
    }

    #[test]
    fn ddl_names_every_column_and_projects_dt() {
        let ddl = findings().ddl("guardlake", "s3://lake/prefix/");
        for column in &findings().columns {
            assert!(
                ddl.contains(&format!("`{}` {}", column.name, column.type_name)),
                "{}",
                column.name
            );
        }
        assert!(ddl.contains("PARTITIONED BY (`dt` string"));
        assert!(ddl.contains("'storage.location.template'='s3://lake/prefix/findings/dt=${dt}/'"));
        assert!(ddl.contains("LOCATION 's3://lake/prefix/findings/'"));
        assert!(!ddl.contains("COMMENT 'GuardDuty's"), "quotes are escaped");
    }

    #[test]
    fn findings_schema_has_the_issue_columns_with_their_types() {
        let schema = findings().arrow_schema();
        let expect = [
            ("id", DataType::Utf8),
            ("account_id", DataType::Utf8),
            ("severity", DataType::Float64),
            ("count", DataType::Int64),
            ("local_port", DataType::Int32),
            ("archived", DataType::Boolean),
            (
                "updated_at",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            ),
        ];
        for (name, data_type) in expect {
            assert_eq!(
                schema
                    .field_with_name(name)
                    .map(|f| f.data_type().clone())
                    .ok(),
                Some(data_type),
                "{name}"
            );
        }
        assert!(matches!(
            schema
                .field_with_name("s3_bucket_names")
                .map(|f| f.data_type()),
            Ok(DataType::List(_))
        ));
        assert!(
            schema.field_with_name("dt").is_err(),
            "dt is the Hive partition, not a file column"
        );
    }
}
