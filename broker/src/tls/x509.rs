//! The subject Common Name of an X.509 certificate, for `use_identity_as_username`.
//!
//! Only this one field is needed, from a certificate rustls-webpki has already
//! verified, so a small DER walker does it rather than a full X.509 parser and its
//! dependency tree. It still treats its input as untrusted: every length is
//! bounds-checked and anything unexpected yields `None`, never a panic.
//!
//! ```text
//! Certificate  ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
//! TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
//!                               issuer, validity, subject, ... }
//! Name ::= SEQUENCE OF SET OF SEQUENCE { type OBJECT IDENTIFIER, value ANY }
//! ```
//! Like Mosquitto (`X509_NAME_get_index_by_NID(.., NID_commonName, -1)`), the first
//! CN attribute wins.

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const CONTEXT_0: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// One DER element: (tag, contents, the bytes after it).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers do not occur in the fields walked here
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed value's contents.
fn elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, contents, rest) = element(input)?;
        input = rest;
        Some((tag, contents))
    })
}

/// The first subject CN of a DER certificate, if it has one in a string type.
pub fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    let (tag, cert, _) = element(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut fields = elements(tbs).peekable();
    if fields.peek().is_some_and(|&(tag, _)| tag == CONTEXT_0) {
        fields.next();
    }
    // serialNumber, signature, issuer, validity, then subject.
    let (tag, subject) = fields.nth(4)?;
    if tag != SEQUENCE {
        return None;
    }
    elements(subject)
        .filter(|&(tag, _)| tag == SET)
        .flat_map(|(_, set)| elements(set))
        .filter(|&(tag, _)| tag == SEQUENCE)
        .find_map(|(_, attribute)| {
            let mut parts = elements(attribute);
            let (tag, oid) = parts.next()?;
            if tag != OID || oid != COMMON_NAME {
                return None;
            }
            let (tag, value) = parts.next()?;
            directory_string(tag, value)
        })
}

/// DirectoryString and IA5String values as text.
fn directory_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, TeletexString (in practice ASCII)
        0x0c | 0x13 | 0x16 | 0x14 => String::from_utf8(value.to_vec()).ok(),
        // BMPString: UTF-16 big-endian
        0x1e => {
            if !value.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn cert_with(dn: rcgen::DistinguishedName) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = dn;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn finds_the_common_name_among_other_attributes() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Acme Sensors");
        dn.push(rcgen::DnType::CommonName, "sensor-42");
        dn.push(rcgen::DnType::OrganizationalUnitName, "fleet");
        assert_eq!(
            subject_common_name(&cert_with(dn)).as_deref(),
            Some("sensor-42")
        );
    }

    #[test]
    fn non_ascii_and_printable_strings() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CommonName,
            rcgen::DnValue::PrintableString("device 7".try_into().unwrap()),
        );
        assert_eq!(
            subject_common_name(&cert_with(dn)).as_deref(),
            Some("device 7")
        );
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "Gerät-ü");
        assert_eq!(
            subject_common_name(&cert_with(dn)).as_deref(),
            Some("Gerät-ü")
        );
    }

    #[test]
    fn no_common_name_is_none() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::OrganizationName, "Acme");
        assert_eq!(subject_common_name(&cert_with(dn)), None);
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(subject_common_name(&[0x30, 0x82, 0xff]), None);
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = subject_common_name(&bytes);
        }

        #[test]
        fn never_panics_on_a_damaged_certificate(flip in 0usize..400, byte in any::<u8>()) {
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::CommonName, "x");
            let mut der = cert_with(dn);
            let i = flip % der.len();
            der[i] = byte;
            let _ = subject_common_name(&der);
        }
    }
}
