//! CloudTrail record JSON (as in `CloudTrailEvent` of LookupEvents, or an org-trail object's
//! `Records[]`) → a `cloudtrail_events` row; and the `finding_events` links.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, ListBuilder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::guardduty::{parse_iso_ms, RunStamp};
use super::schema;

/// Declares the text columns: the `Text` names, their column names, and an accessor for each.
macro_rules! text_columns {
    (
        required { $($req:ident => $req_fn:ident, $req_col:literal;)* }
        optional { $($opt:ident => $opt_fn:ident, $opt_col:literal;)* }
    ) => {
        /// The text columns of `cloudtrail_events`, apart from `raw` and `resources`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Text {
            $($req,)*
            $($opt,)*
        }

        impl Text {
            pub const ALL: &'static [Text] = &[$(Text::$req,)* $(Text::$opt,)*];

            /// The column's name in `schemas/cloudtrail_events.json`.
            pub fn column(self) -> &'static str {
                match self {
                    $(Text::$req => $req_col,)*
                    $(Text::$opt => $opt_col,)*
                }
            }

            pub fn of_column(name: &str) -> Option<Text> {
                match name {
                    $($req_col => Some(Text::$req),)*
                    $($opt_col => Some(Text::$opt),)*
                    _ => None,
                }
            }
        }

        impl EventRow {
            $(
                #[doc = concat!("`", $req_col, "` (empty when the record has none).")]
                pub fn $req_fn(&self) -> &str {
                    self.text(Text::$req).unwrap_or_default()
                }
            )*
            $(
                #[doc = concat!("`", $opt_col, "`.")]
                pub fn $opt_fn(&self) -> Option<&str> {
                    self.text(Text::$opt)
                }
            )*
        }
    };
}

text_columns! {
    required {
        EventId => event_id, "event_id";
        AccountId => account_id, "account_id";
        Region => region, "region";
    }
    optional {
        EventVersion => event_version, "event_version";
        EventSource => event_source, "event_source";
        EventName => event_name, "event_name";
        EventType => event_type, "event_type";
        EventCategory => event_category, "event_category";
        SourceIp => source_ip, "source_ip";
        UserAgent => user_agent, "user_agent";
        IdentityType => identity_type, "identity_type";
        IdentityArn => identity_arn, "identity_arn";
        PrincipalId => principal_id, "principal_id";
        AccessKeyId => access_key_id, "access_key_id";
        UserName => user_name, "user_name";
        SessionIssuerArn => session_issuer_arn, "session_issuer_arn";
        InvokedBy => invoked_by, "invoked_by";
        ErrorCode => error_code, "error_code";
        ErrorMessage => error_message, "error_message";
        RequestParameters => request_parameters, "request_parameters";
        ResponseElements => response_elements, "response_elements";
        AdditionalEventData => additional_event_data, "additional_event_data";
        TlsVersion => tls_version, "tls_version";
        VpcEndpointId => vpc_endpoint_id, "vpc_endpoint_id";
    }
}

const TEXTS: usize = Text::ALL.len();

/// Where a column's text is in the row's buffer; `start == u32::MAX` is no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    const NONE: Span = Span {
        start: u32::MAX,
        len: 0,
    };
}

/// One CloudTrail event. Its text is one buffer: the record as delivered (`raw`), followed by
/// the little text the columns need that is not a slice of the record (unescaped strings,
/// compacted JSON, `resources` entries). Columns are spans of that buffer, read by name
/// (`row.event_name()`), so a row is one allocation however many columns it fills.
#[derive(Clone)]
pub struct EventRow {
    text: String,
    raw_len: u32,
    spans: [Span; TEXTS],
    resources: Option<Vec<Span>>,
    pub event_time_ms: i64,
    pub mfa_authenticated: Option<bool>,
    pub read_only: Option<bool>,
    pub management_event: Option<bool>,
}

/// Why a record could not be used; it is quarantined with this reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadRecord {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("the record is not a JSON object")]
    NotAnObject,
    #[error("the record has no eventID")]
    NoEventId,
    #[error("the record has no valid eventTime")]
    NoEventTime,
    #[error(
        "the record is {0} bytes, over the limit of 16 MiB (MAX_RECORD_BYTES); it was not kept"
    )]
    TooLarge(u64),
}

impl EventRow {
    pub fn dt(&self) -> NaiveDate {
        DateTime::<Utc>::from_timestamp_millis(self.event_time_ms)
            .map(|t| t.date_naive())
            .unwrap_or_default()
    }

