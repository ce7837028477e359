//! `archgate certs`: the certificate it writes verifies, with the CA it writes, for every name a
//! webhook may be reached by: the Service's DNS names, `--dns-name` and `--ip` (issue 12: a
//! webhook registered with `url: https://127.0.0.1:PORT` failed TLS for lack of an IP SAN).

use std::process::Command;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

fn verifies(dir: &std::path::Path, name: &str) -> bool {
    let ca = CertificateDer::from_pem_file(dir.join("ca.crt")).unwrap();
    let leaf = CertificateDer::from_pem_file(dir.join("tls.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let server = ServerName::try_from(name.to_string()).unwrap();
    verifier
        .verify_server_cert(&leaf, &[], &server, &[], UnixTime::now())
        .is_ok()
}

#[test]
fn extra_dns_names_and_ips_are_in_the_serving_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_archgate"))
        .args(["certs", "--service", "gate", "--namespace", "ops"])
        .args([
            "--dns-name",
            "webhook.example.test",
            "--dns-name",
            "gate.local",
        ])
        .args(["--ip", "127.0.0.1", "--ip", "::1"])
        .arg("--out-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("gate.ops.svc, gate.ops.svc.cluster.local, webhook.example.test, gate.local, 127.0.0.1, ::1"),
        "{stdout}"
    );
    for name in [
        "gate.ops.svc",
        "webhook.example.test",
        "gate.local",
        "127.0.0.1",
        "::1",
    ] {
        assert!(verifies(dir.path(), name), "{name} not in the certificate");
    }
    for name in ["127.0.0.2", "other.example.test", "archgate.archgate.svc"] {
        assert!(!verifies(dir.path(), name), "{name} unexpectedly verifies");
    }
}

#[test]
fn an_address_that_is_not_an_ip_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_archgate"))
        .args(["certs", "--ip", "localhost", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'localhost' for '--ip <ADDR>'"),
        "{stderr}"
    );
    assert!(!dir.path().join("tls.crt").exists());
}
