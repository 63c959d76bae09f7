//! Good input: frames as integrations send them decode into the values they mean, and ozbus's
//! own messages format into the bytes the protocol fixes.

use sdmp::{
    decode, decode_request, Bd, Cf, Code, Dialect, Ef, Envelope, Eo, Er, Hundredths, Lc, Mc,
    Message, Mv, Oz, PreparedOz, Rejection, Tc, Uo, Us, WireForm,
};

fn request(frame: &[u8]) -> Message<'_> {
    decode_request(frame)
        .unwrap_or_else(|e| panic!("{} refused: {e}", String::from_utf8_lossy(frame)))
        .message
}

fn v1<'a>(message: impl Into<Message<'a>>) -> Vec<u8> {
    Envelope {
        dialect: Dialect::V1,
        message: message.into(),
    }
    .to_bytes()
    .to_vec()
}

#[test]
fn the_vendor_eo_example_opens_success_and_failure_outcomes_of_sales1() {
    assert_eq!(
        request(br"EO\CNSales1\TXEOSales1\FO\SO"),
        Message::Eo(Eo {
            tx: b"EOSales1",
            cn: Some(b"Sales1"),
            so: true,
            fo: true,
            ..Eo::default()
        })
    );
}

#[test]
fn the_vendor_oz_example_is_formatted_byte_for_byte() {
    let oz = Oz {
        tx: b"EOSales1",
        cn: b"Sales1",
        an: Some(b"Joe"),
        si: b"001234567890",
        re: 10,
        ao: Some(167),
        dt: b"",
        ..Oz::default()
    };
    assert_eq!(
        v1(oz),
        br"OZ\TXEOSales1\CNSales1\ANJoe\SI001234567890\RE10\AO167\DT".to_vec()
    );
    // The fan-out path gives the same bytes, per transaction and per code form.
    let prepared = PreparedOz::new(&oz);
    let mut out = bytes::BytesMut::new();
    prepared.write(Dialect::V1, b"EOSales1", &mut out);
    assert_eq!(
        &out[..],
        br"OZ\TXEOSales1\CNSales1\ANJoe\SI001234567890\RE10\AO167\DT"
    );
    out.clear();
    prepared.write(Dialect::cg(Code(*b"MA")), b"other", &mut out);
    assert_eq!(
        &out[..],
        br"CG:MA:OZ\TXother\CNSales1\ANJoe\SI001234567890\RE10\AO167\DT"
    );
}

#[test]
fn oz_writes_every_parameter_in_the_fixed_order() {
    let oz = Oz {
        tx: b"t",
        td: Some(b"acme"),
        cn: b"c",
        an: Some(b"a"),
        si: b"s",
        tn: Some(b"n"),
        re: 0,
        ao: Some(200),
        dd: true,
        as_data: Some(b"as"),
        co: Some(b"co"),
        ba: Some(b"ba"),
        bn: Some(b"bn"),
        bt: Some(b"bt"),
        xs: Some(42),
        xt: Some(b"2026-11-25T17:27:57.123Z"),
        dt: b"d\xe9",
    };
    assert_eq!(
        v1(oz),
        b"OZ\\TXt\\TDacme\\CNc\\ANa\\SIs\\TNn\\RE0\\AO200\\DD\\ASas\\COco\\BAba\\BNbn\\BTbt\\XS42\\XT2026-11-25T17:27:57.123Z\\DTd\xe9".to_vec()
    );
}

#[test]
fn call_reports_decode_into_typed_requests() {
    assert_eq!(
        request(br"MC\CNSales1\TN001234567890\ASref-9\DTname=Ann\CE3600\TKm1"),
        Message::Mc(Mc {
            cn: b"Sales1",
            tn: Some(b"001234567890"),
            as_data: Some(b"ref-9"),
            dt: Some(b"name=Ann"),
            ce: Some(3600),
            tk: Some(b"m1"),
            ..Mc::default()
        })
    );
    assert_eq!(
        request(br"LC\CNSales1\TN001234567890\ANJoe\MA\OD1.5"),
        Message::Lc(Lc {
            cn: b"Sales1",
            tn: Some(b"001234567890"),
            an: Some(b"Joe"),
            ma: true,
            od: Some(Hundredths(150)),
            ..Lc::default()
        })
    );
    assert_eq!(
        request(br"CF\CA2\CNSales1\SIs-1\IR17\TDacme"),
        Message::Cf(Cf {
            ca: 2,
            cn: b"Sales1",
            si: Some(b"s-1"),
            ir: Some(17),
            td: Some(b"acme"),
            ..Cf::default()
        })
    );
    assert_eq!(
        request(br"TC\ANJoe\AO167\NL\CU"),
        Message::Tc(Tc {
            an: b"Joe",
            ao: Some(167),
            nl: true,
            cu: true,
            ..Tc::default()
        })
    );
    assert_eq!(
        request(br"BD\ANJoe\DD\AO200"),
        Message::Bd(Bd {
            an: b"Joe",
            dd: true,
            ao: Some(200),
            ..Bd::default()
        })
    );
    assert_eq!(
        request(br"UO\TXu1\CNSales1\SIs-1\AO105\DTupdated"),
        Message::Uo(Uo {
            tx: b"u1",
            cn: b"Sales1",
            si: Some(b"s-1"),
            ao: Some(105),
            dt: b"updated",
            ..Uo::default()
        })
    );
}

