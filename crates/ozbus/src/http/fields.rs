//! Reports in JSON: the readable name of every SDMP parameter a report carries, the
//! translation of a JSON report into the SDMP frame it stands for, and the JSON Schema of each
//! report, all read from the sdmp schema tables.
//!
//! Owns the one table this front end adds to the schema: parameter code ⇄ JSON field name
//! ([`FIELDS`]). Everything else (which fields a report has, their types, ranges, what is
//! mandatory, the rules across fields) comes from `sdmp::messages`, so a JSON report is
//! validated exactly as the same report over SDMP is: it is written as that frame and decoded
//! by the codec. Never: checks a value itself beyond what a frame cannot carry (a backslash,
//! NUL, CR or LF), or knows what a report means.

use std::fmt::Write as _;

use sdmp::messages::spec_for;
use sdmp::schema::{Code, MessageSpec, ParamSpec, ParamType, Rule, FORBIDDEN_IN_NAMES};
use sdmp::{ErrorCode, Rejection};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::{json, Map, Value};

use super::params::cut;

/// The reports a dialer sends, by message code: call reports and UO.
pub const REPORTS: [&str; 7] = ["MC", "RN", "LC", "CF", "TC", "BD", "UO"];

/// The field that names the report's message code.
pub const TYPE_FIELD: &str = "type";
/// The field of the idempotency key (XK), also accepted as the `Idempotency-Key` header.
pub const KEY_FIELD: &str = "idempotency_key";

/// SDMP parameter code → JSON field name. TK is not among them: over HTTP the response itself
/// says that the report is durable.
pub const FIELDS: &[(&str, &str)] = &[
    ("CN", "campaign"),
    ("TN", "number"),
    ("SI", "session"),
    ("AN", "agent"),
    ("CA", "cause"),
    ("IR", "raw_cause"),
    ("RE", "reason"),
    ("AO", "outcome"),
    ("DD", "dont_dial"),
    ("DT", "data"),
    ("AS", "app_data"),
    ("CO", "conversion"),
    ("CE", "expiry"),
    ("TI", "trunk"),
    ("DN", "dialed_number"),
    ("MA", "machine"),
    ("OD", "offhook_delay"),
    ("GI", "gateway"),
    ("MS", "message"),
    ("SR", "success_rate"),
    ("BA", "ringback_agent"),
    ("BN", "ringback_number"),
    ("BT", "ringback_timer"),
    ("NL", "not_live"),
    ("CU", "conversion_unsuccessful"),
    ("TX", "transaction"),
    ("XK", KEY_FIELD),
    ("TD", "tenant"),
];

/// Parameters a JSON report does not carry.
const NOT_IN_JSON: &[&str] = &["TK"];

/// The JSON name of a parameter code.
pub fn json_name(code: Code) -> Option<&'static str> {
    FIELDS
        .iter()
        .find(|(c, _)| c.as_bytes() == code.as_bytes())
        .map(|(_, name)| *name)
}

/// The table of a report's message code.
pub fn report_spec(code: &str) -> Option<&'static MessageSpec> {
    REPORTS
        .contains(&code)
        .then(|| Code::parse(code.as_bytes()).and_then(spec_for))
        .flatten()
}