    /// A text column's value.
    pub fn text(&self, column: Text) -> Option<&str> {
        self.at(self.spans[column as usize])
    }

    fn at(&self, span: Span) -> Option<&str> {
        if span.start == u32::MAX {
            return None;
        }
        let start = span.start as usize;
        self.text.get(start..start + span.len as usize)
    }

    /// The length of a text column's value (0 when it has none), without reading the text.
    pub fn text_len(&self, column: Text) -> usize {
        let span = self.spans[column as usize];
        if span.start == u32::MAX {
            0
        } else {
            span.len as usize
        }
    }

    /// The record's JSON text as delivered.
    pub fn raw(&self) -> &str {
        &self.text[..self.raw_len as usize]
    }

    /// `resources`: one `type|ARN|accountId` entry per resource.
    pub fn resources(&self) -> Option<Vec<&str>> {
        let spans = self.resources.as_ref()?;
        Some(
            spans
                .iter()
                .map(|s| self.at(*s).unwrap_or_default())
                .collect(),
        )
    }

    /// Bytes the row holds, roughly.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.text.capacity()
            + self.resources.as_ref().map_or(0, |r| r.len() * 8)
    }
}

impl PartialEq for EventRow {
    fn eq(&self, other: &Self) -> bool {
        Text::ALL.iter().all(|&t| self.text(t) == other.text(t))
            && self.raw() == other.raw()
            && self.resources() == other.resources()
            && (
                self.event_time_ms,
                self.mfa_authenticated,
                self.read_only,
                self.management_event,
            ) == (
                other.event_time_ms,
                other.mfa_authenticated,
                other.read_only,
                other.management_event,
            )
    }
}

impl std::fmt::Debug for EventRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("EventRow");
        for &t in Text::ALL {
            s.field(t.column(), &self.text(t));
        }
        s.field("event_time_ms", &self.event_time_ms)
            .field("mfa_authenticated", &self.mfa_authenticated)
            .field("read_only", &self.read_only)
            .field("management_event", &self.management_event)
            .field("resources", &self.resources())
            .field("raw", &self.raw())
            .finish()
    }
}

/// A row being filled. Text that lies inside the record (found by address) is kept as a span
/// of it; any other text is collected after it.
struct Draft {
    base: usize,
    raw_len: usize,
    extra: String,
    spans: [Span; TEXTS],
    resources: Option<Vec<Span>>,
}

