//! Outcomes over HTTP: the one JSON shape an outcome has, whether it comes from a stream (an
//! OZ the delivery wrote, decoded by the codec) or from the log (history), its CSV row, and
//! the text of SDMP values.
//!
//! Owns the names of an outcome's JSON members (those of the ingest table, `fields::FIELDS`,
//! beside `seq` for XS and `time` for XT; a test holds them to it), the CSV columns and their
//! escaping. Never: decides which outcomes a client sees, or reads the store.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use utoipa::ToSchema;

use crate::core::DEFAULT_TENANT;
use crate::store::{CallRecord, Outcome, OutcomeClass, RecordState};

/// An SDMP value as text: UTF-8 as it is, anything else read as Windows-1252 (as the UTF-16
/// listener converts values).
pub fn text(value: &[u8]) -> String {
    text_of(value).into_owned()
}

/// [`text`], borrowed from the value when it is UTF-8 (as it almost always is): no copy.
fn text_of(value: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => {
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(value)
                .0
        }
    }
}

/// A tenant as the JSON shows it: absent when it is `default` (as OZ leaves TD out).
pub fn tenant_text(tenant: &[u8]) -> Option<Cow<'_, str>> {
    (tenant != DEFAULT_TENANT).then(|| text_of(tenant))
}

fn opt_text(value: Option<&[u8]>) -> Option<Cow<'_, str>> {
    value.map(text_of)
}

/// Unix milliseconds as an RFC 3339 UTC time with milliseconds (as OZ's XT).
pub fn time_of(ms: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// The name of an outcome class, as the `classes` parameters take it.
pub fn class_name(class: OutcomeClass) -> &'static str {
    match class {
        OutcomeClass::Success => "success",
        OutcomeClass::Failure => "failure",
        OutcomeClass::Management => "management",
    }
}

/// One call outcome. The members are the OZ's parameters under the names the reports use
/// (`campaign` for CN, `session` for SI, ...), with `seq` (XS) and `time` (XT); a parameter
/// the OZ leaves out is left out.
// Its text is borrowed from the OZ or the outcome it is made of (copied only when it is not
// UTF-8): made per outcome and per stream, it copies no value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = json!({
    "seq": 2, "time": "2026-11-25T18:55:46.503Z", "campaign": "Sales1", "agent": "Joe",
    "session": "001234567890", "reason": 10, "outcome": 167, "data": ""
}))]
pub struct OutcomeJson<'a> {
    /// XS: the outcome's sequence number in the log (a stream opened with `sequenced=false`
    /// leaves it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub seq: Option<u64>,
    /// XT: when the outcome was accepted (UTC, RFC 3339 with milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<Cow<'a, str>>,
    /// `success`, `failure` or `management` (history only: an OZ does not say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<&'static str>,
    /// TD: the tenant, when it is not `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Cow<'a, str>>,
    /// CN.
    pub campaign: Cow<'a, str>,
    /// AN: the agent that handled, declined or was connected to the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<Cow<'a, str>>,
    /// SI (the number when the record had no SI of its own).
    pub session: Cow<'a, str>,
    /// TN, when known and different from SI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<Cow<'a, str>>,
    /// RE: the dialing cycle outcome.
    pub reason: u16,
    /// AO: the agent outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<u16>,
    /// DD: a preview the agent declined (absent: false).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dont_dial: bool,
    /// AS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_data: Option<Cow<'a, str>>,
    /// CO.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversion: Option<Cow<'a, str>>,
    /// BA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ringback_agent: Option<Cow<'a, str>>,
    /// BN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ringback_number: Option<Cow<'a, str>>,
    /// BT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ringback_timer: Option<Cow<'a, str>>,
    /// DT: the line-of-business data, possibly empty.
    pub data: Cow<'a, str>,
}

