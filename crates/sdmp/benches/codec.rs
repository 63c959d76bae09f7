//! The codec's hot paths: reading a telephony report, writing an outcome.
//!
//! `cargo bench -p sdmp --bench codec`

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sdmp::{decode_request, Dialect, Envelope, Oz, PreparedOz, SdmpCodec, WireForm};
use std::hint::black_box;
use tokio_util::codec::Decoder;

const CF: &[u8] = br"CF\CNSales1\TN001234567890\CA2\TKrep-000123";

fn typical_oz() -> Oz<'static> {
    Oz {
        tx: b"EOSales1",
        cn: b"Sales1",
        an: Some(b"Joe"),
        si: b"001234567890",
        re: 10,
        ao: Some(167),
        as_data: Some(b"crm-42"),
        dt: b"name=Ann Smith;account=7781;balance=1200.50",
        ..Oz::default()
    }
}

fn parse_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse+validate");
    group.throughput(Throughput::Elements(1));
    group.bench_function("CF", |b| b.iter(|| decode_request(black_box(CF)).is_ok()));
    group.finish();
}

fn format_oz(c: &mut Criterion) {
    let mut group = c.benchmark_group("format");
    group.throughput(Throughput::Elements(1));
    let oz = typical_oz();
    let mut out = BytesMut::with_capacity(4096);
    group.bench_function("OZ", |b| {
        b.iter(|| {
            out.clear();
            Envelope {
                dialect: Dialect::V1,
                message: black_box(oz).into(),
            }
            .write_to(&mut out);
            black_box(out.len())
        })
    });
    group.bench_function("OZ shared part", |b| {
        b.iter(|| PreparedOz::new(black_box(&oz)))
    });
    let prepared = PreparedOz::new(&oz);
    group.bench_function("OZ per transaction", |b| {
        b.iter(|| {
            out.clear();
            prepared.write(Dialect::V1, black_box(b"EOSales1"), &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn framing(c: &mut Criterion) {
    let mut stream = Vec::new();
    for _ in 0..1000 {
        stream.extend_from_slice(CF);
        stream.push(0);
    }
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("decode 1000 CF frames (8-bit)", |b| {
        b.iter(|| {
            let mut codec = SdmpCodec::new(WireForm::Bits8);
            let mut buf = BytesMut::from(&stream[..]);
            let mut n = 0;
            while let Ok(Some(_)) = codec.decode(&mut buf) {
                n += 1;
            }
            black_box(n)
        })
    });
    group.finish();
}

criterion_group!(benches, parse_validate, format_oz, framing);
criterion_main!(benches);