thread_local! {
    /// The buffer a draft collects its extra text in, reused from row to row.
    static SCRATCH: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// Spans of text collected after the record carry this bit until `finish` places them.
const EXTRA: u32 = 1 << 31;

impl Draft {
    fn new(raw: &str) -> Self {
        let mut extra = SCRATCH.take();
        extra.clear();
        Self {
            base: raw.as_ptr() as usize,
            raw_len: raw.len(),
            extra,
            spans: [Span::NONE; TEXTS],
            resources: None,
        }
    }

    fn span(&mut self, text: &str) -> Span {
        let at = (text.as_ptr() as usize).wrapping_sub(self.base);
        if at <= self.raw_len && text.len() <= self.raw_len - at && self.raw_len < EXTRA as usize {
            Span {
                start: at as u32,
                len: text.len() as u32,
            }
        } else {
            let start = self.extra.len() as u32 | EXTRA;
            self.extra.push_str(text);
            Span {
                start,
                len: text.len() as u32,
            }
        }
    }

    fn set(&mut self, column: Text, value: Option<&str>) {
        if let Some(value) = value {
            self.spans[column as usize] = self.span(value);
        }
    }

    /// The row, with `raw` as its buffer's start: the very text the draft was made from (its
    /// spans are offsets into it), or any text when the draft was made from "" (it holds all
    /// its text itself).
    fn finish(self, raw: &str, event_time_ms: i64, flags: [Option<bool>; 3]) -> EventRow {
        let place = |mut span: Span| {
            if span.start != u32::MAX && span.start & EXTRA != 0 {
                span.start = (span.start & !EXTRA) + raw.len() as u32;
            }
            span
        };
        let spans = self.spans.map(place);
        let resources = self
            .resources
            .map(|list| list.into_iter().map(place).collect());
        let mut text = String::with_capacity(raw.len() + self.extra.len());
        text.push_str(raw);
        text.push_str(&self.extra);
        SCRATCH.set(self.extra);
        EventRow {
            text,
            raw_len: raw.len() as u32,
            spans,
            resources,
            event_time_ms,
            mfa_authenticated: flags[0],
            read_only: flags[1],
            management_event: flags[2],
        }
    }
}

fn text(value: &Value, pointer: &str) -> Option<String> {
    match value.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn flag(value: &Value, pointer: &str) -> Option<bool> {
    match value.pointer(pointer)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn json_text(value: &Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .filter(|v| !v.is_null())
        .map(Value::to_string)
}

/// The user name LookupEvents reports: the IAM user, the role session, root, or the service.
pub fn user_name(record: &Value) -> Option<String> {
    let identity = record.get("userIdentity")?;
    text(identity, "/userName").or_else(|| {
        user_name_by_type(
            identity.get("type").and_then(Value::as_str),
            text(identity, "/arn").as_deref(),
            text(identity, "/invokedBy").as_deref(),
        )
        .map(str::to_owned)
    })
}

/// The user name of an identity without `userName`: root, the role session (the ARN's last
/// part), or the service that acted.
fn user_name_by_type<'a>(
    identity_type: Option<&str>,
    arn: Option<&'a str>,
    invoked_by: Option<&'a str>,
) -> Option<&'a str> {
    match identity_type {
        Some("Root") => Some("root"),
        Some("AssumedRole") | Some("FederatedUser") => arn.and_then(|a| a.rsplit('/').next()),
        Some("AWSService") => invoked_by,
        _ => None,
    }
}

/// Normalizes one record read as a JSON value. `raw` is its exact JSON text: the JSON columns
/// keep its member order, as on the one-pass reading (a value's members are sorted; they are
/// used only when `raw` cannot be read as an object).
pub fn normalize(record: &Value, raw: &str) -> Result<EventRow, BadRecord> {
    if !record.is_object() {
        return Err(BadRecord::NotAnObject);
    }
    let event_id = text(record, "/eventID")
        .filter(|s| !s.is_empty())
        .ok_or(BadRecord::NoEventId)?;
    let event_time_ms = text(record, "/eventTime")
        .and_then(|t| parse_iso_ms(&t))
        .ok_or(BadRecord::NoEventTime)?;
    let mut draft = Draft::new("");
    let mut put = |column: Text, pointer: &str| draft.set(column, text(record, pointer).as_deref());
    put(Text::EventVersion, "/eventVersion");
    put(Text::EventSource, "/eventSource");
    put(Text::EventName, "/eventName");
    put(Text::EventType, "/eventType");
    put(Text::EventCategory, "/eventCategory");
    put(Text::SourceIp, "/sourceIPAddress");
    put(Text::UserAgent, "/userAgent");
    put(Text::IdentityType, "/userIdentity/type");
    put(Text::IdentityArn, "/userIdentity/arn");
    put(Text::PrincipalId, "/userIdentity/principalId");
    put(
        Text::SessionIssuerArn,
        "/userIdentity/sessionContext/sessionIssuer/arn",
    );
    put(Text::InvokedBy, "/userIdentity/invokedBy");
    put(Text::ErrorCode, "/errorCode");
    put(Text::ErrorMessage, "/errorMessage");
    put(Text::TlsVersion, "/tlsDetails/tlsVersion");
    put(Text::VpcEndpointId, "/vpcEndpointId");
    draft.set(Text::EventId, Some(&event_id));
    let account_id = text(record, "/recipientAccountId")
        .or_else(|| text(record, "/userIdentity/accountId"))
        .unwrap_or_default();
    draft.set(Text::AccountId, Some(&account_id));
    draft.set(
        Text::Region,
        Some(&text(record, "/awsRegion").unwrap_or_default()),
    );
    let key = text(record, "/userIdentity/accessKeyId").filter(|k| !k.is_empty());
    draft.set(Text::AccessKeyId, key.as_deref());
    draft.set(Text::UserName, user_name(record).as_deref());
    let members = serde_json::from_str::<HashMap<Cow<'_, str>, &RawValue>>(raw).ok();
    for (column, name) in [
        (Text::RequestParameters, "requestParameters"),
        (Text::ResponseElements, "responseElements"),
        (Text::AdditionalEventData, "additionalEventData"),
    ] {
        match &members {
            Some(members) => draft.set(column, member_json(members.get(name).copied()).as_deref()),
            None => draft.set(column, json_text(record, &format!("/{name}")).as_deref()),
        }
    }
    if let Some(list) = record.get("resources").and_then(Value::as_array) {
        draft.resources = Some(value_resources(&mut draft, list));
    }
    Ok(draft.finish(
        raw,
        event_time_ms,
        [
            flag(
                record,
                "/userIdentity/sessionContext/attributes/mfaAuthenticated",
            ),
            flag(record, "/readOnly"),
            flag(record, "/managementEvent"),
        ],
    ))
}

/// `resources` entries (`type|ARN|accountId`) of a record read as a value.
fn value_resources(draft: &mut Draft, list: &[Value]) -> Vec<Span> {
    list.iter()
        .map(|r| {
            let entry = format!(
                "{}|{}|{}",
                text(r, "/type").unwrap_or_default(),
                text(r, "/ARN").unwrap_or_default(),
                text(r, "/accountId").unwrap_or_default()
            );
            draft.span(&entry)
        })
        .collect()
}

/// A member as it appears in the record, not yet interpreted (a string, a number, an object…).
type Member<'a> = Option<&'a RawValue>;

/// The members of a CloudTrail record that become columns, borrowed from the record's text.
/// Members not named here are skipped; they stay in `raw`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(rename = "eventID", borrow)]
    event_id: Member<'a>,
    #[serde(borrow)]
    event_time: Member<'a>,
    #[serde(borrow)]
    event_version: Member<'a>,
    #[serde(borrow)]
    event_source: Member<'a>,
    #[serde(borrow)]
    event_name: Member<'a>,
    #[serde(borrow)]
    event_type: Member<'a>,
    #[serde(borrow)]
    event_category: Member<'a>,
    #[serde(borrow)]
    recipient_account_id: Member<'a>,
    #[serde(borrow)]
    aws_region: Member<'a>,
    #[serde(rename = "sourceIPAddress", borrow)]
    source_ip_address: Member<'a>,
    #[serde(borrow)]
    user_agent: Member<'a>,
    #[serde(borrow)]
    user_identity: Option<WireIdentity<'a>>,
    #[serde(borrow)]
    error_code: Member<'a>,
    #[serde(borrow)]
    error_message: Member<'a>,
    #[serde(borrow)]
    read_only: Member<'a>,
    #[serde(borrow)]
    management_event: Member<'a>,
    #[serde(borrow)]
    resources: Option<Vec<WireResource<'a>>>,
    #[serde(borrow)]
    request_parameters: Member<'a>,
    #[serde(borrow)]
    response_elements: Member<'a>,
    #[serde(borrow)]
    additional_event_data: Member<'a>,
    #[serde(borrow)]
    tls_details: Option<WireTls<'a>>,
    #[serde(borrow)]
    vpc_endpoint_id: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireIdentity<'a> {
    #[serde(rename = "type", borrow)]
    kind: Member<'a>,
    #[serde(borrow)]
    arn: Member<'a>,
    #[serde(borrow)]
    principal_id: Member<'a>,
    #[serde(borrow)]
    access_key_id: Member<'a>,
    #[serde(borrow)]
    user_name: Member<'a>,
    #[serde(borrow)]
    invoked_by: Member<'a>,
    #[serde(borrow)]
    account_id: Member<'a>,
    #[serde(borrow)]
    session_context: Option<WireSession<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSession<'a> {
    #[serde(borrow)]
    session_issuer: Option<WireArn<'a>>,
    #[serde(borrow)]
    attributes: Option<WireAttributes<'a>>,
}

