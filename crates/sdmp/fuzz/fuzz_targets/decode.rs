//! Everything a connection does with untrusted bytes: frame them (both wire forms, a small frame
//! limit so oversize handling is exercised), parse and validate every frame, and build the ER a
//! rejected frame would get. Nothing may panic; whatever is accepted must format back to a frame
//! that decodes to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sdmp::framing::Frame;
use sdmp::{decode, decode_request, Dialect, Envelope, Er, SdmpCodec, WireForm};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    for form in [WireForm::Bits8, WireForm::Utf16Le] {
        let mut codec = SdmpCodec::new(form).with_max_frame(512);
        // Feed in two reads, split where the first byte says, to exercise partial frames.
        let split = data.first().map_or(0, |&b| usize::from(b) % (data.len() + 1));
        let mut buf = BytesMut::new();
        for (i, chunk) in [&data[..split], &data[split..]].into_iter().enumerate() {
            buf.extend_from_slice(chunk);
            loop {
                let item = if i == 1 { codec.decode_eof(&mut buf) } else { codec.decode(&mut buf) };
                match item.expect("the codec never fails on input") {
                    Some(Frame::Message(frame)) => check(&frame, form),
                    Some(_) => {}
                    None => break,
                }
            }
        }
    }
});

fn check(frame: &[u8], form: WireForm) {
    match decode_request(frame) {
        Ok(envelope) => {
            let bytes = envelope.to_bytes();
            assert_eq!(decode(&bytes).ok(), Some(envelope));
        }
        Err(rejection) => {
            let er = Envelope {
                dialect: Dialect::of_frame(frame),
                message: Er::for_frame(&rejection, frame, form).into(),
            };
            assert!(decode(&er.to_bytes()).is_ok());
        }
    }
}