/// The parameters of a report that JSON carries, in table order.
pub fn json_params(spec: &'static MessageSpec) -> impl Iterator<Item = &'static ParamSpec> {
    spec.params
        .iter()
        .filter(|p| !NOT_IN_JSON.contains(&p.code.as_str()))
}

/// A JSON object with its members in the order written, repeats kept (so that a field given
/// twice is refused, as a parameter given twice is).
pub struct Fields(pub Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fields, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut members = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, Value>()? {
                    if members.len() >= 64 {
                        return Err(de::Error::custom("more than 64 fields"));
                    }
                    members.push((name, value));
                }
                Ok(Fields(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// Reads one JSON report (a line of a bulk request, or a whole body). EC 800 when it is not a
/// JSON object.
pub fn parse(text: &[u8]) -> Result<Fields, Rejection> {
    serde_json::from_slice(text).map_err(|error| {
        let reason = format!("the report is not a JSON object: {error}");
        Rejection::new(ErrorCode::UnknownMessage, cut(&reason, 200))
    })
}

/// The SDMP frame a JSON report stands for, fields in the order written. `key_header` is the
/// `Idempotency-Key` header, `max_frame` the longest frame, in characters, the SDMP listeners
/// take. Refusals: EC 800 (no or an unknown `type`), 801 (a field the report does not have,
/// or a value of the wrong JSON type), 802 (a field given twice; two different keys as field
/// and header),
/// 806 (a backslash, NUL, CR or LF, which no frame can carry), 805 (a negative or fractional
/// number), 850 (longer than `max_frame`). The codec checks everything else.
pub fn frame_of(
    fields: &Fields,
    key_header: Option<&str>,
    max_frame: usize,
) -> Result<Vec<u8>, Rejection> {
    let report = fields
        .0
        .iter()
        .find(|(name, _)| name == TYPE_FIELD)
        .map(|(_, value)| value);
    let spec = match report {
        None => {
            return Err(Rejection::new(
                ErrorCode::UnknownMessage,
                "the report has no \"type\" (MC, RN, LC, CF, TC, BD or UO)",
            ))
        }
        Some(Value::String(code)) => report_spec(code).ok_or_else(|| {
            let shown = cut(code, 16);
            Rejection::new(
                ErrorCode::UnknownMessage,
                format!("unknown report type {shown:?}: MC, RN, LC, CF, TC, BD or UO"),
            )
        })?,
        Some(_) => {
            return Err(Rejection::new(
                ErrorCode::UnknownMessage,
                "\"type\" must be a string: MC, RN, LC, CF, TC, BD or UO",
            ))
        }
    };
    let mut frame = Vec::with_capacity(256);
    frame.extend_from_slice(spec.code.as_bytes());
    let mut seen = Vec::with_capacity(fields.0.len());
    for (name, value) in &fields.0 {
        if name == TYPE_FIELD {
            if seen.contains(&TYPE_FIELD) {
                return Err(twice(TYPE_FIELD));
            }
            seen.push(TYPE_FIELD);
            continue;
        }
        let Some(param) = json_params(spec).find(|p| json_name(p.code) == Some(name.as_str()))
        else {
            let shown = cut(name, 40);
            return Err(Rejection::new(
                ErrorCode::UndefinedParameter,
                format!("field {shown:?} is not defined for {}", spec.code),
            ));
        };
        let json = json_name(param.code).unwrap_or_default();
        if seen.contains(&json) {
            return Err(twice(json));
        }
        seen.push(json);
        write_param(&mut frame, param, json, value)?;
    }
    if let Some(key) = key_header {
        if spec.index_of(Code(*b"XK")).is_none() {
            return Err(Rejection::new(
                ErrorCode::UndefinedParameter,
                format!("an idempotency key is not defined for {}", spec.code),
            ));
        }
        let in_body = fields
            .0
            .iter()
            .find(|(name, _)| name == KEY_FIELD)
            .map(|(_, value)| value);
        match in_body {
            // The same key both ways: said once.
            Some(Value::String(same)) if same == key => {}
            Some(_) => {
                return Err(Rejection::new(
                    ErrorCode::RepeatedParameter,
                    "two idempotency keys: the field and the Idempotency-Key header differ",
                ))
            }
            None => {
                let param = spec.params[spec.index_of(Code(*b"XK")).unwrap_or_default()];
                write_param(&mut frame, &param, "Idempotency-Key", &Value::from(key))?;
            }
        }
    }
    let characters = String::from_utf8_lossy(&frame).chars().count();
    if characters > max_frame {
        return Err(Rejection::new(
            ErrorCode::FrameTooLong,
            format!("the report is longer than the largest frame ({max_frame} characters)"),
        ));
    }
    Ok(frame)
}

fn twice(name: &str) -> Rejection {
    Rejection::new(
        ErrorCode::RepeatedParameter,
        format!("field {name:?} given twice"),
    )
}

/// Appends `\<code><value>` for one field (nothing for a flag that is false).
fn write_param(
    frame: &mut Vec<u8>,
    param: &ParamSpec,
    name: &str,
    value: &Value,
) -> Result<(), Rejection> {
    let wrong_type = |expected: &str| {
        Rejection::new(
            ErrorCode::UndefinedParameter,
            format!("field {name:?} must be {expected}"),
        )
    };
    let mut text = String::new();
    match (param.ty, value) {
        (ParamType::Flag, Value::Bool(false)) => return Ok(()),
        (ParamType::Flag, Value::Bool(true)) => {}
        (ParamType::Flag, _) => return Err(wrong_type("true or false")),
        (ParamType::Int { min, max }, Value::Number(number)) => {
            let whole = number.as_u64().or_else(|| {
                number
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                    .map(|f| f as u64)
            });
            match whole {
                Some(n) => {
                    let _ = write!(text, "{n}");
                }
                None => {
                    return Err(Rejection::new(
                        ErrorCode::BadNumber,
                        format!("{} must be a number in {min}..{max}", param.code),
                    ))
                }
            }
        }
        (ParamType::Int { .. }, _) => return Err(wrong_type("a number")),
        (_, Value::String(value)) => {
            if value.contains(['\\', '\0', '\r', '\n']) {
                return Err(Rejection::new(
                    ErrorCode::ForbiddenCharacter,
                    format!("field {name:?} may not contain a backslash, NUL, CR or LF"),
                ));
            }
            text.push_str(value);
        }
        (_, _) => return Err(wrong_type("a string")),
    }
    frame.push(b'\\');
    frame.extend_from_slice(param.code.as_bytes());
    frame.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Characters no frame can carry, as a regular expression class.
const NOT_IN_FRAMES: &str = "\\\\\\u0000\\r\\n";

/// The JSON Schema of one field.
fn field_schema(param: &ParamSpec) -> Value {
    let mut schema = match param.ty {
        ParamType::Str { min, max } => json!({
            "type": "string", "minLength": min, "maxLength": max,
            "pattern": format!("^[^{NOT_IN_FRAMES}]*$"),
        }),
        ParamType::User { min, max } => {
            let forbidden: String = FORBIDDEN_IN_NAMES
                .iter()
                .filter(|&&b| b != b'\\')
                .map(|&b| b as char)
                .collect();
            json!({
                "type": "string", "minLength": min, "maxLength": max,
                "pattern": format!("^[^{forbidden}{NOT_IN_FRAMES}]*$"),
            })
        }
        ParamType::Tenant => json!({
            "type": "string", "minLength": 1, "maxLength": 80, "pattern": "^[A-Za-z0-9_-]*$",
        }),
        ParamType::Int { min, max } => json!({ "type": "integer", "minimum": min, "maximum": max }),
        ParamType::Decimal { max_hundredths } => json!({
            "type": "string",
            "pattern": format!(
                "^0*[0-{}](\\.[0-9]{{1,2}})?$",
                (max_hundredths / 100).min(9)
            ),
        }),
        ParamType::Flag => json!({ "type": "boolean" }),
        ParamType::Quoted => json!({ "type": "string" }),
    };
    let description = match param.note {
        "" => format!("{} {}", param.code, param.name),
        note => format!("{} {}: {note}", param.code, param.name),
    };
    schema["description"] = Value::from(description);
    schema
}

/// The JSON Schema of one report: its fields (from its table), `type`, and its rules across
/// fields (TN or SI, exactly one of two, one only with another).
pub fn report_schema(spec: &'static MessageSpec) -> Value {
    let mut properties = Map::new();
    properties.insert(
        TYPE_FIELD.to_string(),
        json!({ "type": "string", "const": spec.code.as_str(), "description": "the report: its SDMP message code" }),
    );
    let mut required = vec![Value::from(TYPE_FIELD)];
    for param in json_params(spec) {
        let name = json_name(param.code).unwrap_or_default();
        properties.insert(name.to_string(), field_schema(param));
        if param.required {
            required.push(Value::from(name));
        }
    }
    let mut schema = json!({
        "type": "object",
        "description": format!("{} ({}): {}", spec.code, spec.name, spec.summary.trim()),
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    let mut all_of = Vec::new();
    for rule in spec.rules {
        let name = |code: Code| json_name(code).unwrap_or_default();
        match *rule {
            Rule::TnOrSi => all_of.push(json!({ "anyOf": [
                { "required": [name(Code(*b"SI"))] },
                { "required": [name(Code(*b"TN"))], "properties": { name(Code(*b"TN")): { "minLength": 1 } } },
            ]})),
            Rule::ExactlyOne(a, b) => all_of.push(json!({ "oneOf": [
                { "required": [name(a)] },
                { "required": [name(b)] },
            ]})),
            Rule::OnlyWith(a, b) => all_of.push(json!({
                "if": { "required": [name(a)] },
                "then": { "required": [name(b)], "properties": { name(b): { "const": true } } },
            })),
            Rule::AnyOf(..) => {}
        }
    }
    if !all_of.is_empty() {
        schema["allOf"] = Value::Array(all_of);
    }
    schema
}

/// The table of the protocol document: each JSON field beside its SDMP code and the reports
/// that carry it.
pub fn markdown() -> String {
    let mut out = String::from(
        "| JSON field | SDMP code | name | type | in |\n|---|---|---|---|---|\n| type | | the report's message code | string | every report |\n",
    );
    for (code, name) in FIELDS {
        let Some(code) = Code::parse(code.as_bytes()) else {
            continue;
        };
        let mut carriers = Vec::new();
        let mut described = None;
        for report in REPORTS {
            let Some(spec) = report_spec(report) else {
                continue;
            };
            if let Some(param) = json_params(spec).find(|p| p.code == code) {
                carriers.push(if param.required {
                    format!("{report} (mandatory)")
                } else {
                    report.to_string()
                });
                described.get_or_insert((param.name, param.ty));
            }
        }
        let Some((long_name, ty)) = described else {
            continue;
        };
        let ty = match ty {
            ParamType::Str { min, max } => format!("string {min}..{max}"),
            ParamType::User { min, max } => format!("string {min}..{max}, a name"),
            ParamType::Tenant => "string 1..80, a tenant".to_string(),
            ParamType::Int { min, max } => format!("integer {min}..{max}"),
            ParamType::Decimal { .. } => "string, a decimal".to_string(),
            ParamType::Flag => "boolean".to_string(),
            ParamType::Quoted => "string".to_string(),
        };
        let _ = writeln!(
            out,
            "| {name} | {code} | {long_name} | {ty} | {} |",
            carriers.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_refusal_quotes_of_a_report_is_cut_between_characters() {
        // Two-byte characters, so that a cut by bytes at 16, 40 or 200 falls inside one.
        let type_ = format!("a{}", "é".repeat(20));
        let refused = frame(&format!(r#"{{"type":"{type_}"}}"#)).unwrap_err();
        assert_eq!(refused.code.number(), 800);
        assert!(refused.reason.contains(&format!("a{}", "é".repeat(15))));
        let name = format!("a{}", "é".repeat(50));
        let refused = frame(&format!(r#"{{"type":"CF","{name}":1}}"#)).unwrap_err();
        assert_eq!(refused.code.number(), 801);
        for pad in 0..4 {
            let json = format!("\"{}{}\"", "x".repeat(pad), "é".repeat(200));
            assert_eq!(
                parse(json.as_bytes()).err().map(|r| r.code.number()),
                Some(800)
            );
        }
    }

    fn frame(json: &str) -> Result<String, Rejection> {
        let fields = parse(json.as_bytes())?;
        frame_of(&fields, None, 262_144).map(|f| String::from_utf8(f).unwrap())
    }

    #[test]
    fn every_field_of_every_report_has_one_json_name() {
        for report in REPORTS {
            let spec = report_spec(report).unwrap();
            let mut names = Vec::new();
            for param in json_params(spec) {
                let name = json_name(param.code)
                    .unwrap_or_else(|| panic!("{report}: no JSON name for {}", param.code));
                assert!(!names.contains(&name), "{report}: {name} twice");
                assert_ne!(name, TYPE_FIELD);
                names.push(name);
            }
        }
        let mut all: Vec<&str> = FIELDS.iter().map(|(_, n)| *n).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), FIELDS.len(), "one name per code");
    }

    #[test]
    fn a_json_report_becomes_its_frame_in_the_order_written() {
        assert_eq!(
            frame(r#"{"type":"CF","campaign":"Sales1","session":"42","cause":2,"idempotency_key":"k1"}"#).unwrap(),
            r"CF\CNSales1\SI42\CA2\XKk1"
        );
        assert_eq!(
            frame(
                r#"{"type":"LC","campaign":"c","number":"1","machine":true,"offhook_delay":"1.5"}"#
            )
            .unwrap(),
            r"LC\CNc\TN1\MA\OD1.5"
        );
        assert_eq!(
            frame(r#"{"type":"BD","agent":"Joe","dont_dial":false}"#).unwrap(),
            r"BD\ANJoe"
        );
    }

    #[test]
    fn what_no_frame_can_say_is_refused_with_the_ec_sdmp_would_give() {
        let ec = |json: &str| frame(json).unwrap_err().code.number();
        assert_eq!(ec(r#"{"campaign":"c"}"#), 800);
        assert_eq!(ec(r#"{"type":"EO"}"#), 800);
        assert_eq!(ec(r#"[1]"#), 800);
        assert_eq!(ec(r#"{"type":"CF","colour":"red"}"#), 801);
        assert_eq!(
            ec(r#"{"type":"CF","token":"t"}"#),
            801,
            "TK is not a JSON field"
        );
        assert_eq!(ec(r#"{"type":"CF","cause":"2"}"#), 801);
        assert_eq!(ec(r#"{"type":"CF","campaign":null}"#), 801);
        assert_eq!(ec(r#"{"type":"CF","cause":2,"cause":3}"#), 802);
        assert_eq!(ec(r#"{"type":"CF","campaign":"a\\b"}"#), 806);
        assert_eq!(ec(r#"{"type":"CF","campaign":"a\nb"}"#), 806);
        assert_eq!(ec(r#"{"type":"CF","cause":-1}"#), 805);
        assert_eq!(ec(r#"{"type":"CF","cause":1.5}"#), 805);
        let fields = parse(br#"{"type":"CF","idempotency_key":"a"}"#).unwrap();
        assert_eq!(
            frame_of(&fields, Some("b"), 1000)
                .unwrap_err()
                .code
                .number(),
            802
        );
        assert_eq!(frame_of(&fields, Some("a"), 1000).unwrap(), br"CF\XKa");
        let fields = parse(br#"{"type":"CF"}"#).unwrap();
        assert_eq!(frame_of(&fields, Some("a"), 1000).unwrap(), br"CF\XKa");
        let fields = parse(br#"{"type":"CF","campaign":"0123456789"}"#).unwrap();
        assert_eq!(frame_of(&fields, None, 10).unwrap_err().code.number(), 850);
    }

    #[test]
    fn the_schema_of_a_report_follows_its_table() {
        let cf = report_schema(report_spec("CF").unwrap());
        assert_eq!(cf["properties"]["cause"]["maximum"], 999);
        assert_eq!(cf["required"], json!(["type", "cause", "campaign"]));
        assert_eq!(cf["additionalProperties"], false);
        assert!(cf["allOf"][0]["anyOf"].is_array());
        let bd = report_schema(report_spec("BD").unwrap());
        assert_eq!(bd["allOf"][0]["if"]["required"], json!(["outcome"]));
        assert!(bd["properties"].get("token").is_none());
    }
}