#[derive(Deserialize)]
struct WireArn<'a> {
    #[serde(borrow)]
    arn: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAttributes<'a> {
    #[serde(borrow)]
    mfa_authenticated: Member<'a>,
}

#[derive(Deserialize)]
struct WireResource<'a> {
    #[serde(rename = "type", borrow)]
    kind: Member<'a>,
    #[serde(rename = "ARN", borrow)]
    arn: Member<'a>,
    #[serde(rename = "accountId", borrow)]
    account_id: Member<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTls<'a> {
    #[serde(borrow)]
    tls_version: Member<'a>,
}

/// A member as text: a string's value, a number or boolean as written, an object or array as
/// compact JSON text; `null` or absent is `None`. The same rules as `text` on a parsed value.
/// Text that needs no change is borrowed from the record.
fn member_text(member: Member<'_>) -> Option<Cow<'_, str>> {
    let written = member?.get();
    match written.as_bytes().first()? {
        b'"' => {
            let inner = &written[1..written.len() - 1];
            if memchr::memchr(b'\\', inner.as_bytes()).is_some() {
                serde_json::from_str::<String>(written).ok().map(Cow::Owned)
            } else {
                Some(Cow::Borrowed(inner))
            }
        }
        b'n' => None,
        b'{' | b'[' => Some(compact_json(written)),
        _ => Some(Cow::Borrowed(written)),
    }
}

/// A member that is an object or array, as compact JSON text (members in their original order).
fn member_json(member: Member<'_>) -> Option<Cow<'_, str>> {
    let written = member?.get();
    (written != "null").then(|| compact_json(written))
}

fn member_flag(member: Member<'_>) -> Option<bool> {
    match member?.get() {
        "true" | "\"true\"" => Some(true),
        "false" | "\"false\"" => Some(false),
        _ => None,
    }
}

/// JSON text without the whitespace between tokens (string contents untouched); borrowed when
/// there is none.
pub fn compact_json(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
    {
        return Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            continue;
        }
        out.push(b);
    }
    // Only ASCII whitespace outside strings was dropped, so the text is still UTF-8.
    match String::from_utf8(out) {
        Ok(compact) => Cow::Owned(compact),
        Err(_) => Cow::Borrowed(text),
    }
}

/// Normalizes one record from its JSON text, which becomes `raw`. The record is read in one
/// pass into borrowed members (no tree of values); a record of an unusual shape (a member of an
/// unexpected type, a repeated member) is read again as a JSON value with the same rules.
/// On failure the text is handed back with the reason, to be quarantined whole.
pub fn normalize_text(raw: &str) -> Result<EventRow, (BadRecord, String)> {
    let typed = match serde_json::from_str::<Wire<'_>>(raw) {
        Ok(wire) => from_wire(&wire, raw),
        Err(_) => None,
    };
    match typed {
        Some(Ok((draft, event_time_ms, flags))) => Ok(draft.finish(raw, event_time_ms, flags)),
        Some(Err(bad)) => Err((bad, raw.to_owned())),
        None => match serde_json::from_str::<Value>(raw) {
            Ok(value) => normalize(&value, raw).map_err(|bad| (bad, raw.to_owned())),
            Err(e) => Err((BadRecord::NotJson(e.to_string()), raw.to_owned())),
        },
    }
}

