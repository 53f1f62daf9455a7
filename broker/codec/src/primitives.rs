//! Wire primitives: varints, u16-prefixed strings and binary data.
//!
//! Two halves, mirrored so decode and encode cannot drift apart:
//! - [`Reader`]: a cursor over one complete frame body held as [`Bytes`]. Strings and
//!   binary fields are cut out with `split_to` (a refcount bump, no copy), which is how
//!   topics and payloads stay zero-copy. Every read is bounds-checked; running off the
//!   end is [`DecodeError::Malformed`], never a panic.
//! - [`Sink`]: the encoder writes through this trait twice, once into a [`Counter`] to
//!   learn the remaining length (and validate field lengths), then into a `BytesMut`.
//!   One body function per packet therefore serves `encode` and `encoded_len`.
//!
//! Layout: varint helpers, `Reader`, `Sink` + `Counter` + `impl Sink for BytesMut`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::{DecodeError, EncodeError};

/// Largest value a Variable Byte Integer can carry (4 bytes) [MQTT-1.5.5-1].
pub(crate) const MAX_VARINT: usize = 268_435_455;

const TRUNCATED: DecodeError = DecodeError::Malformed("truncated field");

/// Number of bytes the Variable Byte Integer encoding of `v` takes (1..=4).
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Outcome of parsing a varint at the front of a slice.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Varint {
    /// `(value, bytes used)`.
    Complete(usize, usize),
    /// More bytes are needed.
    Incomplete,
    /// A fifth byte would be needed: never valid [MQTT-1.5.5-1].
    TooLong,
}

/// Parses a Variable Byte Integer without consuming anything or allocating.
/// Non-minimal encodings (e.g. `0x80 0x00`) are accepted, as most brokers do.
pub(crate) fn parse_varint(buf: &[u8]) -> Varint {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Varint::Incomplete;
        };
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Varint::Complete(value, i + 1);
        }
    }
    Varint::TooLong
}

/// Cursor over one complete frame body (or a sub-slice of it, e.g. a property block).
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u32())
    }

    /// A Variable Byte Integer inside the body (property length, Subscription Identifier).
    pub(crate) fn varint(&mut self) -> Result<usize, DecodeError> {
        match parse_varint(&self.buf) {
            Varint::Complete(v, used) => {
                self.buf.advance(used);
                Ok(v)
            }
            Varint::Incomplete => Err(TRUNCATED),
            Varint::TooLong => Err(DecodeError::Malformed("variable byte integer over 4 bytes")),
        }
    }

    /// Cuts the next `n` bytes off as a new reader (zero-copy).
    pub(crate) fn split(&mut self, n: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(n)?))
    }

    /// The next `n` bytes (zero-copy).
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(TRUNCATED);
        }
        Ok(self.buf.split_to(n))
    }

    /// Binary Data: two-byte length, then the bytes [MQTT-1.5.6].
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// UTF-8 Encoded String: well-formed UTF-8 without U+0000 [MQTT-1.5.4-1]
    /// [MQTT-1.5.4-2]. Rust's UTF-8 validation also rejects encoded surrogates.
    pub(crate) fn string(&mut self) -> Result<ByteString, DecodeError> {
        let raw = self.binary()?;
        if raw.contains(&0) {
            return Err(DecodeError::InvalidUtf8);
        }
        ByteString::try_from(raw).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Everything left (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// The frame must be consumed exactly: trailing bytes are malformed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("trailing bytes after packet"))
        }
    }
}

/// Destination of the encoder: a [`Counter`] (length pass) or a `BytesMut` (write pass).
pub(crate) trait Sink {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn raw(&mut self, b: &[u8]);
    /// Writes `v` as a Variable Byte Integer; values over 268,435,455 cannot be encoded.
    fn varint(&mut self, v: usize) -> Result<(), EncodeError>;

    /// Binary Data: two-byte length prefix, at most 65,535 bytes.
    fn binary(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong(b.len()))?;
        self.u16(len);
        self.raw(b);
        Ok(())
    }

    /// UTF-8 Encoded String (already valid UTF-8 by type).
    fn string(&mut self, s: &str) -> Result<(), EncodeError> {
        self.binary(s.as_bytes())
    }
}