impl<'a> OutcomeJson<'a> {
    /// The outcome an OZ carries.
    pub fn of_oz(oz: &sdmp::Oz<'a>) -> OutcomeJson<'a> {
        OutcomeJson {
            seq: oz.xs,
            time: opt_text(oz.xt),
            class: None,
            tenant: opt_text(oz.td),
            campaign: text_of(oz.cn),
            agent: opt_text(oz.an),
            session: text_of(oz.si),
            number: opt_text(oz.tn),
            reason: oz.re,
            outcome: oz.ao,
            dont_dial: oz.dd,
            app_data: opt_text(oz.as_data),
            conversion: opt_text(oz.co),
            ringback_agent: opt_text(oz.ba),
            ringback_number: opt_text(oz.bn),
            ringback_timer: opt_text(oz.bt),
            data: text_of(oz.dt),
        }
    }

    /// An outcome of the log, as a sequenced OZ would carry it, with its class.
    pub fn of_outcome(outcome: &'a Outcome) -> OutcomeJson<'a> {
        let o = &outcome.outcome;
        OutcomeJson {
            seq: Some(outcome.seq),
            time: Some(time_of(outcome.accepted_ms).into()),
            class: Some(class_name(o.class)),
            tenant: tenant_text(&o.tenant),
            campaign: text_of(&o.cn),
            agent: opt_text(o.an.as_deref()),
            session: text_of(&o.si),
            number: opt_text(o.tn.as_deref().filter(|tn| *tn != &o.si[..])),
            reason: o.re,
            outcome: o.ao,
            dont_dial: o.dd,
            app_data: opt_text(o.as_data.as_deref()),
            conversion: opt_text(o.co.as_deref()),
            ringback_agent: opt_text(o.ba.as_deref()),
            ringback_number: opt_text(o.bn.as_deref()),
            ringback_timer: opt_text(o.bt.as_deref()),
            data: text_of(&o.dt),
        }
    }
}

/// An open call record.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RecordJson {
    /// `pending` (registered), `dialing` (an agent dials it) or `connected`.
    pub state: &'static str,
    /// TN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// The agent it is connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The agent whose preview it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview_agent: Option<String>,
    /// AS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_data: Option<String>,
    /// DT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// When it was registered.
    pub created: String,
    /// When it closes by itself (expiry, or the call timeout of a dialing call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// When it was connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<String>,
}

impl RecordJson {
    pub fn of(record: &CallRecord) -> RecordJson {
        RecordJson {
            state: match record.state {
                RecordState::Pending => "pending",
                RecordState::Dialing => "dialing",
                RecordState::Connected => "connected",
            },
            number: record.tn.as_deref().map(text),
            agent: record.agent.as_deref().map(text),
            preview_agent: record.preview_agent.as_deref().map(text),
            app_data: record.as_data.as_deref().map(text),
            data: record.dt.as_deref().map(text),
            created: time_of(record.created_ms),
            expires: record.expires_ms.map(time_of),
            connected: record.connected_ms.map(time_of),
        }
    }
}

/// The columns of the CSV form, in order: an outcome's JSON members, every one always.
pub const CSV_COLUMNS: [&str; 17] = [
    "seq",
    "time",
    "class",
    "tenant",
    "campaign",
    "agent",
    "session",
    "number",
    "reason",
    "outcome",
    "dont_dial",
    "app_data",
    "conversion",
    "ringback_agent",
    "ringback_number",
    "ringback_timer",
    "data",
];

/// The header row.
pub fn csv_header(out: &mut String) {
    out.push_str(&CSV_COLUMNS.join(","));
    out.push_str("\r\n");
}

/// One outcome as a CSV row (RFC 4180: CRLF line ends, a field with a comma, quote, CR or LF
/// quoted, quotes doubled). A text value a spreadsheet would take for a formula (one that
/// begins with `=`, `+`, `-`, `@`, a tab or a CR) is written with a `'` before it, so that it
/// shows as the text it is.
pub fn csv_row(outcome: &OutcomeJson, out: &mut String) {
    let number = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
    let fields: [(&str, bool); 17] = [
        (&number(outcome.seq), false),
        (outcome.time.as_deref().unwrap_or_default(), false),
        (outcome.class.unwrap_or_default(), false),
        (outcome.tenant.as_deref().unwrap_or("default"), true),
        (&outcome.campaign, true),
        (outcome.agent.as_deref().unwrap_or_default(), true),
        (&outcome.session, true),
        (outcome.number.as_deref().unwrap_or_default(), true),
        (&outcome.reason.to_string(), false),
        (&number(outcome.outcome.map(u64::from)), false),
        (if outcome.dont_dial { "true" } else { "false" }, false),
        (outcome.app_data.as_deref().unwrap_or_default(), true),
        (outcome.conversion.as_deref().unwrap_or_default(), true),
        (outcome.ringback_agent.as_deref().unwrap_or_default(), true),
        (outcome.ringback_number.as_deref().unwrap_or_default(), true),
        (outcome.ringback_timer.as_deref().unwrap_or_default(), true),
        (&outcome.data, true),
    ];
    for (i, (value, is_text)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(value, *is_text, out);
    }
    out.push_str("\r\n");
}

fn csv_field(value: &str, is_text: bool, out: &mut String) {
    let formula = is_text && value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quoted = formula || value.contains([',', '"', '\r', '\n']);
    if quoted {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for c in value.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quoted {
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::fields::json_name;
    use sdmp::schema::Code;

    fn full() -> OutcomeJson<'static> {
        let some = |s: &'static str| Some(s.into());
        OutcomeJson {
            seq: Some(1),
            time: some("t"),
            class: Some("success"),
            tenant: some("acme"),
            campaign: "c".into(),
            agent: some("a"),
            session: "s".into(),
            number: some("n"),
            reason: 10,
            outcome: Some(1),
            dont_dial: true,
            app_data: some("x"),
            conversion: some("x"),
            ringback_agent: some("x"),
            ringback_number: some("x"),
            ringback_timer: some("x"),
            data: "d".into(),
        }
    }

    #[test]
    fn every_oz_parameter_has_the_json_name_the_reports_give_its_code() {
        let json = serde_json::to_value(full()).unwrap();
        let spec = sdmp::messages::spec_for(Code(*b"OZ")).unwrap();
        for param in spec.params {
            let name = match param.code.as_str() {
                "TX" => continue,
                "XS" => "seq",
                "XT" => "time",
                _ => json_name(param.code)
                    .unwrap_or_else(|| panic!("{} has no JSON name", param.code)),
            };
            assert!(json.get(name).is_some(), "{} as {name}: {json}", param.code);
        }
        // And nothing else but the class.
        assert_eq!(json.as_object().unwrap().len(), spec.params.len() - 1 + 1);
        // The CSV has a column for each member.
        let mut columns: Vec<&str> = json.as_object().unwrap().keys().map(|k| &k[..]).collect();
        columns.sort_unstable();
        let mut csv = CSV_COLUMNS.to_vec();
        csv.sort_unstable();
        assert_eq!(columns, csv);
    }

    #[test]
    fn csv_quotes_what_needs_it_and_keeps_formulas_text() {
        let mut out = String::new();
        csv_field("plain", true, &mut out);
        out.push('|');
        csv_field("a,b", true, &mut out);
        out.push('|');
        csv_field("say \"hi\"\r\nbye", true, &mut out);
        out.push('|');
        csv_field("=SUM(A1)", true, &mut out);
        out.push('|');
        csv_field("+4930123", true, &mut out);
        out.push('|');
        csv_field("-5", false, &mut out);
        assert_eq!(
            out,
            "plain|\"a,b\"|\"say \"\"hi\"\"\r\nbye\"|\"'=SUM(A1)\"|\"'+4930123\"|-5"
        );
    }

    #[test]
    fn a_value_that_is_not_utf8_is_read_as_windows_1252() {
        assert_eq!(text(b"caf\xe9"), "café");
        assert_eq!(text("café".as_bytes()), "café");
    }
}
