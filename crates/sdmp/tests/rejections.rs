//! Bad input: every frame here must be refused with exactly the ER bytes shown, as a client on the
//! 8-bit listener would receive them (before the NUL terminator).

use sdmp::{decode_request, Dialect, Envelope, Er, Rejection, WireForm};

/// What ozbus answers to `frame` on a connection of `form`, if it refuses it.
fn er_for(frame: &[u8], form: WireForm) -> Option<Vec<u8>> {
    let rejection: Rejection = decode_request(frame).err()?;
    let er = Envelope {
        dialect: Dialect::of_frame(frame),
        message: Er::for_frame(&rejection, frame, form).into(),
    };
    Some(er.to_bytes().to_vec())
}

/// The ER for `frame`: `ER\EC<ec>\MS<ms>\FM"<frame>"`.
fn er(ec: u16, ms: &str, frame: &[u8]) -> Vec<u8> {
    let mut out = format!("ER\\EC{ec}\\MS{ms}\\FM\"").into_bytes();
    out.extend_from_slice(frame);
    out.push(b'"');
    out
}

fn check(cases: &[(&[u8], u16, &str)]) {
    for &(frame, ec, ms) in cases {
        let got = er_for(frame, WireForm::Bits8)
            .unwrap_or_else(|| panic!("{} was accepted", String::from_utf8_lossy(frame)));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&er(ec, ms, frame)),
            "for {}",
            String::from_utf8_lossy(frame)
        );
    }
}

const UNREADABLE: &str =
    "message code cannot be read: expected two characters A-Z/0-9, or CG:XX:XX";
const NAME_CHARS: &str = "may not contain any of / : * ? \" < > | & % + ! ' ;";

#[test]
fn the_issue_example_of_a_missing_tx_is_byte_exact() {
    assert_eq!(
        er_for(br"EO\CNSales1\FO\SO", WireForm::Bits8).unwrap(),
        br#"ER\EC803\MStransaction identifier (TX) missing\FM"EO\CNSales1\FO\SO""#.to_vec()
    );
}

#[test]
fn unknown_or_unreadable_message_codes_are_800() {
    check(&[
        (br"eo\TXa\SO", 800, UNREADABLE),
        (br"EOX", 800, UNREADABLE),
        (br"\TXa\SO", 800, UNREADABLE),
        (br"E", 800, UNREADABLE),
        (br"CG:MA\TXa", 800, UNREADABLE),
        (br"XX\TXa", 800, "unknown message code XX"),
        (
            br"AB:MA:EO\TXa\SO",
            800,
            "unknown service AB: ozbus speaks the CG service",
        ),
        (
            br"OZ\TXa\CNc\SI1\RE1\DT",
            800,
            "OZ is sent by ozbus, not to it",
        ),
        (br"MV\TKx", 800, "MV is sent by ozbus, not to it"),
        (br"ER\EC1\MSx\FM", 800, "ER is sent by ozbus, not to it"),
    ]);
}

#[test]
fn sdmp_2_requests_get_their_er_in_the_same_form() {
    assert_eq!(
        er_for(br"CG:MA:ZZ\TXa", WireForm::Bits8).unwrap(),
        br#"CG:MA:ER\EC800\MSunknown message code ZZ\FM"CG:MA:ZZ\TXa""#.to_vec()
    );
    assert_eq!(
        er_for(br"CG:CT:CF\CAx\CNa\TN1", WireForm::Bits8).unwrap(),
        br#"CG:CT:ER\EC805\MSCA must be a number in 0..999\FM"CG:CT:CF\CAx\CNa\TN1""#.to_vec()
    );
}

#[test]
fn parameters_not_defined_for_the_message_are_801() {
    check(&[
        (br"EO\TXa\SO\AN1", 801, "parameter AN is not defined for EO"),
        (
            br"CF\CA1\CNa\TN1\ZZ9",
            801,
            "parameter ZZ is not defined for CF",
        ),
        (br"EE\TXa\SO", 801, "parameter SO is not defined for EE"),
        (
            br"EO\TXa\\SO",
            801,
            "unreadable parameter \"\": expected two characters A-Z/0-9",
        ),
        (
            br"EO\TXa\sO",
            801,
            "unreadable parameter \"sO\": expected two characters A-Z/0-9",
        ),
        (
            br"EO\TXa\SO\",
            801,
            "unreadable parameter \"\": expected two characters A-Z/0-9",
        ),
        (
            br"EO\TXa\S",
            801,
            "unreadable parameter \"S\": expected two characters A-Z/0-9",
        ),
        (
            br"UO\TXa\CNc\SI1\RE1\AO2\DTx",
            801,
            "RE and AO cannot both be given",
        ),
        (
            br"UO\TXa\CNc\SI1\AO2\RE1\DTx",
            801,
            "RE and AO cannot both be given",
        ),
        (br"BD\ANjoe\AO5", 801, "AO is only allowed together with DD"),
        // Left to right: the undefined XX comes before the repeated TX.
        (
            br"EO\XX1\TXa\TXb",
            801,
            "parameter XX is not defined for EO",
        ),
    ]);
}