/// What a record read into members gives before its text is placed: the draft, eventTime,
/// and (mfaAuthenticated, readOnly, managementEvent).
type Read = (Draft, i64, [Option<bool>; 3]);

/// The row of a record read into members; `None` when it is not the usual shape (see
/// `normalize_text`), e.g. `userIdentity` not an object.
fn from_wire(wire: &Wire<'_>, raw: &str) -> Option<Result<Read, BadRecord>> {
    let Some(event_id) = member_text(wire.event_id).filter(|s| !s.is_empty()) else {
        return Some(Err(BadRecord::NoEventId));
    };
    let Some(event_time_ms) = member_text(wire.event_time).and_then(|t| parse_iso_ms(&t)) else {
        return Some(Err(BadRecord::NoEventTime));
    };
    let mut draft = Draft::new(raw);
    let put = |d: &mut Draft, column: Text, member: Member<'_>| {
        d.set(column, member_text(member).as_deref())
    };
    draft.set(Text::EventId, Some(&event_id));
    put(&mut draft, Text::EventVersion, wire.event_version);
    put(&mut draft, Text::EventSource, wire.event_source);
    put(&mut draft, Text::EventName, wire.event_name);
    put(&mut draft, Text::EventType, wire.event_type);
    put(&mut draft, Text::EventCategory, wire.event_category);
    put(&mut draft, Text::SourceIp, wire.source_ip_address);
    put(&mut draft, Text::UserAgent, wire.user_agent);
    put(&mut draft, Text::ErrorCode, wire.error_code);
    put(&mut draft, Text::ErrorMessage, wire.error_message);
    put(&mut draft, Text::VpcEndpointId, wire.vpc_endpoint_id);
    let tls = wire.tls_details.as_ref().and_then(|t| t.tls_version);
    put(&mut draft, Text::TlsVersion, tls);
    for (column, member) in [
        (Text::RequestParameters, wire.request_parameters),
        (Text::ResponseElements, wire.response_elements),
        (Text::AdditionalEventData, wire.additional_event_data),
    ] {
        draft.set(column, member_json(member).as_deref());
    }
    put_identity(&mut draft, wire);
    let region = member_text(wire.aws_region);
    draft.set(Text::Region, Some(region.as_deref().unwrap_or_default()));
    if let Some(list) = &wire.resources {
        draft.resources = Some(wire_resources(&mut draft, list));
    }
    let session = wire
        .user_identity
        .as_ref()
        .and_then(|i| i.session_context.as_ref());
    let mfa = session
        .and_then(|s| s.attributes.as_ref())
        .and_then(|a| member_flag(a.mfa_authenticated));
    let flags = [
        mfa,
        member_flag(wire.read_only),
        member_flag(wire.management_event),
    ];
    Some(Ok((draft, event_time_ms, flags)))
}

