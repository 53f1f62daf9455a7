//! Fuzz-style property test: arbitrary and mutated inputs through `check` and `decode`
//! for every protocol version must never panic. Each input is decoded in a loop until
//! an error or "incomplete", as a connection would.
//!
//! Inputs mix: raw random bytes (0..4096), short random bytes, a valid fixed header over
//! a random body (reaches the body parsers far more often than raw noise), and valid
//! encodings mutated by byte flips, truncation, extension and splicing.
//!
//! `FERROMQ_FUZZ_CASES` sets the number of inputs (default 20,000); the count actually
//! run is printed to stderr. For long runs: `FERROMQ_FUZZ_CASES=1000000 cargo test
//! --release -p ferromq-codec --test fuzz -- --nocapture`.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use common::*;
use ferromq_codec::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, xor: u8 },
    Set { at: usize, value: u8 },
    Truncate { at: usize },
    Extend(Vec<u8>),
    Remove { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::Extend),
        1 => any::<usize>().prop_map(|at| Mutation::Remove { at }),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: Vec<Mutation>) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip { at, xor } => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b ^= xor;
                }
            }
            Mutation::Set { at, value } => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b = value;
                }
            }
            Mutation::Truncate { at } => bytes.truncate(at % len),
            Mutation::Extend(extra) => bytes.extend(extra),
            Mutation::Remove { at } => {
                if !bytes.is_empty() {
                    bytes.remove(at % len);
                }
            }
        }
    }
    bytes
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (versioned_packet(), vec(mutation(), 1..4))
        .prop_map(|((v, p), m)| apply(encode_vec(&p, v), m));
    let spliced = (versioned_packet(), versioned_packet(), any::<usize>()).prop_map(
        |((va, a), (vb, b), cut)| {
            let a = encode_vec(&a, va);
            let mut out = a[..cut % (a.len() + 1)].to_vec();
            out.extend(encode_vec(&b, vb));
            out
        },
    );
    let header_over_noise =
        (any::<u8>(), vec(any::<u8>(), 0..128)).prop_map(|(first, body)| frame(first, &body));
    prop_oneof![
        2 => vec(any::<u8>(), 0..4096),
        2 => vec(any::<u8>(), 0..32),
        3 => header_over_noise,
        6 => mutated,
        1 => spliced,
    ]
}

/// Decodes `bytes` with every version and a couple of size limits, looping like a
/// connection until an error or an incomplete frame. Panics are the failure mode.
/// Returns (frames decoded, decode errors) for the statistics line.
fn run(bytes: &[u8]) -> (usize, usize) {
    let (mut decoded, mut errors) = (0, 0);
    for v in VERSIONS {
        for max in [MAX, 64] {
            let _ = check(bytes, max);
            let mut buf = BytesMut::from(bytes);
            let mut frames = 0usize;
            loop {
                let packet = match decode(&mut buf, v, max) {
                    Ok(Some(packet)) => packet,
                    Ok(None) => break,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                };
                frames += 1;
                decoded += 1;
                // Whatever decodes re-encodes, and decodes back to the same value (the
                // encoding is canonical; the codec is its own client).
                let mut out = BytesMut::new();
                encode(&packet, v, &mut out).unwrap();
                assert_eq!(encoded_len(&packet, v).unwrap(), out.len());
                assert_eq!(decode(&mut out, v, MAX).unwrap(), Some(packet));
                assert!(frames <= bytes.len(), "decode made no progress");
            }
        }
    }
    (decoded, errors)
}

#[test]
fn fuzz_check_and_decode_never_panic() {
    let cases: u32 = std::env::var("FERROMQ_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let count = AtomicUsize::new(0);
    let decoded = AtomicUsize::new(0);
    let errors = AtomicUsize::new(0);
    let result = runner.run(&input(), |bytes| {
        count.fetch_add(1, Ordering::Relaxed);
        let (d, e) = run(&bytes);
        decoded.fetch_add(d, Ordering::Relaxed);
        errors.fetch_add(e, Ordering::Relaxed);
        Ok(())
    });
    eprintln!(
        "codec fuzz: {} inputs, each through check/decode for {} versions x 2 size limits \
         ({} frames decoded, {} decode errors)",
        count.load(Ordering::Relaxed),
        VERSIONS.len(),
        decoded.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
    );
    result.unwrap();
}