#[test]
fn repeated_parameters_are_802() {
    check(&[
        (br"EO\TXa\TXb\SO", 802, "parameter TX given twice"),
        (br"CF\CA1\CA2\CNa\TN1", 802, "parameter CA given twice"),
        (br"EO\TXa\SO\SO", 802, "parameter SO given twice"),
        (br"MC\CNa\TN1\TKx\TKx", 802, "parameter TK given twice"),
        // Left to right: the repeated TX comes before the undefined ZZ.
        (br"EO\TXa\TXb\ZZ1", 802, "parameter TX given twice"),
    ]);
}

#[test]
fn flags_written_with_a_value_are_807() {
    check(&[
        (br"EO\TXa\SOyes", 807, "SO is a flag and takes no value"),
        (br"LC\CNa\TN1\MA1", 807, "MA is a flag and takes no value"),
        (br"BD\ANjoe\DDx", 807, "DD is a flag and takes no value"),
        (br"TC\ANjoe\NLx", 807, "NL is a flag and takes no value"),
        // A step-2 fault comes before the missing TX of step 3.
        (br"EO\SO1", 807, "SO is a flag and takes no value"),
    ]);
}

#[test]
fn a_missing_tx_is_803_before_any_other_missing_parameter() {
    check(&[
        (br"EE", 803, "transaction identifier (TX) missing"),
        (br"XA\XS5", 803, "transaction identifier (TX) missing"),
        (br"XA", 803, "transaction identifier (TX) missing"),
        (
            br"UO\CNc\SI1\RE1\DTx",
            803,
            "transaction identifier (TX) missing",
        ),
        // Mandatory parameters (step 3) come before value checks (step 4).
        (br"EO\CN\SO", 803, "transaction identifier (TX) missing"),
    ]);
}

#[test]
fn other_missing_mandatory_parameters_are_30_in_table_order() {
    check(&[
        (br"CF\CNa\TN1", 30, "mandatory parameter CA (Cause) missing"),
        (br"CF\TN1", 30, "mandatory parameter CA (Cause) missing"),
        (
            br"MC\TN1",
            30,
            "mandatory parameter CN (CampaignName) missing",
        ),
        (
            br"RN\SI1",
            30,
            "mandatory parameter CN (CampaignName) missing",
        ),
        (
            br"TC\AO1",
            30,
            "mandatory parameter AN (AgentIdentifier) missing",
        ),
        (
            br"BD",
            30,
            "mandatory parameter AN (AgentIdentifier) missing",
        ),
        (br"XA\TXa", 30, "mandatory parameter XS (Sequence) missing"),
        (
            br"UO\TXa\CNc\SI1\RE1",
            30,
            "mandatory parameter DT (Data) missing",
        ),
        (br"UO\TXa\CNc\SI1\DTx", 30, "one of RE and AO is mandatory"),
        // CN is mandatory and missing: that comes before TN-or-SI.
        (br"LC", 30, "mandatory parameter CN (CampaignName) missing"),
    ]);
}

#[test]
fn neither_tn_nor_si_is_120() {
    check(&[
        (br"MC\CNSales1", 120, "TN or SI required"),
        (br"LC\CNa\ANjoe", 120, "TN or SI required"),
        (br"CF\CA1\CNa", 120, "TN or SI required"),
        (br"RN\CNa\TN", 120, "TN or SI required"),
        (br"UO\TXa\CNc\RE1\DTx", 120, "TN or SI required"),
        // Step 3 comes before the bad CE value of step 4.
        (br"MC\CNa\CEx", 120, "TN or SI required"),
    ]);
}

