//! Unit tests of the framing codec: decoding in both wire forms (frame ends, empty frames, the
//! oversize rule, invalid UTF-16), encoding, and properties that hold however the input is cut
//! into reads. They reach the codec's private parts, hence a child module rather than `tests/`.

use super::*;
use proptest::prelude::*;

fn codec(form: WireForm, max: usize) -> SdmpCodec {
    SdmpCodec::new(form).with_max_frame(max)
}

/// Feeds `chunks` one after another, then ends the stream; returns every item.
fn run(codec: &mut SdmpCodec, chunks: &[&[u8]]) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            items.push(item);
        }
    }
    while let Some(item) = codec.decode_eof(&mut buf).unwrap() {
        items.push(item);
    }
    assert!(buf.is_empty());
    items
}

fn run_whole(form: WireForm, max: usize, input: &[u8]) -> Vec<Frame> {
    run(&mut codec(form, max), &[input])
}

fn run_bytewise(form: WireForm, max: usize, input: &[u8]) -> Vec<Frame> {
    let chunks: Vec<&[u8]> = input.chunks(1).collect();
    run(&mut codec(form, max), &chunks)
}

fn msg(bytes: &[u8]) -> Frame {
    Frame::Message(Bytes::copy_from_slice(bytes))
}

fn oversize(head: &[u8], tk: Option<&[u8]>) -> Frame {
    Frame::Oversize {
        head: Bytes::copy_from_slice(head),
        tk: tk.map(Bytes::copy_from_slice),
    }
}

fn invalid(lossy: &str) -> Frame {
    Frame::InvalidUtf16 {
        lossy: Bytes::copy_from_slice(lossy.as_bytes()),
    }
}

