//! Property tests driven by the schema tables themselves: for every message ozbus knows, a random
//! valid frame (parameters in any order, either code form) decodes, formats back to the canonical
//! frame (the table's order), and that decodes to the same value. And no input panics.

use proptest::prelude::*;
use sdmp::messages::ALL_MESSAGES;
use sdmp::schema::{Code, MessageSpec, ParamType, Rule};
use sdmp::{decode, decode_request, Dialect, Envelope, Er, Rejection, WireForm};

/// Bytes allowed in a value: anything but the separator and the terminators.
fn value_byte() -> impl Strategy<Value = u8> {
    any::<u8>().prop_filter("separator or terminator", |b| !b"\\\0\r\n".contains(b))
}

fn value_for(ty: ParamType) -> BoxedStrategy<Vec<u8>> {
    // Long enough to cross interesting lengths, short enough to keep runs fast.
    let span = |min: u32, max: u32| min as usize..=(max.min(min + 40) as usize);
    match ty {
        ParamType::Str { min, max } => prop_oneof![
            prop::collection::vec(value_byte(), span(min, max)),
            prop::collection::vec(
                prop::sample::select(vec!['a', 'Z', '7', ' ', 'é', '€', '😀']),
                span(min, max)
            )
            .prop_map(|chars| chars.into_iter().collect::<String>().into_bytes()),
        ]
        .boxed(),
        ParamType::User { min, max } => prop::collection::vec(
            value_byte().prop_filter("forbidden in names", |b| {
                !sdmp::schema::FORBIDDEN_IN_NAMES.contains(b)
            }),
            span(min, max),
        )
        .boxed(),
        ParamType::Tenant => "[A-Za-z0-9_-]{1,20}".prop_map(String::into_bytes).boxed(),
        ParamType::Int { min, max } => (min..=max).prop_map(|n| n.to_string().into_bytes()).boxed(),
        ParamType::Decimal { max_hundredths } => (0..=max_hundredths)
            .prop_map(|h| format!("{}.{:02}", h / 100, h % 100).into_bytes())
            .boxed(),
        ParamType::Flag => Just(Vec::new()).boxed(),
        ParamType::Quoted => prop::collection::vec(
            any::<u8>().prop_filter("terminator", |b| !b"\0\r\n".contains(b)),
            0..60,
        )
        .prop_map(|inner| [&b"\""[..], &inner, b"\""].concat())
        .boxed(),
    }
}

/// A valid set of parameters for `spec`: `values[i]` for table row `i`.
fn params_for(spec: &'static MessageSpec) -> impl Strategy<Value = Vec<Option<Vec<u8>>>> {
    let rows: Vec<BoxedStrategy<Option<Vec<u8>>>> = spec
        .params
        .iter()
        .map(|p| {
            if p.required {
                value_for(p.ty).prop_map(Some).boxed()
            } else {
                prop::option::of(value_for(p.ty)).boxed()
            }
        })
        .collect();
    rows.prop_map(move |mut values| {
        let at = |code: &[u8; 2]| spec.index_of(Code(*code));
        for rule in spec.rules {
            match *rule {
                Rule::TnOrSi => {
                    let (tn, si) = (at(b"TN").unwrap(), at(b"SI").unwrap());
                    if values[si].is_none() && values[tn].as_ref().is_none_or(|v| v.is_empty()) {
                        values[si] = Some(b"s1".to_vec());
                    }
                }
                Rule::ExactlyOne(a, b) => {
                    let (a, b) = (spec.index_of(a).unwrap(), spec.index_of(b).unwrap());
                    match (&values[a], &values[b]) {
                        (Some(_), Some(_)) => values[b] = None,
                        (None, None) => values[a] = Some(b"1".to_vec()),
                        _ => {}
                    }
                }
                Rule::OnlyWith(a, b) => {
                    let (a, b) = (spec.index_of(a).unwrap(), spec.index_of(b).unwrap());
                    if values[a].is_some() {
                        values[b] = Some(Vec::new());
                    }
                }
                Rule::AnyOf(codes, _) => {
                    if codes
                        .iter()
                        .all(|&c| values[spec.index_of(c).unwrap()].is_none())
                    {
                        values[spec.index_of(codes[0]).unwrap()] = Some(Vec::new());
                    }
                }
            }
        }
        values
    })
}