#[test]
fn limits_are_inclusive_and_lengths_count_characters() {
    let tx = "é".repeat(87);
    let frame = format!("EO\\TX{tx}\\SO\\CS1000000\\XR9223372036854775808");
    let Message::Eo(eo) = request(frame.as_bytes()) else {
        panic!()
    };
    assert_eq!(eo.tx, tx.as_bytes());
    assert_eq!((eo.cs, eo.xr), (Some(1_000_000), Some(1 << 63)));
    assert!(
        decode_request(br"CF\CA999\CNa\TN").is_err(),
        "an empty TN names no call"
    );
    assert!(decode_request(br"CF\CA999\CNa\TN\SIs").is_ok());
}

#[test]
fn sdmp_2_requests_keep_their_form() {
    let envelope = decode_request(br"CG:CT:LC\CNa\TN1").unwrap();
    assert_eq!(envelope.dialect, Dialect::cg(Code(*b"CT")));
    let reply = Envelope {
        dialect: envelope.dialect,
        message: Mv {
            tk: b"t1",
            xs: None,
        }
        .into(),
    };
    assert_eq!(&reply.to_bytes()[..], br"CG:CT:MV\TKt1");
}

#[test]
fn replies_from_ozbus_decode_for_clients() {
    assert_eq!(
        decode(br"EF\TXa\TDacme").unwrap().message,
        Message::Ef(Ef {
            tx: b"a",
            td: Some(b"acme")
        })
    );
    assert_eq!(
        decode(br"US\TDacme\ANjoe\RS0\PG3").unwrap().message,
        Message::Us(Us {
            td: b"acme",
            an: Some(b"joe"),
            rs: 0,
            pg: Some(3)
        })
    );
    // FM holds backslashes and quotes of the faulty frame; it runs to the end of the ER.
    let er = br#"ER\EC801\MSparameter ZZ is not defined for CF\FM"CF\ZZ"1\TKx""#;
    assert_eq!(
        decode(er).unwrap().message,
        Message::Er(Er {
            ec: 801,
            ms: b"parameter ZZ is not defined for CF",
            tk: None,
            fm: br#"CF\ZZ"1\TKx"#,
        })
    );
    // A rejection decided by the service becomes an ER the same way.
    let busy = Rejection::new(
        sdmp::ErrorCode::AgentBusy,
        "agent Joe already has an open call",
    );
    assert_eq!(
        v1(Er::for_frame(&busy, br"LC\CNa\TN1\ANJoe", WireForm::Bits8)),
        br#"ER\EC414\MSagent Joe already has an open call\FM"LC\CNa\TN1\ANJoe""#.to_vec()
    );
}

#[test]
fn tk_and_td_are_read_from_any_request_in_one_call() {
    let common = request(br"CF\CA2\CNc\SI1\TDacme\TKt9").common();
    assert_eq!(
        (common.tk, common.td),
        (Some(&b"t9"[..]), Some(&b"acme"[..]))
    );
    assert_eq!(request(br"VS").common(), sdmp::Common::default());
}

#[test]
fn xk_names_a_call_report_or_uo_and_nothing_else() {
    let cf = request(br"CF\CA2\CNc\SI1\XKorder-17/a\TK1");
    let common = cf.common();
    assert_eq!(
        (common.xk, common.tk),
        (Some(&b"order-17/a"[..]), Some(&b"1"[..]))
    );
    for frame in [
        &br"MC\CNc\SI1\XKk"[..],
        br"RN\CNc\SI1\XKk",
        br"LC\CNc\SI1\XKk",
        br"TC\ANJoe\XKk",
        br"BD\ANJoe\XKk",
        br"UO\TXu\CNc\SI1\RE2\DTd\XKk",
    ] {
        assert_eq!(request(frame).common().xk, Some(&b"k"[..]));
    }
    assert_eq!(request(br"CF\CA2\CNc\SI1").common().xk, None);
    let refused = |frame: &[u8]| decode_request(frame).unwrap_err().code.number();
    assert_eq!(refused(br"EO\TXt\FO\XKk"), 801);
    assert_eq!(refused(br"CF\CA2\CNc\SI1\XK"), 804);
    assert_eq!(
        refused(format!(r"CF\CA2\CNc\SI1\XK{}", "k".repeat(81)).as_bytes()),
        804
    );
}
