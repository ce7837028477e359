//! Certificates archgate makes itself: a CA and a serving certificate (rcgen).
//!
//! Used by `serve --self-signed` (a newcomer's first run, no files needed) and by
//! `archgate certs` (the self-signed install overlay, where the CA becomes the webhook's caBundle).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

/// A CA and a serving certificate signed by it, all PEM.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn current_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

/// Makes a CA (valid 10 years) and a serving certificate (valid 1 year) for `names`.
/// Names that parse as IP addresses become IP SANs.
pub fn generate(names: &[String]) -> Result<Bundle, CertsError> {
    let year = current_year();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "archgate CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = date_time_ymd(year - 1, 1, 1);
    ca.not_after = date_time_ymd(year + 10, 1, 1);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("archgate"),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = date_time_ymd(year - 1, 1, 1);
    leaf.not_after = date_time_ymd(year + 1, 12, 31);
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Bundle {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The DNS names the API server uses for a Service: `svc`, `svc.ns`, `svc.ns.svc`, and the
/// cluster-local FQDN.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Writes `ca.crt`, `tls.crt`, `tls.key` and `ca-bundle.b64` (the webhook's `caBundle` value).
/// Private keys are created 0600 (owner only); certificates 0644.
pub fn write(bundle: &Bundle, dir: &Path) -> Result<(), CertsError> {
    let write = |name: &str, contents: &str| write_file(&dir.join(name), contents, 0o644);
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    write("ca.crt", &bundle.ca_pem)?;
    write("tls.crt", &bundle.cert_pem)?;
    write_file(&dir.join("tls.key"), &bundle.key_pem, 0o600)?;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&bundle.ca_pem);
    write("ca-bundle.b64", &format!("{ca_bundle}\n"))
}

/// Writes `contents` to `path` with permission bits `mode`. A file that already exists gets
/// its mode set before the new contents go in, so a key is never readable by others, not even
/// for a moment.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertsError> {
    use std::io::Write;
    let failed = |source| CertsError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(mode);
        let file = options.open(path).map_err(failed)?;
        // `mode` only applies when the file is created (and the umask may narrow it).
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(failed)?;
        (&file).write_all(contents.as_bytes()).map_err(failed)
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        let mut file = options.open(path).map_err(failed)?;
        file.write_all(contents.as_bytes()).map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn keys_are_owner_only_even_over_an_existing_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A key left world-readable by an older version must not stay so.
        std::fs::write(dir.path().join("tls.key"), "old").unwrap();
        std::fs::set_permissions(
            dir.path().join("tls.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let bundle = generate(&["archgate.archgate.svc".into()]).unwrap();
        write(&bundle, dir.path()).unwrap();
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("tls.key"), 0o600);
        assert_eq!(mode("tls.crt"), 0o644);
        assert_eq!(mode("ca.crt"), 0o644);
        let key = std::fs::read_to_string(dir.path().join("tls.key")).unwrap();
        assert!(
            key.contains("PRIVATE KEY"),
            "the old contents were replaced"
        );
    }
}