fn le(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn le_units(units: &[u16]) -> Vec<u8> {
    units.iter().flat_map(|u| u.to_le_bytes()).collect()
}

fn encode<T: WriteMessage + ?Sized>(codec: &mut SdmpCodec, item: &T) -> Vec<u8> {
    let mut dst = BytesMut::new();
    codec.encode(item, &mut dst).unwrap();
    dst.to_vec()
}

// ---- Bits8 decoding ----

#[test]
fn each_terminator_ends_a_frame() {
    for term in [0x00u8, b'\n', b'\r'] {
        let mut input = b"EO\\TXa".to_vec();
        input.push(term);
        input.extend_from_slice(b"DA");
        input.push(term);
        assert_eq!(
            run_whole(WireForm::Bits8, 64, &input),
            vec![msg(b"EO\\TXa"), msg(b"DA")],
            "terminator {term:#04x}"
        );
    }
}

#[test]
fn crlf_lf_and_mixed() {
    assert_eq!(
        run_whole(WireForm::Bits8, 64, b"AA\r\nBB\r\n"),
        vec![msg(b"AA"), msg(b"BB")]
    );
    assert_eq!(
        run_whole(WireForm::Bits8, 64, b"AA\nBB\n"),
        vec![msg(b"AA"), msg(b"BB")]
    );
    assert_eq!(
        run_whole(WireForm::Bits8, 64, b"AA\r\nBB\0CC\nDD\rEE\n\r\0"),
        vec![msg(b"AA"), msg(b"BB"), msg(b"CC"), msg(b"DD"), msg(b"EE")]
    );
}

#[test]
fn empty_frames_are_skipped() {
    assert_eq!(run_whole(WireForm::Bits8, 64, b"\0\0\n\r\r\n"), vec![]);
    assert_eq!(
        run_whole(WireForm::Bits8, 64, b"\0\0AA\n\n\r\0BB\0\0"),
        vec![msg(b"AA"), msg(b"BB")]
    );
    let mut c = codec(WireForm::Bits8, 64);
    let mut buf = BytesMut::from(&b"\0\r\n"[..]);
    assert_eq!(c.decode(&mut buf).unwrap(), None);
    assert!(buf.is_empty());
}

#[test]
fn frame_fed_one_byte_at_a_time() {
    let input = b"CG:MA:EO\\CNSales1\\TXt1\\FO\\SO\0DA\r\n";
    assert_eq!(
        run_bytewise(WireForm::Bits8, 64, input),
        vec![msg(b"CG:MA:EO\\CNSales1\\TXt1\\FO\\SO"), msg(b"DA")]
    );
}

#[test]
fn search_resumes_where_it_stopped() {
    let mut c = codec(WireForm::Bits8, 64);
    let mut buf = BytesMut::from(&b"EO\\TX"[..]);
    assert_eq!(c.decode(&mut buf).unwrap(), None);
    assert_eq!(c.scanned, 5);
    buf.extend_from_slice(b"a\\SO\nDA");
    assert_eq!(c.decode(&mut buf).unwrap(), Some(msg(b"EO\\TXa\\SO")));
    assert_eq!(c.scanned, 0);
    assert_eq!(c.decode(&mut buf).unwrap(), None);
    assert_eq!(&buf[..], b"DA");
}

#[test]
fn several_frames_in_one_buffer() {
    let mut c = codec(WireForm::Bits8, 64);
    let mut buf = BytesMut::from(&b"AA\0BB\0CC\0DD"[..]);
    assert_eq!(c.decode(&mut buf).unwrap(), Some(msg(b"AA")));
    assert_eq!(c.decode(&mut buf).unwrap(), Some(msg(b"BB")));
    assert_eq!(c.decode(&mut buf).unwrap(), Some(msg(b"CC")));
    assert_eq!(c.decode(&mut buf).unwrap(), None);
    assert_eq!(&buf[..], b"DD");
}

#[test]
fn message_bytes_are_kept_exactly() {
    let input = b"EO\\CN\x80\xE9\xFF\x01\\TX\xC3\xA9\0";
    assert_eq!(
        run_whole(WireForm::Bits8, 64, input),
        vec![msg(b"EO\\CN\x80\xE9\xFF\x01\\TX\xC3\xA9")]
    );
}

#[test]
fn unterminated_tail_at_eof_is_a_frame() {
    assert_eq!(
        run_whole(WireForm::Bits8, 64, b"AA\nEO\\TXa\\SO"),
        vec![msg(b"AA"), msg(b"EO\\TXa\\SO")]
    );
    let mut c = codec(WireForm::Bits8, 64);
    let mut buf = BytesMut::from(&b"EO"[..]);
    assert_eq!(c.decode(&mut buf).unwrap(), None);
    assert_eq!(c.decode_eof(&mut buf).unwrap(), Some(msg(b"EO")));
    assert_eq!(c.decode_eof(&mut buf).unwrap(), None);
    assert_eq!(c.decode_eof(&mut buf).unwrap(), None);
}

// ---- maximum frame and oversize ----

#[test]
fn frame_of_exactly_max_is_accepted() {
    let frame = [b'a'; 16];
    let mut input = frame.to_vec();
    input.push(0);
    assert_eq!(run_whole(WireForm::Bits8, 16, &input), vec![msg(&frame)]);
    assert_eq!(run_bytewise(WireForm::Bits8, 16, &input), vec![msg(&frame)]);
    // Unterminated at EOF, still within max.
    assert_eq!(run_bytewise(WireForm::Bits8, 16, &frame), vec![msg(&frame)]);
}

#[test]
fn frame_of_max_plus_one_is_oversize() {
    let frame = [b'a'; 17];
    let mut input = frame.to_vec();
    input.push(b'\n');
    // The head is up to FM_LIMIT characters, so a small max keeps the whole frame.
    assert_eq!(
        run_whole(WireForm::Bits8, 16, &input),
        vec![oversize(&frame, None)]
    );
    assert_eq!(
        run_bytewise(WireForm::Bits8, 16, &input),
        vec![oversize(&frame, None)]
    );
}

#[test]
fn zero_max_makes_every_frame_oversize() {
    assert_eq!(
        run_whole(WireForm::Bits8, 0, b"A\n\nB"),
        vec![oversize(b"A", None), oversize(b"B", None)]
    );
}

#[test]
fn oversize_buffer_stays_bounded() {
    let mut c = codec(WireForm::Bits8, 16);
    let mut buf = BytesMut::new();
    let chunk = [b'x'; 1000];
    for _ in 0..1000 {
        buf.extend_from_slice(&chunk);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert!(buf.len() <= 16 + chunk.len());
    }
    buf.extend_from_slice(b"\\TKend\nDA\n");
    assert_eq!(
        c.decode(&mut buf).unwrap(),
        Some(oversize(&[b'x'; FM_LIMIT], Some(b"end")))
    );
    assert_eq!(c.decode(&mut buf).unwrap(), Some(msg(b"DA")));
}

#[test]
fn oversize_head_is_exactly_the_first_fm_limit_bytes() {
    let frame: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut input = frame.clone();
    input.push(0);
    let want = vec![oversize(&frame[..FM_LIMIT], None)];
    assert_eq!(run_whole(WireForm::Bits8, 5000, &input), want);
    let chunks: Vec<&[u8]> = input.chunks(333).collect();
    assert_eq!(run(&mut codec(WireForm::Bits8, 5000), &chunks), want);
}

/// An oversize frame of 6000 bytes with `\TK<token>` starting at byte `at`.
fn frame_with_tk_at(at: usize, token: &[u8]) -> Vec<u8> {
    let mut frame = vec![b'x'; at];
    frame.extend_from_slice(b"\\TK");
    frame.extend_from_slice(token);
    frame.extend_from_slice(b"\\SO");
    frame.resize(6000, b'y');
    frame
}

#[test]
fn oversize_tk_before_after_and_straddling_the_cut() {
    for at in [0, 100, 3996, 3997, 3998, 3999, 4000, 4500, 5990] {
        let frame = frame_with_tk_at(at, b"tok-42");
        let mut input = frame.clone();
        input.extend_from_slice(b"\0DA\0");
        let want = vec![oversize(&frame[..FM_LIMIT], Some(b"tok-42")), msg(b"DA")];
        assert_eq!(run_whole(WireForm::Bits8, 5000, &input), want, "at {at}");
        for chunk in [1, 2, 3, 7, 1000] {
            let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
            assert_eq!(
                run(&mut codec(WireForm::Bits8, 5000), &chunks),
                want,
                "at {at}, chunk {chunk}"
            );
        }
    }
}

#[test]
fn oversize_tk_split_at_every_point() {
    let at = 5500;
    let frame = frame_with_tk_at(at, b"abc");
    let mut input = frame.clone();
    input.push(b'\n');
    // Cuts inside `\TK`, inside the token and right after it, after discarding has begun.
    for cut in at - 1..=at + 7 {
        let (a, b) = input.split_at(cut);
        assert_eq!(
            run(&mut codec(WireForm::Bits8, 5000), &[a, b]),
            vec![oversize(&frame[..FM_LIMIT], Some(b"abc"))],
            "cut {cut}"
        );
    }
}

#[test]
fn oversize_tk_rules() {
    let long = [b'k'; 100];
    let cases: Vec<(Vec<u8>, Option<&[u8]>)> = vec![
        (b"EO\\TXa\\SO".to_vec(), None),
        (b"EO\\TK".to_vec(), Some(b"")),
        (b"EO\\TKlast".to_vec(), Some(b"last")),
        (b"EO\\TKone\\TKtwo".to_vec(), Some(b"one")),
        (b"EO\\\\TKdbl".to_vec(), Some(b"dbl")),
        (b"EO\\TTKno\\T\\TKyes".to_vec(), Some(b"yes")),
        (b"TKno\\tkno".to_vec(), None),
        ([&b"EO\\TK"[..], &long, b"\\SO"].concat(), Some(&long[..80])),
        ([&b"EO\\TK"[..], &long].concat(), Some(&long[..80])),
    ];
    for (frame, tk) in cases {
        let mut input = frame.clone();
        input.push(0);
        let want = vec![oversize(&frame, tk)];
        assert_eq!(run_whole(WireForm::Bits8, 1, &input), want);
        assert_eq!(run_bytewise(WireForm::Bits8, 1, &input), want);
    }
}

#[test]
fn frame_after_oversize_decodes_normally() {
    let mut input = vec![b'z'; 40];
    input.extend_from_slice(b"\r\nEO\\TXa\r\nDA\0");
    let want = vec![oversize(&[b'z'; 40], None), msg(b"EO\\TXa"), msg(b"DA")];
    assert_eq!(run_whole(WireForm::Bits8, 16, &input), want);
    assert_eq!(run_bytewise(WireForm::Bits8, 16, &input), want);
}

#[test]
fn oversize_at_eof() {
    let mut input = b"AA\n".to_vec();
    input.extend_from_slice(&frame_with_tk_at(4200, b"t"));
    let want = vec![msg(b"AA"), oversize(&[b'x'; FM_LIMIT], Some(b"t"))];
    assert_eq!(run_whole(WireForm::Bits8, 5000, &input), want);
    let chunks: Vec<&[u8]> = input.chunks(512).collect();
    assert_eq!(run(&mut codec(WireForm::Bits8, 5000), &chunks), want);
}

#[test]
fn codec_is_clean_after_eof() {
    let mut c = codec(WireForm::Bits8, 4);
    let mut buf = BytesMut::from(&b"abcdefgh"[..]);
    assert_eq!(c.decode(&mut buf).unwrap(), None);
    assert_eq!(
        c.decode_eof(&mut buf).unwrap(),
        Some(oversize(b"abcdefgh", None))
    );
    assert_eq!(c.decode_eof(&mut buf).unwrap(), None);
    buf.extend_from_slice(b"DA\n");
    assert_eq!(c.decode(&mut buf).unwrap(), Some(msg(b"DA")));
}

// ---- Utf16Le decoding ----

#[test]
fn utf16_ascii_with_each_terminator() {
    for term in [0x0000u16, 0x000A, 0x000D] {
        let mut input = le("EO\\TXa");
        input.extend_from_slice(&term.to_le_bytes());
        input.extend_from_slice(&le("DA\r\n"));
        assert_eq!(
            run_whole(WireForm::Utf16Le, 64, &input),
            vec![msg(b"EO\\TXa"), msg(b"DA")]
        );
        assert_eq!(
            run_bytewise(WireForm::Utf16Le, 64, &input),
            vec![msg(b"EO\\TXa"), msg(b"DA")]
        );
    }
}

#[test]
fn utf16_non_ascii_and_surrogate_pair() {
    let text = "EO\\CNé€😀\\TXa";
    let mut input = le(text);
    input.extend_from_slice(&[0, 0]);
    assert_eq!(
        run_whole(WireForm::Utf16Le, 64, &input),
        vec![msg(text.as_bytes())]
    );
    assert_eq!(
        run_bytewise(WireForm::Utf16Le, 64, &input),
        vec![msg(text.as_bytes())]
    );
}

#[test]
fn utf16_terminator_bytes_off_unit_boundary_do_not_end_a_frame() {
    // U+0A41 is 41 0A, U+0D00 is 00 0D, U+0100 is 00 01: terminator bytes, no terminator unit.
    let text = "\u{0A41}\u{0D00}\u{0100}A";
    let mut input = le(text);
    input.extend_from_slice(&[0x0A, 0x00]);
    assert_eq!(
        run_whole(WireForm::Utf16Le, 64, &input),
        vec![msg(text.as_bytes())]
    );
    assert_eq!(
        run_bytewise(WireForm::Utf16Le, 64, &input),
        vec![msg(text.as_bytes())]
    );
}

#[test]
fn utf16_lone_surrogates_are_invalid_and_the_next_frame_decodes() {
    for lone in [0xD800u16, 0xDBFF, 0xDC00, 0xDFFF] {
        let mut input = le_units(&[0x0041, lone, 0x0042, 0x0000]);
        input.extend_from_slice(&le("EO\\TXa\n"));
        let want = vec![invalid("A\u{FFFD}B"), msg(b"EO\\TXa")];
        assert_eq!(run_whole(WireForm::Utf16Le, 64, &input), want);
        assert_eq!(run_bytewise(WireForm::Utf16Le, 64, &input), want);
    }
    // A high surrogate right before the terminator, and a reversed pair.
    let input = le_units(&[0x0041, 0xD83D, 0x000A, 0xDE00, 0xD83D, 0x000A]);
    assert_eq!(
        run_whole(WireForm::Utf16Le, 64, &input),
        vec![invalid("A\u{FFFD}"), invalid("\u{FFFD}\u{FFFD}")]
    );
}

#[test]
fn utf16_odd_trailing_byte_at_eof() {
    let mut input = le("AA\0EO");
    input.push(0x41);
    assert_eq!(
        run_whole(WireForm::Utf16Le, 64, &input),
        vec![msg(b"AA"), invalid("EO\u{FFFD}")]
    );
    assert_eq!(
        run_whole(WireForm::Utf16Le, 64, &[0x41]),
        vec![invalid("\u{FFFD}")]
    );
    let mut c = codec(WireForm::Utf16Le, 64);
    let mut buf = BytesMut::from(&[0x41][..]);
    assert_eq!(c.decode(&mut buf).unwrap(), None);
    assert_eq!(&buf[..], &[0x41]);
}

#[test]
fn utf16_unterminated_tail_at_eof() {
    assert_eq!(
        run_whole(WireForm::Utf16Le, 64, &le("EO\\TXa\\SO")),
        vec![msg(b"EO\\TXa\\SO")]
    );
    assert_eq!(
        run_whole(WireForm::Utf16Le, 64, &le_units(&[0x0041, 0xD800])),
        vec![invalid("A\u{FFFD}")]
    );
}

#[test]
fn utf16_max_counts_code_units() {
    // 😀 is two units: "AB😀" is 4 units, exactly the max.
    let mut input = le("AB😀\0ABCDE\0");
    input.extend_from_slice(&le("DA\0"));
    assert_eq!(
        run_whole(WireForm::Utf16Le, 4, &input),
        vec![msg("AB😀".as_bytes()), oversize(b"ABCDE", None), msg(b"DA")]
    );
    assert_eq!(
        run_bytewise(WireForm::Utf16Le, 4, &input),
        vec![msg("AB😀".as_bytes()), oversize(b"ABCDE", None), msg(b"DA")]
    );
}

#[test]
fn utf16_oversize_head_and_tk() {
    let mut text = "é".repeat(4500);
    text.push_str("\\TKjeton-€😀\\SO");
    let mut input = le(&text);
    input.extend_from_slice(&le("\nDA\n"));
    let want = vec![
        oversize(
            "é".repeat(FM_LIMIT).as_bytes(),
            Some("jeton-€😀".as_bytes()),
        ),
        msg(b"DA"),
    ];
    assert_eq!(run_whole(WireForm::Utf16Le, 4100, &input), want);
    let chunks: Vec<&[u8]> = input.chunks(7).collect();
    assert_eq!(run(&mut codec(WireForm::Utf16Le, 4100), &chunks), want);
}

#[test]
fn utf16_oversize_head_never_splits_a_surrogate_pair() {
    // The pair takes units 3999 and 4000: the head leaves it out and stays within FM_LIMIT.
    let split = format!("{}😀{}", "a".repeat(FM_LIMIT - 1), "b".repeat(200));
    // The pair takes units 3998 and 3999: it fits.
    let fits = format!("{}😀{}", "a".repeat(FM_LIMIT - 2), "b".repeat(200));
    // A lone high surrogate as unit 3999 is cut off as a replacement, not dropped.
    let mut lone = le(&"a".repeat(FM_LIMIT - 1));
    lone.extend_from_slice(&le_units(&[0xD800, 0x0062, 0x0062]));
    let cases = [
        (le(&split), "a".repeat(FM_LIMIT - 1)),
        (le(&fits), format!("{}😀", "a".repeat(FM_LIMIT - 2))),
        (lone, format!("{}\u{FFFD}", "a".repeat(FM_LIMIT - 1))),
    ];
    for (frame, head) in cases {
        let mut input = frame.clone();
        input.extend_from_slice(&[0, 0]);
        assert_eq!(
            run_whole(WireForm::Utf16Le, 4000, &input),
            vec![oversize(head.as_bytes(), None)]
        );
        // At EOF without terminator, and with an odd byte left over.
        input.truncate(frame.len());
        input.push(0x41);
        assert_eq!(
            run_whole(WireForm::Utf16Le, 4000, &input),
            vec![oversize(head.as_bytes(), None)]
        );
    }
}

#[test]
fn utf16_oversize_invalid_text_is_reported_as_oversize() {
    let mut input = le_units(&[0x0041, 0xDC00, 0x0042, 0x005C, 0x0054, 0x004B, 0xD800]);
    input.extend_from_slice(&[0, 0]);
    assert_eq!(
        run_whole(WireForm::Utf16Le, 2, &input),
        vec![oversize(
            "A\u{FFFD}B\\TK\u{FFFD}".as_bytes(),
            Some("\u{FFFD}".as_bytes())
        )]
    );
}

#[test]
fn utf16_oversize_buffer_stays_bounded() {
    let mut c = codec(WireForm::Utf16Le, 16);
    let mut buf = BytesMut::new();
    // Odd-sized chunks so a half unit is carried across reads while discarding.
    let chunk = le(&"x".repeat(500));
    for _ in 0..200 {
        buf.extend_from_slice(&chunk[..999]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert!(buf.len() <= 1);
        buf.extend_from_slice(&chunk[999..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
    }
    buf.extend_from_slice(&le("\r\nDA\r\n"));
    assert_eq!(
        c.decode(&mut buf).unwrap(),
        Some(oversize("x".repeat(FM_LIMIT).as_bytes(), None))
    );
    assert_eq!(c.decode(&mut buf).unwrap(), Some(msg(b"DA")));
    assert_eq!(c.decode(&mut buf).unwrap(), None);
}

// ---- encoding ----

#[test]
fn encoder_bits8_writes_bytes_then_nul() {
    let mut c = SdmpCodec::new(WireForm::Bits8);
    let want = b"ER\\EC800\\MS\x80\xE9\\FM\"x\"\0".to_vec();
    let kept: &[u8] = b"ER\\EC800\\MS\x80\xE9\\FM\"x\"";
    assert_eq!(encode(&mut c, kept), want);
    assert_eq!(encode(&mut c, &kept.to_vec()), want);
    assert_eq!(encode(&mut c, &Bytes::copy_from_slice(kept)), want);
    assert_eq!(encode(&mut c, "DA"), b"DA\0");
    let mut dst = BytesMut::new();
    c.encode("AA", &mut dst).unwrap();
    c.encode("BB", &mut dst).unwrap();
    assert_eq!(&dst[..], b"AA\0BB\0");
}

#[test]
fn encoder_utf16_of_valid_utf8() {
    let mut c = SdmpCodec::new(WireForm::Utf16Le);
    let text = "MV\\TKé€😀";
    let mut want = le(text);
    want.extend_from_slice(&[0, 0]);
    assert_eq!(encode(&mut c, text), want);
    assert_eq!(encode(&mut c, "DA"), vec![b'D', 0, b'A', 0, 0, 0]);
}

#[test]
fn encoder_utf16_decodes_non_utf8_pieces_as_windows_1252() {
    let mut c = SdmpCodec::new(WireForm::Utf16Le);
    // CN is Windows-1252 (0x80 is not valid UTF-8), AN is valid UTF-8 "é".
    let kept: &[u8] = b"EO\\CN\x80\xE9\\AN\xC3\xA9\\TX\x81";
    let mut want = le("EO\\CN€é\\ANé\\TX\u{81}");
    want.extend_from_slice(&[0, 0]);
    assert_eq!(encode(&mut c, kept), want);
    // Checked by hand as well: 0x80 is U+20AC, 0xE9 is U+00E9.
    assert_eq!(&want[10..14], &[0xAC, 0x20, 0xE9, 0x00]);
}

#[test]
fn transcode_handles_long_windows_1252_pieces_and_edges() {
    let mut kept = vec![0xE9u8; 1000];
    kept.extend_from_slice(b"\\\\");
    let mut dst = BytesMut::new();
    transcode_to_utf16le(&kept, &mut dst);
    let mut want = le(&"é".repeat(1000));
    want.extend_from_slice(&le("\\\\"));
    assert_eq!(&dst[..], &want[..]);
    let mut empty = BytesMut::new();
    transcode_to_utf16le(b"", &mut empty);
    assert!(empty.is_empty());
}

#[test]
fn utf16_round_trip_through_encoder_and_decoder() {
    let mut c = SdmpCodec::new(WireForm::Utf16Le);
    let mut wire = BytesMut::new();
    for m in ["EO\\CNé€", "😀\\TX😀", "DA"] {
        c.encode(m, &mut wire).unwrap();
    }
    let items = run_whole(WireForm::Utf16Le, 64, &wire);
    assert_eq!(
        items,
        vec![
            msg("EO\\CNé€".as_bytes()),
            msg("😀\\TX😀".as_bytes()),
            msg(b"DA")
        ]
    );
}

// ---- streams ----

#[tokio::test]
async fn works_under_framed_read() {
    use futures::StreamExt;
    use tokio_util::codec::FramedRead;

    let mut input = b"EO\\TXa\\SO\0".to_vec();
    // Larger than one read, so discarding spans several reads.
    input.resize(input.len() + 15_000, b'x');
    input.extend_from_slice(b"\\TKtk1\\SO");
    input.resize(30_000, b'y');
    input.extend_from_slice(b"\r\nDA\r\nEE\\TXa");
    let mut frames = FramedRead::new(&input[..], codec(WireForm::Bits8, 1000));
    assert_eq!(frames.next().await.unwrap().unwrap(), msg(b"EO\\TXa\\SO"));
    assert_eq!(
        frames.next().await.unwrap().unwrap(),
        oversize(&[b'x'; FM_LIMIT], Some(b"tk1"))
    );
    assert_eq!(frames.next().await.unwrap().unwrap(), msg(b"DA"));
    assert_eq!(frames.next().await.unwrap().unwrap(), msg(b"EE\\TXa"));
    assert!(frames.next().await.is_none());
}

// ---- properties ----

/// Bytes that hit the interesting paths often: terminators, `\TK`, surrogate halves.
fn wire_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => any::<u8>(),
        1 => Just(0x00u8),
        1 => Just(b'\n'),
        1 => Just(b'\r'),
        1 => Just(b'\\'),
        1 => Just(b'T'),
        1 => Just(b'K'),
        1 => Just(0xD8u8),
        1 => Just(0xDCu8),
    ]
}

fn form() -> impl Strategy<Value = WireForm> {
    prop_oneof![Just(WireForm::Bits8), Just(WireForm::Utf16Le)]
}

fn max_frame() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..40, Just(DEFAULT_MAX_FRAME)]
}

