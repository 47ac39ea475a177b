"""Writes infra/hub.yaml from infra/hub.in.yaml: a Glue table per lake table (from schemas/*.json,
partition projection on dt), an Athena named query per infra/sql/*.sql file, and for each file
that starts `-- View NAME:` an Athena view (a Glue VIRTUAL_VIEW table in Athena's own format), so
the views exist as soon as the stack is deployed.

Usage: python tests/schemas/generate_infra.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "infra" / "hub.in.yaml"
OUT = ROOT / "infra" / "hub.yaml"
TABLE_ORDER = ["findings", "runs", "schema_drift", "cloudtrail_events", "finding_events", "coverage"]


def q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def logical(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def glue_tables() -> str:
    out = []
    for table in TABLE_ORDER:
        definition = json.loads((ROOT / "schemas" / f"{table}.json").read_text())
        out += [
            f"  {logical(table)}Table:",
            "    Type: AWS::Glue::Table",
            "    Properties:",
            "      CatalogId: !Ref AWS::AccountId",
            "      DatabaseName: !Ref GlueDatabase",
            "      TableInput:",
            f"        Name: {table}",
            f"        Description: {q(definition['description'][:2048])}",
            "        TableType: EXTERNAL_TABLE",
            "        Parameters:",
            '          classification: parquet',
            '          projection.enabled: "true"',
            "          projection.dt.type: date",
            "          projection.dt.format: yyyy-MM-dd",
            "          projection.dt.range: 2020-01-01,NOW",
            '          projection.dt.interval: "1"',
            "          projection.dt.interval.unit: DAYS",
            f'          storage.location.template: !Sub "s3://${{LakeBucket}}/${{LakePrefix}}/{table}/dt=${{!dt}}/"',
            f'          guardlake.schema.version: "{definition["version"]}"',
            "        PartitionKeys:",
        ]
        for key in definition["partition_keys"]:
            out += [f"          - Name: {key['name']}", f"            Type: {key['type']}", f"            Comment: {q(key['description'][:255])}"]
        out += [
            "        StorageDescriptor:",
            f'          Location: !Sub "s3://${{LakeBucket}}/${{LakePrefix}}/{table}/"',
            "          InputFormat: org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
            "          OutputFormat: org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
            "          SerdeInfo:",
            "            SerializationLibrary: org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
            "          Columns:",
        ]
        for column in definition["columns"]:
            out += [f"            - Name: {column['name']}", f"              Type: {column['type']}", f"              Comment: {q(column['description'][:255])}"]
        out.append("")
    return "\n".join(out)


def description(sql: str) -> str:
    """A SQL file's first line, its comment: what the query or view answers."""
    return sql.splitlines()[0].removeprefix("--").strip()


def named_queries() -> str:
    out = []
    for path in sorted((ROOT / "infra" / "sql").glob("*.sql")):
        sql = path.read_text()
        out += [
            f"  {logical(path.stem)}Query:",
            "    Type: AWS::Athena::NamedQuery",
            "    Properties:",
            f"      Name: {path.stem}",
            f"      Description: {q(description(sql)[:1024])}",
            "      Database: !Ref GlueDatabase",
            "      WorkGroup: !Ref AthenaWorkGroup",
            "      QueryString: |",
            *[f"        {line}" if line else "" for line in sql.rstrip().splitlines()],
            "",
        ]
    return "\n".join(out)


def trino_type(hive: str) -> str:
    """A Glue (Hive) column type as Trino names it in a view definition."""
    scalar = {"string": "varchar", "int": "integer", "bigint": "bigint", "double": "double", "boolean": "boolean",
              "timestamp": "timestamp(3)", "date": "date"}
    if hive in scalar:
        return scalar[hive]
    inner = re.fullmatch(r"array<(.+)>", hive)
    if inner:
        return f"array({trino_type(inner[1])})"
    raise ValueError(f"no Trino type for {hive}")


# A view's columns past those of the table it reads: (name, Hive type).
VIEW_EXTRA = {"findings_latest": [("version_rank", "bigint")], "coverage_latest": [("recency", "bigint")]}


def view_definition(name: str, sql: str) -> tuple[str, str, list[tuple[str, str]]]:
    """(its SELECT, the one table it reads, its columns) from the file of view `name`: the
    columns of that table (partition keys last), then VIEW_EXTRA."""
    select = re.split(r"CREATE OR REPLACE VIEW \w+ AS\s*", sql, maxsplit=1)[1].strip()
    table = re.search(r"\bFROM (\w+) \w+\s*\)", select)[1]
    definition = json.loads((ROOT / "schemas" / f"{table}.json").read_text())
    columns = [(c["name"], c["type"]) for c in definition["columns"] + definition["partition_keys"]]
    return select, table, columns + VIEW_EXTRA.get(name, [])


def views() -> str:
    out = []
    for path in sorted((ROOT / "infra" / "sql").glob("*.sql")):
        sql = path.read_text()
        if not sql.startswith("-- View "):
            continue
        name = path.stem
        select, table, columns = view_definition(name, sql)
        presto = {"originalSql": select, "catalog": "awsdatacatalog", "schema": "${GlueDatabase}",
                  "columns": [{"name": c, "type": trino_type(t)} for c, t in columns], "runAsInvoker": False}
        out += [
            f"  {logical(name)}View:",
            "    Type: AWS::Glue::Table",
            f"    DependsOn: {logical(table)}Table",
            "    Properties:",
            "      CatalogId: !Ref AWS::AccountId",
            "      DatabaseName: !Ref GlueDatabase",
            "      TableInput:",
            f"        Name: {name}",
            f"        Description: {q(description(sql)[:2048])}",
            "        TableType: VIRTUAL_VIEW",
            "        Parameters:",
            '          presto_view: "true"',
            "          comment: Presto View",
            f'        ViewOriginalText: !Join ["", ["/* Presto View: ", !Base64 {{"Fn::Sub": {q(json.dumps(presto, separators=(",", ":")))}}}, " */"]]',
            "        ViewExpandedText: /* Presto View */",
            "        StorageDescriptor:",
            "          SerdeInfo: {}",
            "          Columns:",
        ]
        for column, kind in columns:
            out += [f"            - Name: {column}", f"              Type: {kind}"]
        out.append("")
    return "\n".join(out)


def render() -> str:
    text = SOURCE.read_text()
    text = text.replace("# @glue-tables\n", glue_tables() + "\n" + views())
    return text.replace("# @named-queries\n", named_queries())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when infra/hub.yaml is stale")
    args = parser.parse_args()
    fresh = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != fresh:
            print(f"{OUT} is stale: run `make infra`", file=sys.stderr)
            sys.exit(1)
        return
    OUT.write_text(fresh)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
