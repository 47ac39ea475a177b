//! Schema drift: each collected finding is compared with the known shape of a GuardDuty
//! finding (`schemas/guardduty/finding.schema.json`, generated from the service model) and the
//! known finding, resource and action types (`schemas/guardduty/known_types.json`). What does not
//! match is counted per finding type and path; the finding itself is still written whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

use serde_json::Value;

/// Examples are cut to this many bytes (at a character boundary).
pub const EXAMPLE_BYTES: usize = 256;

/// Differences recorded per finding; more become one `too_many_differences` entry.
pub const MAX_DRIFT_PER_FINDING: usize = 32;

/// Distinct (finding type, path, kind) entries a run records; later ones are counted only.
pub const MAX_DRIFT_ENTRIES: usize = 1_000;

/// Entries the drift state (`_state/schema_drift.json`) remembers; past it, new drift is still
/// reported each run but no longer remembered.
pub const MAX_DRIFT_STATE_ENTRIES: usize = 10_000;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// A member the schema does not know.
    UnknownPath,
    /// A value of another JSON type than the schema says.
    WrongType,
    NewFindingType,
    NewResourceType,
    NewActionType,
    /// A finding with more differences than [`MAX_DRIFT_PER_FINDING`]: the first ones are
    /// recorded, this says how many there were.
    TooManyDifferences,
}

impl DriftKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UnknownPath => "unknown_path",
            Self::WrongType => "wrong_type",
            Self::NewFindingType => "new_finding_type",
            Self::NewResourceType => "new_resource_type",
            Self::NewActionType => "new_action_type",
            Self::TooManyDifferences => "too_many_differences",
        }
    }
}

/// One difference between a finding and the known shape. Paths use `[]` for list items and
/// `{}` for map keys, e.g. `resource.instanceDetails.networkInterfaces[].publicIp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub path: String,
    pub kind: DriftKind,
    pub example: String,
}

struct Known {
    schema: Value,
    finding_types: HashSet<String>,
    resource_types: HashSet<String>,
    action_types: HashSet<String>,
}

fn known() -> &'static Known {
    static KNOWN: OnceLock<Known> = OnceLock::new();
    KNOWN.get_or_init(|| {
        // Both files are compiled in and parsed by tests, so they are valid JSON.
        let schema: Value =
            serde_json::from_str(include_str!("../../schemas/guardduty/finding.schema.json"))
                .unwrap_or(Value::Null);
        let types: Value =
            serde_json::from_str(include_str!("../../schemas/guardduty/known_types.json"))
                .unwrap_or(Value::Null);
        let set = |name: &str| -> HashSet<String> {
            types[name]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Known {
            finding_types: set("finding_types"),
            resource_types: set("resource_types"),
            action_types: set("action_types"),
            schema,
        }
    })
}

/// Cuts a value's JSON text to `EXAMPLE_BYTES`.
pub fn example(value: &Value) -> String {
    let mut text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.len() > EXAMPLE_BYTES {
        let mut end = EXAMPLE_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(name) => root["$defs"].get(name).unwrap_or(node),
        None => node,
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => true,
    }
}

/// Members the service fills with free keys although the model gives them a shape:
/// `service.additionalInfo` holds `value`/`type` in the model, and `sample`, `threatListName`,
/// `unusual`, … in real findings. Their keys are not drift.
const OPEN_MAPS: [&str; 1] = ["service.additionalInfo"];

