//! `gen-test-certs OUTDIR`: writes the test PKI of `ferromq_tests::certs` into OUTDIR
//! (the Python tests call it; see `tests/python/conftest.py`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: gen-test-certs OUTDIR");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    match ferromq_tests::certs::TestCerts::generate(&dir) {
        Ok(_) => {
            println!("{}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-test-certs: {e}");
            ExitCode::FAILURE
        }
    }
}