#[test]
fn values_of_the_wrong_length_are_804() {
    let long_tx = format!("EO\\TX{}\\SO", "t".repeat(88));
    let long_si = format!("MC\\CNa\\SI{}", "s".repeat(121));
    let long_co = format!("TC\\ANjoe\\CO{}", "c".repeat(51));
    let long_td = format!("MC\\CNa\\TN1\\TD{}", "d".repeat(81));
    let long_tk = format!("VS\\TK{}", "k".repeat(81));
    check(&[
        (br"EO\TX\SO", 804, "TX must be 1..87 characters long"),
        (long_tx.as_bytes(), 804, "TX must be 1..87 characters long"),
        (br"MC\CN\TN1", 804, "CN must be 1..80 characters long"),
        (long_si.as_bytes(), 804, "SI must be 1..120 characters long"),
        (br"EO\TXa\SO\PS", 804, "PS must be 1..80 characters long"),
        (long_co.as_bytes(), 804, "CO must be 1..50 characters long"),
        (long_td.as_bytes(), 804, "TD must be 1..80 characters long"),
        (long_tk.as_bytes(), 804, "TK must be 1..80 characters long"),
        (br"TC\ANjoe\DT", 804, "DT must be 1..128000 characters long"),
        (br"EE\TX", 804, "TX must be 1..87 characters long"),
    ]);
}

#[test]
fn bad_numbers_are_805() {
    check(&[
        (br"CF\CAx\CNa\TN1", 805, "CA must be a number in 0..999"),
        (br"CF\CA1000\CNa\TN1", 805, "CA must be a number in 0..999"),
        (br"CF\CA-1\CNa\TN1", 805, "CA must be a number in 0..999"),
        (br"CF\CA\CNa\TN1", 805, "CA must be a number in 0..999"),
        (br"CF\CA 1\CNa\TN1", 805, "CA must be a number in 0..999"),
        (br"EO\TXa\SO\CS0", 805, "CS must be a number in 1..1000000"),
        (
            br"EO\TXa\SO\CS1000001",
            805,
            "CS must be a number in 1..1000000",
        ),
        (
            br"EO\TXa\SO\CS1e3",
            805,
            "CS must be a number in 1..1000000",
        ),
        (br"VS\VI100000", 805, "VI must be a number in 0..99999"),
        (br"TC\ANjoe\SR101", 805, "SR must be a number in 0..100"),
        (br"TC\ANjoe\AO10000", 805, "AO must be a number in 0..9999"),
        (br"MC\CNa\TN1\CE0", 805, "CE must be a number in 1..2592000"),
        (
            br"EO\TXa\SO\XR9223372036854775809",
            805,
            "XR must be a number in 0..9223372036854775808",
        ),
        (
            br"XA\TXa\XS9223372036854775808",
            805,
            "XS must be a number in 0..9223372036854775807",
        ),
        (
            br"XA\TXa\XS99999999999999999999999",
            805,
            "XS must be a number in 0..9223372036854775807",
        ),
        (
            br"LC\CNa\TN1\OD10",
            805,
            "OD must be a number in 0..9.99 with at most two decimals",
        ),
        (
            br"LC\CNa\TN1\OD1.234",
            805,
            "OD must be a number in 0..9.99 with at most two decimals",
        ),
        (
            br"LC\CNa\TN1\OD.5",
            805,
            "OD must be a number in 0..9.99 with at most two decimals",
        ),
    ]);
}