/// A straightforward Bits8 model to check the streaming decoder against.
fn bits8_model(input: &[u8], max: usize) -> Vec<Frame> {
    input
        .split(|&b| matches!(b, 0x00 | b'\n' | b'\r'))
        .filter(|frame| !frame.is_empty())
        .map(|frame| {
            if frame.len() <= max {
                return msg(frame);
            }
            let tk = frame.windows(3).position(|w| w == b"\\TK").map(|at| {
                let value = &frame[at + 3..];
                let value = value.split(|&b| b == b'\\').next().unwrap();
                &value[..value.len().min(TK_LIMIT)]
            });
            oversize(&frame[..frame.len().min(FM_LIMIT)], tk)
        })
        .collect()
}

fn chunked<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts {
        chunks.push(&input[start..cut]);
        start = cut;
    }
    chunks.push(&input[start..]);
    chunks
}

proptest! {
    #[test]
    fn chunking_never_changes_the_items(
        input in proptest::collection::vec(wire_byte(), 0..400),
        cuts in proptest::collection::vec(0usize..400, 0..24),
        form in form(),
        max in max_frame(),
    ) {
        let whole = run_whole(form, max, &input);
        let pieces = run(&mut codec(form, max), &chunked(&input, &cuts));
        prop_assert_eq!(&pieces, &whole);
        let bytewise = run_bytewise(form, max, &input);
        prop_assert_eq!(&bytewise, &whole);
        if form == WireForm::Bits8 {
            prop_assert_eq!(&whole, &bits8_model(&input, max));
        }
    }

    #[test]
    fn long_oversize_frames_match_the_model(
        // Long runs of plain bytes between short bursts of interesting ones, built from a
        // few numbers so that generating 10k-byte inputs stays cheap.
        segments in proptest::collection::vec(
            (0usize..3000, proptest::collection::vec(wire_byte(), 0..6)), 0..8),
        cuts in proptest::collection::vec(0usize..24_000, 0..16),
    ) {
        let mut input = Vec::new();
        for (run, burst) in &segments {
            input.resize(input.len() + run, b'x');
            input.extend_from_slice(burst);
        }
        let pieces = run(&mut codec(WireForm::Bits8, 4100), &chunked(&input, &cuts));
        prop_assert_eq!(pieces, bits8_model(&input, 4100));
    }

    #[test]
    fn bits8_encode_then_decode_gives_the_frames_back(
        frames in proptest::collection::vec(
            proptest::collection::vec(
                any::<u8>().prop_filter("no terminator", |b| !matches!(b, 0x00 | 0x0A | 0x0D)),
                0..60),
            0..20),
        cuts in proptest::collection::vec(0usize..1200, 0..8),
    ) {
        let mut c = SdmpCodec::new(WireForm::Bits8);
        let mut wire = BytesMut::new();
        for frame in &frames {
            c.encode(frame, &mut wire).unwrap();
        }
        let want: Vec<Frame> = frames.iter().filter(|f| !f.is_empty()).map(|f| msg(f)).collect();
        prop_assert_eq!(run(&mut c, &chunked(&wire, &cuts)), want);
    }

    #[test]
    fn utf16_encode_then_decode_gives_the_frames_back(
        frames in proptest::collection::vec("[^\\x00\\n\\r]{0,30}", 0..20),
        cuts in proptest::collection::vec(0usize..2400, 0..8),
    ) {
        let mut c = SdmpCodec::new(WireForm::Utf16Le);
        let mut wire = BytesMut::new();
        for frame in &frames {
            c.encode(frame.as_str(), &mut wire).unwrap();
        }
        let want: Vec<Frame> = frames
            .iter()
            .filter(|f| !f.is_empty())
            .map(|f| msg(f.as_bytes()))
            .collect();
        prop_assert_eq!(run(&mut c, &chunked(&wire, &cuts)), want);
    }
}