fn walk(root: &Value, node: &Value, value: &Value, path: &str, out: &mut Vec<Drift>) {
    let node = resolve(root, node);
    if value.is_null() || OPEN_MAPS.contains(&path) {
        return; // The API omits members without a value; a null carries no shape.
    }
    if let Some(expected) = node.get("type").and_then(Value::as_str) {
        if !type_matches(expected, value) {
            out.push(Drift {
                path: path.to_owned(),
                kind: DriftKind::WrongType,
                example: example(value),
            });
            return;
        }
    }
    match value {
        Value::Object(members) => {
            let properties = node.get("properties").and_then(Value::as_object);
            let additional = node.get("additionalProperties");
            for (name, member) in members {
                let child = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                match (properties.and_then(|p| p.get(name)), additional) {
                    (Some(schema), _) => walk(root, schema, member, &child, out),
                    (None, Some(schema)) if schema.is_object() => {
                        walk(root, schema, member, &format!("{path}.{{}}"), out)
                    }
                    (None, _) if member.is_null() => {}
                    (None, _) if properties.is_some() => out.push(Drift {
                        path: child,
                        kind: DriftKind::UnknownPath,
                        example: example(member),
                    }),
                    (None, _) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(schema) = node.get("items") {
                for item in items {
                    walk(root, schema, item, &format!("{path}[]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Every difference between `finding` and the known shape and types.
pub fn check(finding: &Value) -> Vec<Drift> {
    let known = known();
    let mut out = Vec::new();
    if known.schema.is_object() {
        walk(&known.schema, &known.schema, finding, "", &mut out);
    }
    for (path, _) in NAMED_TYPES {
        let pointer = format!("/{}", path.replace('.', "/"));
        if let Some(text) = finding.pointer(&pointer).and_then(Value::as_str) {
            out.extend(new_type(path, text));
        }
    }
    out
}

/// Every difference between a finding's JSON text and the known shape and types, read in one
/// pass over the text against the compiled shape (no tree of values; a member's value is read
/// whole only to show a difference). The same rules as [`check`], except that a repeated
/// member is checked each time it appears. Text that is not JSON has no differences (it is
/// quarantined elsewhere).
pub fn check_text(raw: &str) -> Vec<Drift> {
    let shape = shape();
    let mut out = Vec::new();
    let mut path = String::new();
    let walk = text_walk::Walk {
        shape,
        node: shape.root,
        path: &mut path,
        out: &mut out,
    };
    let mut reader = serde_json::Deserializer::from_str(raw);
    match serde::de::DeserializeSeed::deserialize(walk, &mut reader).and_then(|()| reader.end()) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

/// The finding type, resource type and action type a walk compares with the known lists.
const NAMED_TYPES: [(&str, DriftKind); 3] = [
    ("type", DriftKind::NewFindingType),
    ("resource.resourceType", DriftKind::NewResourceType),
    ("service.action.actionType", DriftKind::NewActionType),
];

fn new_type(path: &str, text: &str) -> Option<Drift> {
    let known = known();
    let (_, kind) = NAMED_TYPES.iter().find(|(p, _)| *p == path)?;
    let set = match kind {
        DriftKind::NewFindingType => &known.finding_types,
        DriftKind::NewResourceType => &known.resource_types,
        _ => &known.action_types,
    };
    (!set.contains(text)).then(|| Drift {
        path: path.to_owned(),
        kind: *kind,
        example: example(&Value::String(text.to_owned())),
    })
}

/// The known shape compiled for the text walk: `$ref`s resolved once, members in hash maps.
struct Shape {
    nodes: Vec<ShapeNode>,
    root: usize,
}

#[derive(Default)]
struct ShapeNode {
    /// The schema's `type`, when it names one.
    expected: Option<String>,
    properties: Option<foldhash::HashMap<String, usize>>,
    /// The shape of members not in `properties` (a map's values), when it is an object.
    additional: Option<usize>,
    items: Option<usize>,
}

fn shape() -> &'static Shape {
    static SHAPE: OnceLock<Shape> = OnceLock::new();
    SHAPE.get_or_init(|| {
        let root = &known().schema;
        let mut shape = Shape {
            nodes: Vec::new(),
            root: 0,
        };
        let mut defs = HashMap::new();
        shape.root = compile(root, root, &mut shape.nodes, &mut defs);
        shape
    })
}

/// Compiles a schema node (and what it refers to) into `nodes`; a `$defs` entry once, so a
/// recursive shape is a cycle of ids.
fn compile(
    root: &Value,
    node: &Value,
    nodes: &mut Vec<ShapeNode>,
    defs: &mut HashMap<String, usize>,
) -> usize {
    let name = node
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .filter(|name| root["$defs"].get(*name).is_some());
    if let Some(id) = name.and_then(|name| defs.get(name)) {
        return *id;
    }
    let id = nodes.len();
    nodes.push(ShapeNode::default());
    if let Some(name) = name {
        defs.insert(name.to_owned(), id);
    }
    let node = resolve(root, node);
    let properties = node.get("properties").and_then(Value::as_object).map(|p| {
        p.iter()
            .map(|(member, schema)| (member.clone(), compile(root, schema, nodes, defs)))
            .collect()
    });
    let additional = node
        .get("additionalProperties")
        .filter(|a| a.is_object())
        .map(|a| compile(root, a, nodes, defs));
    let items = node.get("items").map(|i| compile(root, i, nodes, defs));
    nodes[id] = ShapeNode {
        expected: node.get("type").and_then(Value::as_str).map(str::to_owned),
        properties,
        additional,
        items,
    };
    id
}

/// [`check_text`]'s walk: where the reader is in the shape, as a `DeserializeSeed`. The path
/// is one buffer, grown for a member and cut back after it.
mod text_walk {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;
    use serde_json::value::RawValue;
    use serde_json::Value;

    use super::{example, new_type, type_matches, Drift, DriftKind, Shape, OPEN_MAPS};

    pub(super) struct Walk<'s, 'o> {
        pub shape: &'s Shape,
        pub node: usize,
        pub path: &'o mut String,
        pub out: &'o mut Vec<Drift>,
    }

    /// A member name, borrowed from the text unless it has escapes.
    struct Key<'de>(Cow<'de, str>);

    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct KeyVisitor;
            impl<'de> Visitor<'de> for KeyVisitor {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a member name")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(v.to_owned())))
                }
            }
            d.deserialize_str(KeyVisitor)
        }
    }

    impl Walk<'_, '_> {
        fn expected(&self) -> Option<&str> {
            self.shape.nodes[self.node].expected.as_deref()
        }

        /// A scalar: a wrong type is a difference; a named type is compared with its list.
        fn scalar(self, value: Value) {
            if self.expected().is_some_and(|e| !type_matches(e, &value)) {
                return self.wrong_type(value);
            }
            if let Value::String(text) = &value {
                self.out.extend(new_type(self.path, text));
            }
        }

        fn wrong_type(self, value: Value) {
            self.out.push(Drift {
                path: self.path.clone(),
                kind: DriftKind::WrongType,
                example: example(&value),
            });
        }

        /// The walk of a member at `node`, `suffix` added to the path meanwhile.
        fn child<'de, A: MapAccess<'de>>(
            &mut self,
            map: &mut A,
            node: usize,
            suffix: [&str; 2],
        ) -> Result<(), A::Error> {
            let at = self.path.len();
            suffix.iter().for_each(|part| self.path.push_str(part));
            let walk = Walk {
                shape: self.shape,
                node,
                path: &mut *self.path,
                out: &mut *self.out,
            };
            let done = map.next_value_seed(walk);
            self.path.truncate(at);
            done
        }

        fn member_path(&self, name: &str) -> String {
            if self.path.is_empty() {
                name.to_owned()
            } else {
                format!("{}.{name}", self.path)
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            if OPEN_MAPS.contains(&self.path.as_str()) {
                IgnoredAny::deserialize(d)?;
                return Ok(());
            }
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(()) // The API omits members without a value; a null carries no shape.
        }
        fn visit_bool<E>(self, v: bool) -> Result<(), E> {
            self.scalar(Value::Bool(v));
            Ok(())
        }
        fn visit_i64<E>(self, v: i64) -> Result<(), E> {
            self.scalar(Value::from(v));
            Ok(())
        }
        fn visit_u64<E>(self, v: u64) -> Result<(), E> {
            self.scalar(Value::from(v));
            Ok(())
        }
        fn visit_f64<E>(self, v: f64) -> Result<(), E> {
            self.scalar(Value::from(v));
            Ok(())
        }
        fn visit_str<E>(self, v: &str) -> Result<(), E> {
            // Only a named type or a wrong type needs the text; most strings need nothing.
            match self.expected() {
                Some("string") | None => self.out.extend(new_type(self.path, v)),
                Some(_) => self.scalar(Value::String(v.to_owned())),
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            if self.expected().is_some_and(|e| e != "array") {
                let value = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                self.wrong_type(value);
                return Ok(());
            }
            let Some(items) = self.shape.nodes[self.node].items else {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(());
            };
            let at = self.path.len();
            self.path.push_str("[]");
            let done = loop {
                let walk = Walk {
                    shape: self.shape,
                    node: items,
                    path: &mut *self.path,
                    out: &mut *self.out,
                };
                match seq.next_element_seed(walk) {
                    Ok(Some(())) => continue,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            self.path.truncate(at);
            done
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            if self.expected().is_some_and(|e| e != "object") {
                let value = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                self.wrong_type(value);
                return Ok(());
            }
            let node = &self.shape.nodes[self.node];
            let (properties, additional) = (node.properties.as_ref(), node.additional);
            while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
                match (properties.and_then(|p| p.get(name.as_ref())), additional) {
                    (Some(&child), _) => {
                        let dot = if self.path.is_empty() { "" } else { "." };
                        self.child(&mut map, child, [dot, &name])?;
                    }
                    (None, Some(child)) => self.child(&mut map, child, [".{}", ""])?,
                    (None, None) if properties.is_some() => {
                        let member: &RawValue = map.next_value()?;
                        if member.get() != "null" {
                            let value: Value =
                                serde_json::from_str(member.get()).unwrap_or(Value::Null);
                            self.out.push(Drift {
                                path: self.member_path(&name),
                                kind: DriftKind::UnknownPath,
                                example: example(&value),
                            });
                        }
                    }
                    (None, None) => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }
}

/// (finding type, path, kind): what a drift entry is about.
pub type DriftKey = (String, String, DriftKind);

/// Drift of a run, one entry per (finding type, path, kind): where first seen, an example, a count.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DriftLog {
    /// As a list of pairs in JSON (the keys are tuples).
    #[serde(with = "entry_list")]
    pub entries: BTreeMap<DriftKey, DriftEntry>,
    /// Differences not recorded because the run already held [`MAX_DRIFT_ENTRIES`].
    pub dropped: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DriftEntry {
    pub account_id: String,
    pub region: String,
    pub first_seen_ms: i64,
    pub example: String,
    pub count: u64,
}

mod entry_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::{DriftEntry, DriftKey};

    pub fn serialize<S: Serializer>(
        entries: &BTreeMap<DriftKey, DriftEntry>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(entries.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<DriftKey, DriftEntry>, D::Error> {
        let list: Vec<(DriftKey, DriftEntry)> = Vec::deserialize(deserializer)?;
        Ok(list.into_iter().collect())
    }
}

impl DriftLog {
    /// Adds the drift another process saw (a shard's): counts add up, the earlier sighting
    /// stays, and the run's cap holds.
    pub fn merge(&mut self, other: DriftLog) {
        self.dropped += other.dropped;
        for (key, entry) in other.entries {
            if let Some(mine) = self.entries.get_mut(&key) {
                mine.count += entry.count;
                if entry.first_seen_ms < mine.first_seen_ms {
                    let count = mine.count;
                    *mine = DriftEntry { count, ..entry };
                }
            } else if self.entries.len() >= MAX_DRIFT_ENTRIES {
                self.dropped += 1;
            } else {
                self.entries.insert(key, entry);
            }
        }
    }

    pub fn record(&mut self, finding: &Value, account_id: &str, region: &str, now_ms: i64) {
        let finding_type = finding.get("type").and_then(Value::as_str).unwrap_or("");
        self.record_found(check(finding), finding_type, account_id, region, now_ms);
    }

    /// Records the differences of one finding of type `finding_type` ([`check`] or
    /// [`check_text`]); past [`MAX_DRIFT_PER_FINDING`], the first in path order are kept.
    pub fn record_found(
        &mut self,
        mut found: Vec<Drift>,
        finding_type: &str,
        account_id: &str,
        region: &str,
        now_ms: i64,
    ) {
        if found.len() > MAX_DRIFT_PER_FINDING {
            found.sort_by(|a, b| (&a.path, a.kind).cmp(&(&b.path, b.kind)));
            let total = found.len();
            found.truncate(MAX_DRIFT_PER_FINDING);
            found.push(Drift {
                path: String::new(),
                kind: DriftKind::TooManyDifferences,
                example: format!(
                    "{total} differences; the first {MAX_DRIFT_PER_FINDING} are recorded"
                ),
            });
        }
        for drift in found {
            let key = (finding_type.to_owned(), drift.path, drift.kind);
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.count += 1;
            } else if self.entries.len() >= MAX_DRIFT_ENTRIES {
                self.dropped += 1;
            } else {
                self.entries.insert(
                    key,
                    DriftEntry {
                        account_id: account_id.to_owned(),
                        region: region.to_owned(),
                        first_seen_ms: now_ms,
                        example: drift.example,
                        count: 1,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_finding() -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/guardduty/examples/network_instance.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The differences of a finding, read both ways (value and text), which must agree.
    fn both(finding: &Value) -> Vec<Drift> {
        let sorted = |mut found: Vec<Drift>| {
            found.sort_by(|a, b| (&a.path, a.kind).cmp(&(&b.path, b.kind)));
            found
        };
        let from_value = sorted(check(finding));
        assert_eq!(sorted(check_text(&finding.to_string())), from_value);
        from_value
    }

    #[test]
    fn every_example_matches_the_known_shape() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/guardduty/examples");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let finding: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(both(&finding), vec![], "{}", path.display());
        }
    }

    #[test]
    fn new_fields_wrong_types_and_new_types_are_reported() {
        let mut finding = example_finding();
        finding["service"]["action"]["networkConnectionAction"]["shinyNewField"] =
            serde_json::json!({"a": 1});
        finding["service"]["count"] = "many".into();
        finding["service"]["action"]["actionType"] = "QUANTUM_TUNNEL".into();
        finding["type"] = "Impact:EC2/NeverSeen".into();
        finding["resource"]["instanceDetails"]["tags"] =
            serde_json::json!([{"key": "k", "value": "v", "extra": "x".repeat(400)}]);
        let drift = both(&finding);
        let kinds: Vec<(String, &str)> = drift
            .iter()
            .map(|d| (d.path.clone(), d.kind.as_str()))
            .collect();
        assert!(
            kinds.contains(&(
                "service.action.networkConnectionAction.shinyNewField".into(),
                "unknown_path"
            )),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("service.count".into(), "wrong_type")),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("service.action.actionType".into(), "new_action_type")),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("type".into(), "new_finding_type")),
            "{kinds:?}"
        );
        let extra = drift
            .iter()
            .find(|d| d.path == "resource.instanceDetails.tags[].extra")
            .unwrap();
        assert_eq!(extra.example.len(), EXAMPLE_BYTES);
        assert_eq!(drift.len(), 5, "{kinds:?}");
    }

    #[test]
    fn free_additional_info_keys_and_null_members_are_not_drift() {
        let mut finding = example_finding();
        finding["service"]["additionalInfo"] =
            serde_json::json!({"sample": true, "threatListName": "x", "unusual": {"a": [1]}});
        finding["service"]["brandNewButNull"] = Value::Null;
        assert_eq!(both(&finding), vec![]);
        finding["service"]["brandNew"] = 1.into();
        assert_eq!(both(&finding).len(), 1);
    }

    #[test]
    fn a_finding_with_thousands_of_new_keys_is_bounded() {
        let mut finding = example_finding();
        for i in 0..10_000 {
            finding[format!("novel{i}")] = 1.into();
        }
        let mut log = DriftLog::default();
        log.record(&finding, "1", "r", 5);
        assert_eq!(log.entries.len(), MAX_DRIFT_PER_FINDING + 1);
        let (_, entry) = log
            .entries
            .iter()
            .find(|((_, _, kind), _)| *kind == DriftKind::TooManyDifferences)
            .unwrap();
        assert!(
            entry.example.starts_with("10000 differences"),
            "{}",
            entry.example
        );
        for n in 0..100 {
            let mut other = example_finding();
            other["type"] = format!("New:Type/N{n}").into();
            for i in 0..20 {
                other[format!("k{i}")] = 1.into();
            }
            log.record(&other, "1", "r", 5);
        }
        assert_eq!(log.entries.len(), MAX_DRIFT_ENTRIES);
        assert!(log.dropped > 0);
    }

    #[test]
    fn a_run_log_counts_each_path_once() {
        let mut finding = example_finding();
        finding["novel"] = 1.into();
        let mut log = DriftLog::default();
        log.record(&finding, "1", "r", 5);
        log.record(&finding, "2", "r", 6);
        assert_eq!(log.entries.len(), 1);
        let entry = log.entries.values().next().unwrap();
        assert_eq!(
            (entry.count, entry.first_seen_ms, entry.account_id.as_str()),
            (2, 5, "1")
        );
    }
}
