//! Criterion benchmarks of the codec's hot path: encode and decode of a 64-byte
//! QoS 0 / QoS 1 PUBLISH, MQTT 3.1.1 and 5.0 (`cargo bench -p ferromq-bench --bench codec`).

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use ferromq_codec::{ByteString, Packet, ProtocolVersion, Publish, QoS};

fn publish(qos: QoS) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteString::from("bench/sensors/42/temperature"),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
        properties: Default::default(),
        payload: Bytes::from(vec![0x5a; 64]),
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish");
    g.throughput(Throughput::Elements(1));
    for (name, proto) in [
        ("v311", ProtocolVersion::V3_1_1),
        ("v5", ProtocolVersion::V5),
    ] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let p = publish(qos);
            let id = format!("{name}/qos{}", qos as u8);
            g.bench_with_input(BenchmarkId::new("encode", &id), &p, |b, p| {
                let mut out = BytesMut::with_capacity(64 * 1024);
                b.iter(|| {
                    out.clear();
                    ferromq_codec::encode_publish(black_box(p), proto, &mut out).unwrap();
                })
            });
            let mut frame = BytesMut::new();
            ferromq_codec::encode_publish(&p, proto, &mut frame).unwrap();
            // 100 frames back to back, as a read buffer holds them.
            let batch: Vec<u8> = frame
                .iter()
                .copied()
                .cycle()
                .take(frame.len() * 100)
                .collect();
            g.throughput(Throughput::Elements(100));
            g.bench_with_input(BenchmarkId::new("decode100", &id), &batch, |b, batch| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&batch[..]);
                    let mut n = 0;
                    while let Some(pkt) = ferromq_codec::decode(&mut buf, proto, 1 << 20).unwrap() {
                        if let Packet::Publish(_) = pkt {
                            n += 1;
                        }
                    }
                    assert_eq!(n, 100);
                })
            });
            g.throughput(Throughput::Elements(1));
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