fn code_text(dialect: Dialect, spec: &MessageSpec) -> Vec<u8> {
    match dialect {
        Dialect::V1 => spec.code.as_bytes().to_vec(),
        Dialect::V2 { service, interface } => {
            format!("{service}:{interface}:{}", spec.code).into_bytes()
        }
    }
}

fn frame(
    dialect: Dialect,
    spec: &MessageSpec,
    values: &[Option<Vec<u8>>],
    order: &[usize],
) -> Vec<u8> {
    let mut out = code_text(dialect, spec);
    for &i in order {
        if let Some(value) = &values[i] {
            out.push(b'\\');
            out.extend_from_slice(spec.params[i].code.as_bytes());
            out.extend_from_slice(value);
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Case {
    spec: &'static MessageSpec,
    dialect: Dialect,
    values: Vec<Option<Vec<u8>>>,
    order: Vec<usize>,
}

fn any_case() -> impl Strategy<Value = Case> {
    (0..ALL_MESSAGES.len(), any::<bool>()).prop_flat_map(|(m, v2)| {
        let spec = ALL_MESSAGES[m];
        let dialect = if v2 {
            Dialect::cg(spec.interface)
        } else {
            Dialect::V1
        };
        // The quoted tail (ER's FM) must stay last; everything else may come in any order.
        let (tail, rest): (Vec<usize>, Vec<usize>) =
            (0..spec.params.len()).partition(|&i| spec.params[i].ty == ParamType::Quoted);
        (params_for(spec), Just(rest).prop_shuffle()).prop_map(move |(values, mut order)| {
            order.extend(&tail);
            Case {
                spec,
                dialect,
                values,
                order,
            }
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(case in any_case()) {
        let shuffled = frame(case.dialect, case.spec, &case.values, &case.order);
        let canonical: Vec<usize> = (0..case.spec.params.len()).collect();
        let canonical = frame(case.dialect, case.spec, &case.values, &canonical);

        let decoded = decode(&shuffled).map_err(|e| TestCaseError::fail(format!(
            "{} refused: {e}", String::from_utf8_lossy(&shuffled))))?;
        prop_assert_eq!(decoded.dialect, case.dialect);
        prop_assert_eq!(decoded.message.spec().code, case.spec.code);
        let formatted = decoded.to_bytes();
        prop_assert_eq!(&formatted[..], &canonical[..]);
        prop_assert_eq!(decode(&formatted).unwrap(), decoded);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_no_panic(&bytes);
    }

    #[test]
    fn random_frames_of_real_codes_never_panic(
        code in prop::sample::select(ALL_MESSAGES.iter().map(|s| s.code.as_str().to_string()).collect::<Vec<_>>()),
        params in prop::collection::vec(
            ("(TX|CN|SO|FO|MO|PS|CS|XS|XR|TK|TD|TN|SI|CA|AN|AO|DD|RE|DT|FM|EC|MS|OD|ZZ|..)", "[ -~é\\\\\"]{0,12}"),
            0..10),
    ) {
        let mut frame = code.into_bytes();
        for (c, v) in params {
            frame.push(b'\\');
            frame.extend_from_slice(c.as_bytes());
            frame.extend_from_slice(v.as_bytes());
        }
        check_no_panic(&frame);
    }
}

fn check_no_panic(frame: &[u8]) {
    for result in [decode(frame), decode_request(frame)] {
        match result {
            Ok(envelope) => {
                // Whatever decodes must format and decode to itself.
                let bytes = envelope.to_bytes();
                assert_eq!(decode(&bytes).ok(), Some(envelope));
            }
            Err(rejection) => {
                let rejection: Rejection = rejection;
                for form in [WireForm::Bits8, WireForm::Utf16Le] {
                    let er = Envelope {
                        dialect: Dialect::of_frame(frame),
                        message: Er::for_frame(&rejection, frame, form).into(),
                    };
                    let bytes = er.to_bytes();
                    // An ER is itself a valid message, whatever it reports.
                    assert!(
                        decode(&bytes).is_ok(),
                        "{}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
            }
        }
    }
}