/// The identity columns of a record read into members: who called, with which key, in which
/// account, under which session issuer.
fn put_identity(draft: &mut Draft, wire: &Wire<'_>) {
    let identity = wire.user_identity.as_ref();
    let id =
        |f: for<'w> fn(&WireIdentity<'w>) -> Member<'w>| identity.and_then(|i| member_text(f(i)));
    let identity_type = id(|i| i.kind);
    let identity_arn = id(|i| i.arn);
    let invoked_by = id(|i| i.invoked_by);
    let user_name = id(|i| i.user_name);
    let user_name = user_name.as_deref().or_else(|| {
        user_name_by_type(
            identity_type.as_deref(),
            identity_arn.as_deref(),
            invoked_by.as_deref(),
        )
    });
    draft.set(Text::UserName, user_name);
    draft.set(Text::IdentityType, identity_type.as_deref());
    draft.set(Text::IdentityArn, identity_arn.as_deref());
    draft.set(Text::InvokedBy, invoked_by.as_deref());
    draft.set(Text::PrincipalId, id(|i| i.principal_id).as_deref());
    let key = id(|i| i.access_key_id).filter(|k| !k.is_empty());
    draft.set(Text::AccessKeyId, key.as_deref());
    let account = member_text(wire.recipient_account_id).or_else(|| id(|i| i.account_id));
    draft.set(
        Text::AccountId,
        Some(account.as_deref().unwrap_or_default()),
    );
    let session = identity.and_then(|i| i.session_context.as_ref());
    let issuer = session.and_then(|s| s.session_issuer.as_ref());
    draft.set(
        Text::SessionIssuerArn,
        issuer.and_then(|s| member_text(s.arn)).as_deref(),
    );
}

/// `resources` entries (`type|ARN|accountId`), as spans of the draft's text.
fn wire_resources(draft: &mut Draft, list: &[WireResource<'_>]) -> Vec<Span> {
    let mut entry = String::new();
    list.iter()
        .map(|r| {
            entry.clear();
            for (i, member) in [r.kind, r.arn, r.account_id].into_iter().enumerate() {
                if i > 0 {
                    entry.push('|');
                }
                entry.push_str(member_text(member).as_deref().unwrap_or_default());
            }
            draft.span(&entry)
        })
        .collect()
}

/// A column of `cloudtrail_events` being built.
enum Column {
    Text(Text, StringBuilder),
    Raw(StringBuilder),
    EventTime(TimestampMillisecondBuilder),
    Flag(fn(&EventRow) -> Option<bool>, BooleanBuilder),
    Resources(ListBuilder<StringBuilder>),
    CollectedAt(TimestampMillisecondBuilder),
    RunId(StringBuilder),
}

/// Builds a `cloudtrail_events` RecordBatch from rows (or references to rows), columns in
/// `schemas/cloudtrail_events.json` order, leaving out the columns named in `without`. Rows are
/// read one at a time, each into every column, so each row's text is brought into the cache once.
pub fn events_batch<R: std::borrow::Borrow<EventRow>>(
    rows: &[R],
    stamp: &RunStamp,
    without: &[&str],
) -> Result<RecordBatch, ArrowError> {
    let schema = schema::cloudtrail_events().arrow_schema_without(without);
    let n = rows.len();
    let strings = |bytes: usize| StringBuilder::with_capacity(n, bytes);
    let times = || TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let flag = |f: fn(&EventRow) -> Option<bool>| Column::Flag(f, BooleanBuilder::with_capacity(n));
    let mut columns = Vec::new();
    for field in schema.fields() {
        let name = field.name().as_str();
        if let Some(text) = Text::of_column(name) {
            let bytes = rows.iter().map(|r| r.borrow().text_len(text)).sum();
            columns.push(Column::Text(text, strings(bytes)));
            continue;
        }
        columns.push(match name {
            "event_time" => Column::EventTime(times()),
            "mfa_authenticated" => flag(|r| r.mfa_authenticated),
            "read_only" => flag(|r| r.read_only),
            "management_event" => flag(|r| r.management_event),
            "resources" => {
                let item = Arc::new(Field::new("element", DataType::Utf8, true));
                Column::Resources(ListBuilder::new(StringBuilder::new()).with_field(item))
            }
            "raw" => Column::Raw(strings(rows.iter().map(|r| r.borrow().raw_len as usize).sum())),
            "collected_at" => Column::CollectedAt(times()),
            "run_id" => Column::RunId(strings(n * stamp.run_id.len())),
            other => return Err(ArrowError::SchemaError(format!("schemas/cloudtrail_events.json has column {other} that the normalizer does not fill"))),
        });
    }
    for row in rows {
        let row = row.borrow();
        for column in &mut columns {
            match column {
                Column::Text(text, b) => b.append_option(row.text(*text)),
                Column::Raw(b) => b.append_value(row.raw()),
                Column::EventTime(b) => b.append_value(row.event_time_ms),
                Column::Flag(f, b) => b.append_option(f(row)),
                Column::Resources(b) => match row.resources() {
                    Some(list) => {
                        list.iter().for_each(|v| b.values().append_value(v));
                        b.append(true);
                    }
                    None => b.append(false),
                },
                Column::CollectedAt(b) => b.append_value(stamp.collected_at_ms),
                Column::RunId(b) => b.append_value(&stamp.run_id),
            }
        }
    }
    let arrays: Vec<ArrayRef> = columns
        .into_iter()
        .map(|column| -> ArrayRef {
            match column {
                Column::Text(_, mut b) | Column::Raw(mut b) | Column::RunId(mut b) => {
                    Arc::new(b.finish())
                }
                Column::EventTime(mut b) | Column::CollectedAt(mut b) => Arc::new(b.finish()),
                Column::Flag(_, mut b) => Arc::new(b.finish()),
                Column::Resources(mut b) => Arc::new(b.finish()),
            }
        })
        .collect();
    RecordBatch::try_new(schema, arrays)
}

/// One `finding_events` link.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FindingEvent {
    pub finding_account_id: String,
    pub finding_region: String,
    pub finding_id: String,
    pub finding_updated_at_ms: i64,
    pub event_id: String,
    pub event_region: String,
    pub reason: &'static str,
    /// The event's name and time, for alerts (not columns of `finding_events`).
    pub event_name: Option<String>,
    pub event_time_ms: Option<i64>,
}