#[test]
fn forbidden_characters_are_806() {
    check(&[
        (br"EO\TXa\SO\CNSales/1", 806, &format!("CN {NAME_CHARS}")),
        (br"MC\CNa:b\TN1", 806, &format!("CN {NAME_CHARS}")),
        (br"TC\ANjo;e", 806, &format!("AN {NAME_CHARS}")),
        (br"EO\TXa\SO\PSa*b", 806, &format!("PS {NAME_CHARS}")),
        (br#"LC\CNa\TN1\ANjoe""#, 806, &format!("AN {NAME_CHARS}")),
        (br"TC\ANjoe\BAbob?", 806, &format!("BA {NAME_CHARS}")),
        (
            br"MC\CNa\TN1\TDacme corp",
            806,
            "TD may only contain letters, digits, _ and -",
        ),
        (
            br"EE\TXa\TDacme.corp",
            806,
            "TD may only contain letters, digits, _ and -",
        ),
        // Left to right among values: the bad CN comes before the bad CS.
        (br"EO\TXa\SO\CNa|b\CSx", 806, &format!("CN {NAME_CHARS}")),
    ]);
}

#[test]
fn an_eo_for_no_outcome_class_is_808_after_every_other_check() {
    check(&[
        (br"EO\TXa", 808, "EO needs at least one of SO, FO, MO"),
        (
            br"EO\TXa\CNSales1\PSp\CS10",
            808,
            "EO needs at least one of SO, FO, MO",
        ),
        (br"EO\TXa\CNa/b", 806, &format!("CN {NAME_CHARS}")),
    ]);
}

#[test]
fn eight_bit_bytes_are_echoed_byte_exact_in_fm() {
    let frame = b"MC\\CNa/\xe9\\TN1";
    let mut expected = format!("ER\\EC806\\MSCN {NAME_CHARS}\\FM\"").into_bytes();
    expected.extend_from_slice(frame);
    expected.push(b'"');
    assert_eq!(er_for(frame, WireForm::Bits8).unwrap(), expected);
}

#[test]
fn a_cut_fm_repeats_the_tk_before_it() {
    let frame = format!("MC\\CNa\\TN1\\TKtok-1\\DT{}", "x".repeat(128_001));
    let mut expected = b"ER\\EC804\\MSDT must be 1..128000 characters long\\TKtok-1\\FM\"".to_vec();
    expected.extend_from_slice(&frame.as_bytes()[..4000]);
    expected.push(b'"');
    assert_eq!(er_for(frame.as_bytes(), WireForm::Bits8).unwrap(), expected);

    // Not cut: the TK is only inside FM.
    let short = br"MC\CNa\TN1\TKtok-1\CEx";
    assert_eq!(
        er_for(short, WireForm::Bits8).unwrap(),
        er(805, "CE must be a number in 1..2592000", short)
    );
}

#[test]
fn on_the_utf16_listener_fm_is_cut_at_4000_code_units_never_inside_a_character() {
    // 3,999 units of 'é' then an emoji (two units) that would cross the limit.
    let frame = format!("EO\\TX{}😀\\SOx", "é".repeat(3994));
    let got = er_for(frame.as_bytes(), WireForm::Utf16Le).unwrap();
    let text = String::from_utf8(got).unwrap();
    let fm = text
        .split_once("\\FM\"")
        .unwrap()
        .1
        .strip_suffix('"')
        .unwrap();
    assert_eq!(fm.encode_utf16().count(), 3999);
    assert!(fm.ends_with('é'));
    // On the 8-bit listener the same frame is cut at 4,000 bytes.
    let got = er_for(frame.as_bytes(), WireForm::Bits8).unwrap();
    let start = got.windows(4).position(|w| w == b"\\FM\"").unwrap() + 4;
    assert_eq!(got.len() - start - 1, 4000);
}

#[test]
fn frames_the_decoder_could_not_read_are_850_and_851() {
    use bytes::Bytes;
    use sdmp::Frame;
    let oversize = Frame::Oversize {
        head: Bytes::from_static(br"MC\CNc\DTxxxx"),
        tk: Some(Bytes::from_static(b"t1")),
    };
    assert_eq!(
        &oversize.error_reply(16, WireForm::Bits8).unwrap()[..],
        br#"ER\EC850\MSframe longer than 16 characters\TKt1\FM"MC\CNc\DTxxxx""#
    );
    let invalid = Frame::InvalidUtf16 {
        lossy: Bytes::from("VS\u{FFFD}"),
    };
    assert_eq!(
        &invalid.error_reply(16, WireForm::Utf16Le).unwrap()[..],
        "ER\\EC851\\MSframe is not valid UTF-16\\FM\"VS\u{FFFD}\"".as_bytes()
    );
    assert_eq!(
        Frame::Message(Bytes::from_static(b"DA")).error_reply(16, WireForm::Bits8),
        None
    );
}

#[test]
fn a_kept_faulty_frame_refuses_later_exactly_as_the_frame_itself_would() {
    use sdmp::{ErrorCode, FaultyFrame};
    let full = Rejection::new(ErrorCode::StoreFull, "the store is out of space");
    let long = format!("MC\\CNa\\TN1\\TKtok-1\\DT{}", "é".repeat(3000));
    let frames: [&[u8]; 3] = [br"CF\CA2\CNc\SI1\TK7", long.as_bytes(), br"CF\CA2\CNc\SI1"];
    for frame in frames {
        for form in [WireForm::Bits8, WireForm::Utf16Le] {
            let kept = FaultyFrame::keep(frame, form);
            let later = Envelope {
                dialect: Dialect::V1,
                message: kept.er(&full).into(),
            };
            let now = Envelope {
                dialect: Dialect::V1,
                message: Er::for_frame(&full, frame, form).into(),
            };
            assert_eq!(later.to_bytes(), now.to_bytes());
        }
    }
    let kept = FaultyFrame::keep(long.as_bytes(), WireForm::Bits8);
    let er = Envelope {
        dialect: Dialect::V1,
        message: kept.er(&full).into(),
    }
    .to_bytes();
    assert!(er.starts_with(b"ER\\EC813\\MSthe store is out of space\\TKtok-1\\FM\""));
}