/// Length pass of the encoder: counts bytes, writes nothing.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    pub(crate) len: usize,
}

impl Sink for Counter {
    fn u8(&mut self, _: u8) {
        self.len += 1;
    }
    fn u16(&mut self, _: u16) {
        self.len += 2;
    }
    fn u32(&mut self, _: u32) {
        self.len += 4;
    }
    fn raw(&mut self, b: &[u8]) {
        self.len += b.len();
    }
    fn varint(&mut self, v: usize) -> Result<(), EncodeError> {
        if v > MAX_VARINT {
            return Err(EncodeError::PacketTooLarge);
        }
        self.len += varint_len(v);
        Ok(())
    }
}

impl Sink for BytesMut {
    fn u8(&mut self, v: u8) {
        self.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.put_u32(v);
    }
    fn raw(&mut self, b: &[u8]) {
        self.put_slice(b);
    }
    fn varint(&mut self, v: usize) -> Result<(), EncodeError> {
        if v > MAX_VARINT {
            return Err(EncodeError::PacketTooLarge);
        }
        let mut v = v;
        loop {
            // Truncation is the point: the low 7 bits, then the continuation bit.
            let mut byte = (v & 0x7F) as u8;
            v >>= 7;
            if v > 0 {
                byte |= 0x80;
            }
            self.put_u8(byte);
            if v == 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Largest string / binary field: a two-byte length prefix [MQTT-1.5.4-1].
    const MAX_FIELD: usize = 65_535;

    #[test]
    fn varint_boundaries_round_trip() {
        for v in [
            0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_VARINT,
        ] {
            let mut out = BytesMut::new();
            out.varint(v).unwrap();
            assert_eq!(out.len(), varint_len(v), "len of {v}");
            assert_eq!(parse_varint(&out), Varint::Complete(v, out.len()));
            for cut in 0..out.len() {
                assert_eq!(parse_varint(&out[..cut]), Varint::Incomplete);
            }
        }
        assert_eq!(
            BytesMut::new().varint(MAX_VARINT + 1),
            Err(EncodeError::PacketTooLarge)
        );
    }

    /// [MQTT-1.5.5-1]: at most four bytes.
    #[test]
    fn varint_of_five_bytes_is_too_long() {
        assert_eq!(
            parse_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Varint::TooLong
        );
        assert_eq!(parse_varint(&[0x80, 0x80, 0x80, 0x80]), Varint::TooLong);
    }

    /// [MQTT-1.5.4-1] [MQTT-1.5.4-2]
    #[test]
    fn strings_reject_bad_utf8_and_nul() {
        let mut r = Reader::new(Bytes::from_static(&[0, 2, b'a', 0]));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        // U+D800 encoded as UTF-8 (a surrogate) is not well-formed.
        let mut r = Reader::new(Bytes::from_static(&[0, 3, 0xED, 0xA0, 0x80]));
        assert_eq!(r.string(), Err(DecodeError::InvalidUtf8));
        let mut r = Reader::new(Bytes::from_static(&[0, 3, b'a', b'/', b'b']));
        assert_eq!(r.string().unwrap(), "a/b");
        assert!(r.finish().is_ok());
    }

    #[test]
    fn truncated_reads_are_malformed() {
        let mut r = Reader::new(Bytes::from_static(&[0, 5, b'a']));
        assert_eq!(r.string(), Err(TRUNCATED));
        let mut r = Reader::new(Bytes::from_static(&[1]));
        assert_eq!(r.u16(), Err(TRUNCATED));
        let mut r = Reader::new(Bytes::from_static(&[1, 2, 3]));
        assert_eq!(r.u32(), Err(TRUNCATED));
    }

    #[test]
    fn field_longer_than_u16_is_rejected() {
        let big = vec![b'x'; MAX_FIELD + 1];
        assert_eq!(
            Counter::default().binary(&big),
            Err(EncodeError::FieldTooLong(MAX_FIELD + 1))
        );
        let ok = vec![b'x'; MAX_FIELD];
        let mut c = Counter::default();
        c.binary(&ok).unwrap();
        assert_eq!(c.len, MAX_FIELD + 2);
    }
}