impl FindingEvent {
    pub fn dt(&self) -> NaiveDate {
        DateTime::<Utc>::from_timestamp_millis(self.finding_updated_at_ms)
            .map(|t| t.date_naive())
            .unwrap_or_default()
    }
}

pub fn links_batch(links: &[FindingEvent], run_id: &str) -> Result<RecordBatch, ArrowError> {
    let schema = schema::finding_events().arrow_schema();
    let strings = |f: &dyn Fn(&FindingEvent) -> &str| -> ArrayRef {
        Arc::new(
            links
                .iter()
                .map(|l| Some(f(l)))
                .collect::<arrow_array::StringArray>(),
        )
    };
    let mut columns = Vec::new();
    for field in schema.fields() {
        columns.push(match field.name().as_str() {
            "finding_id" => strings(&|l| &l.finding_id),
            "finding_account_id" => strings(&|l| &l.finding_account_id),
            "finding_region" => strings(&|l| &l.finding_region),
            "finding_updated_at" => Arc::new(
                arrow_array::TimestampMillisecondArray::from(
                    links
                        .iter()
                        .map(|l| l.finding_updated_at_ms)
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            "event_id" => strings(&|l| &l.event_id),
            "event_region" => strings(&|l| &l.event_region),
            "reason" => strings(&|l| l.reason),
            "run_id" => Arc::new(
                links
                    .iter()
                    .map(|_| Some(run_id))
                    .collect::<arrow_array::StringArray>(),
            ),
            other => {
                return Err(ArrowError::SchemaError(format!(
                    "schemas/finding_events.json has column {other} that the linker does not fill"
                )))
            }
        });
    }
    RecordBatch::try_new(schema, columns)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::Path;

    /// The CloudTrail fixture records, one per identity type: (text, value).
    pub(crate) fn fixtures() -> Vec<(String, Value)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cloudtrail");
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        all.sort();
        all.into_iter()
            .map(|p| {
                let raw = std::fs::read_to_string(p).unwrap();
                let value = serde_json::from_str(&raw).unwrap();
                (raw, value)
            })
            .collect()
    }

    #[test]
    fn every_identity_type_normalizes_and_builds_a_batch() {
        let rows: Vec<EventRow> = fixtures()
            .into_iter()
            .map(|(raw, v)| normalize(&v, &raw).unwrap())
            .collect();
        let by_type = |t: &str| rows.iter().find(|r| r.identity_type() == Some(t)).unwrap();
        assert_eq!(by_type("Root").user_name(), Some("root"));
        assert_eq!(by_type("AssumedRole").user_name(), Some("ops-session"));
        assert_eq!(by_type("AssumedRole").mfa_authenticated, Some(true));
        assert_eq!(
            by_type("AssumedRole").session_issuer_arn(),
            Some("arn:aws:iam::111122223333:role/Ops")
        );
        assert_eq!(
            by_type("AWSService").invoked_by(),
            Some("lambda.amazonaws.com")
        );
        assert_eq!(by_type("FederatedUser").error_code(), Some("AccessDenied"));
        assert_eq!(by_type("IAMUser").tls_version(), Some("TLSv1.3"));
        assert_eq!(
            by_type("IAMUser").resources(),
            Some(vec![
                "AWS::IAM::User|arn:aws:iam::111122223333:user/deploy-1|111122223333"
            ])
        );
        let stamp = RunStamp {
            run_id: "r".into(),
            collected_at_ms: 0,
        };
        assert_eq!(events_batch(&rows, &stamp, &[]).unwrap().num_rows(), 5);
    }

    /// The one-pass reading gives the same row as reading a JSON value, JSON members compared
    /// as JSON; so does the fallback for records of unusual shapes.
    #[test]
    fn text_and_value_readings_agree() {
        let mut records: Vec<String> = fixtures().into_iter().map(|(raw, _)| raw).collect();
        records.push(r#"{"eventID":"u1","eventTime":"2026-11-20T10:00:00Z","userIdentity":"odd","eventName":7,"requestParameters":{"b":1,"a":[1, 2]},"readOnly":"true"}"#.into());
        records.push(r#"{"eventID":"u2","eventTime":"2026-11-20T10:00:00Z","eventName":"A","eventName":"B","resources":{"not":"a list"}}"#.into());
        records.push(r#"{"eventID":"u\u00e9","eventTime":"2026-11-20T10:00:00Z","userAgent":"caf\u00e9 \"x\"","responseElements":null,"userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/R/s\/x"}}"#.into());
        for raw in records {
            let value: Value = serde_json::from_str(&raw).unwrap();
            let expected = normalize(&value, &raw).unwrap();
            let got = normalize_text(&raw).unwrap();
            let as_json = |t: Option<&str>| t.map(|t| serde_json::from_str::<Value>(t).unwrap());
            let json = [
                Text::RequestParameters,
                Text::ResponseElements,
                Text::AdditionalEventData,
            ];
            for column in json {
                let (a, b) = (got.text(column), expected.text(column));
                assert_eq!(as_json(a), as_json(b), "{raw}");
                assert!(a.is_none_or(|t| !t.contains('\n')), "compact: {a:?}");
            }
            for &column in Text::ALL.iter().filter(|c| !json.contains(c)) {
                assert_eq!(got.text(column), expected.text(column), "{raw}");
            }
            assert_eq!(got.raw(), expected.raw());
            assert_eq!(got.resources(), expected.resources());
            assert_eq!(
                (
                    got.event_time_ms,
                    got.mfa_authenticated,
                    got.read_only,
                    got.management_event
                ),
                (
                    expected.event_time_ms,
                    expected.mfa_authenticated,
                    expected.read_only,
                    expected.management_event
                ),
                "{raw}"
            );
        }
    }

    #[test]
    fn bad_text_is_handed_back_with_the_reason() {
        for (raw, reason) in [
            ("{\"eventID\":", "not JSON"),
            ("[1,2]", "not a JSON object"),
            ("{\"eventTime\":\"2026-11-20T10:00:00Z\"}", "no eventID"),
            (
                "{\"eventID\":\"x\",\"eventTime\":\"soon\"}",
                "no valid eventTime",
            ),
        ] {
            let (bad, back) = normalize_text(raw).unwrap_err();
            assert!(bad.to_string().contains(reason), "{raw}: {bad}");
            assert_eq!(back, raw);
        }
    }

    #[test]
    fn compact_json_keeps_string_contents() {
        assert_eq!(
            compact_json("{ \"a b\" : [ 1, \"x \\\" y\" ],\n \"c\": {} }"),
            r#"{"a b":[1,"x \" y"],"c":{}}"#
        );
        assert_eq!(compact_json(r#"{"a":1}"#), r#"{"a":1}"#);
    }

    #[test]
    fn records_without_id_or_time_are_refused() {
        let (_, mut record) = fixtures().remove(0);
        record["eventTime"] = "yesterday".into();
        assert_eq!(normalize(&record, ""), Err(BadRecord::NoEventTime));
        record.as_object_mut().unwrap().remove("eventID");
        assert_eq!(normalize(&record, ""), Err(BadRecord::NoEventId));
        assert_eq!(
            normalize(&Value::from("x"), ""),
            Err(BadRecord::NotAnObject)
        );
    }
}
