//! docs/protocol.md carries the table of JSON field names of the HTTP API; this test keeps it
//! exact. Refresh it with `OZBUS_BLESS=1 cargo test -p ozbus --test http_doc`.

use std::path::PathBuf;

const BEGIN: &str = "<!-- generated from the http fields: begin -->\n";
const END: &str = "<!-- generated from the http fields: end -->";

#[test]
fn the_protocol_document_shows_the_json_fields_the_code_uses() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md");
    let doc = std::fs::read_to_string(&path).expect("docs/protocol.md");
    let start = doc.find(BEGIN).expect("begin marker") + BEGIN.len();
    let end = doc.find(END).expect("end marker");
    let generated = ozbus::http::fields::markdown();
    if std::env::var_os("OZBUS_BLESS").is_some() {
        let updated = format!("{}{}{}", &doc[..start], generated, &doc[end..]);
        std::fs::write(&path, updated).expect("write docs/protocol.md");
        return;
    }
    assert!(
        doc[start..end] == generated,
        "docs/protocol.md is out of date: run OZBUS_BLESS=1 cargo test -p ozbus --test http_doc"
    );
}
