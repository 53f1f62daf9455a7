//! Property tests: every valid packet survives encode -> decode unchanged for its
//! version, `encoded_len` and `check` agree with the bytes written, the PUBLISH hot path
//! writes the same bytes as the generic encoder, and every proper prefix of a valid
//! encoding decodes as "incomplete" (never an error).
#![allow(clippy::unwrap_used)]

mod common;

use bytes::BytesMut;
use common::*;
use ferromq_codec::*;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn round_trip(v: ProtocolVersion, p: Packet) -> Result<(), TestCaseError> {
    let mut out = BytesMut::new();
    encode(&p, v, &mut out).unwrap();
    let len = out.len();
    prop_assert_eq!(encoded_len(&p, v).unwrap(), len);

    let info = check(&out, len).unwrap().unwrap();
    prop_assert_eq!(info.frame_len(), len);
    prop_assert_eq!(
        check(&out, len - 1),
        Err(DecodeError::PacketTooLarge {
            size: len,
            max: len - 1
        })
    );

    // Decoding with the version the packet was encoded for (CONNECT carries its own).
    let decoded = decode(&mut out, v, len).unwrap().unwrap();
    prop_assert!(out.is_empty());
    prop_assert_eq!(decoded, p);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2048,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn round_trip_v3_1(p in packet(ProtocolVersion::V3_1)) {
        round_trip(ProtocolVersion::V3_1, p)?;
    }

    #[test]
    fn round_trip_v3_1_1(p in packet(ProtocolVersion::V3_1_1)) {
        round_trip(ProtocolVersion::V3_1_1, p)?;
    }

    #[test]
    fn round_trip_v5(p in packet(ProtocolVersion::V5)) {
        round_trip(ProtocolVersion::V5, p)?;
    }

    /// The fan-out hot path writes exactly what the generic encoder writes.
    #[test]
    fn encode_publish_matches_encode((v, p) in prop_oneof![
        publish(ProtocolVersion::V3_1_1).prop_map(|p| (ProtocolVersion::V3_1_1, p)),
        publish(ProtocolVersion::V5).prop_map(|p| (ProtocolVersion::V5, p)),
    ]) {
        let mut fast = BytesMut::new();
        encode_publish(&p, v, &mut fast).unwrap();
        prop_assert_eq!(publish_encoded_len(&p, v).unwrap(), fast.len());
        let packet = Packet::Publish(p);
        prop_assert_eq!(&fast[..], &encode_vec(&packet, v)[..]);
    }

    /// Every proper prefix of a valid frame is "incomplete", never an error, and leaves
    /// the buffer untouched.
    #[test]
    fn prefixes_are_incomplete((v, p) in versioned_packet()) {
        let bytes = encode_vec(&p, v);
        let full = check(&bytes, MAX).unwrap().unwrap();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            match check(&buf, MAX) {
                Ok(None) => prop_assert!(cut < full.header_len),
                Ok(Some(info)) => {
                    prop_assert_eq!(info, full);
                    prop_assert!(!info.is_complete(cut));
                }
                Err(e) => prop_assert!(false, "check error {:?} on a prefix of {} bytes", e, cut),
            }
            prop_assert_eq!(decode(&mut buf, v, MAX), Ok(None), "prefix of {} bytes", cut);
            prop_assert_eq!(buf.len(), cut);
        }
    }

    /// Several frames in one buffer decode one by one, in order.
    #[test]
    fn back_to_back_frames((v, a) in versioned_packet(), b in any::<u8>()) {
        let second = Packet::PubAck(PubResp { packet_id: u16::from(b) + 1, ..Default::default() });
        let mut buf = BytesMut::new();
        encode(&a, v, &mut buf).unwrap();
        encode(&second, v, &mut buf).unwrap();
        prop_assert_eq!(decode(&mut buf, v, MAX).unwrap(), Some(a));
        prop_assert_eq!(decode(&mut buf, v, MAX).unwrap(), Some(second));
        prop_assert_eq!(decode(&mut buf, v, MAX).unwrap(), None);
    }
}

/// Payloads are cut from the read buffer, not copied.
#[test]
fn publish_payload_is_zero_copy() {
    let mut buf = BytesMut::from(&frame(0x30, &cat(&[&s("a/b"), b"payload"]))[..]);
    let base = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, ProtocolVersion::V3_1_1, MAX).unwrap() else {
        panic!("expected PUBLISH");
    };
    assert_eq!(&p.payload[..], b"payload");
    assert_eq!(p.payload.as_ptr() as usize, base + 2 + 5);
    assert_eq!(p.topic.as_ptr() as usize, base + 2 + 2);
}
