//! Test certificates, generated at test time with rcgen (never committed).
//!
//! [`TestCerts::generate`] writes a small PKI as PEM files into a directory, for the
//! Rust tests and, through the `gen-test-certs OUTDIR` binary, the Python tests:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the test CA |
//! | `server.pem`, `server.key` | server certificate for `localhost`, `127.0.0.1`, `::1`, signed by the CA |
//! | `client.pem`, `client.key` | client certificate, CN `sensor-1`, signed by the CA |
//! | `client2.pem`, `client2.key` | client certificate, CN `sensor-2`, signed by the CA |
//! | `expired.pem`, `expired.key` | client certificate, CN `expired-client`, signed by the CA, expired in 2021 |
//! | `other-ca.pem`, `other-ca.key` | a second, unrelated CA |
//! | `other-client.pem`, `other-client.key` | client certificate, CN `intruder`, signed by the other CA |
//! | `other-server.pem`, `other-server.key` | server certificate for the same names, signed by the other CA (certificate rotation tests) |
//! | `selfsigned.pem`, `selfsigned.key` | self-signed client certificate, CN `sensor-1` |
//!
//! Keys are ECDSA P-256 (PKCS#8). Validity of the good certificates: one day ago to
//! 30 days ahead.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// CN of `client.pem`.
pub const CLIENT_CN: &str = "sensor-1";
/// CN of `client2.pem`.
pub const CLIENT2_CN: &str = "sensor-2";

/// The generated files' directory, with a path helper per file.
#[derive(Debug, Clone)]
pub struct TestCerts {
    pub dir: PathBuf,
}

fn now_offset(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ferromq tests");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca(cn: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now_offset(-1);
    params.not_after = now_offset(3650);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A leaf certificate's parameters.
fn leaf(cn: &str, server: bool) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    if server {
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
    }
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now_offset(-1);
    params.not_after = now_offset(30);
    Ok(params)
}

fn write(dir: &Path, name: &str, cert_pem: &str, key: &KeyPair) -> anyhow::Result<()> {
    std::fs::write(dir.join(format!("{name}.pem")), cert_pem)?;
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    Ok(())
}

fn signed(
    dir: &Path,
    name: &str,
    params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> anyhow::Result<()> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write(dir, name, &cert.pem(), &key)
}

impl TestCerts {
    /// Generates every file into `dir` (created if missing).
    ///
    /// # Errors
    /// An I/O or rcgen error.
    pub fn generate(dir: &Path) -> anyhow::Result<TestCerts> {
        std::fs::create_dir_all(dir)?;
        let ca1 = ca("ferromq test CA")?;
        let ca2 = ca("unrelated test CA")?;
        std::fs::write(dir.join("ca.pem"), ca1.pem())?;
        std::fs::write(dir.join("other-ca.pem"), ca2.pem())?;

        signed(dir, "server", leaf("localhost", true)?, &ca1)?;
        signed(dir, "other-server", leaf("localhost", true)?, &ca2)?;
        signed(dir, "client", leaf(CLIENT_CN, false)?, &ca1)?;
        signed(dir, "client2", leaf(CLIENT2_CN, false)?, &ca1)?;
        signed(dir, "other-client", leaf("intruder", false)?, &ca2)?;
        let mut expired = leaf("expired-client", false)?;
        expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
        expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
        signed(dir, "expired", expired, &ca1)?;

        let key = KeyPair::generate()?;
        let cert = leaf(CLIENT_CN, false)?.self_signed(&key)?;
        write(dir, "selfsigned", &cert.pem(), &key)?;
        Ok(TestCerts {
            dir: dir.to_path_buf(),
        })
    }

    /// `<dir>/<name>.pem`.
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// `<dir>/<name>.key`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
}
