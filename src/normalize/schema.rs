//! The lake's table definitions, parsed from `schemas/*.json` (the one definition that the
//! Arrow schema, the Athena DDL and the docs all come from).

use std::sync::{Arc, OnceLock};

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

impl TableDef {
    /// The Arrow schema of the data files (partition keys are in the path, not the file).
    pub fn arrow_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| {
                let data_type = arrow_type(&c.type_name).unwrap_or(DataType::Utf8);
                Field::new(&c.name, data_type, c.nullable)
            })
            .collect();
        Arc::new(Schema::new(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_parses_and_every_type_maps_to_arrow() {
        for def in [findings(), runs()] {
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
