//! archgate: an admission webhook that denies pods whose images lack a platform the pod could be
//! scheduled on, so "exec format error" surfaces at `kubectl apply` instead of in a crash loop.
//!
//! One pipeline, three front doors. The webhook ([`admission`], served by [`server`] and
//! [`serve`]), the CLI ([`check`]) and the cluster scan ([`scan`]) each turn their input into a [`subject::Subject`] (the kind decided once,
//! by API group and kind) and run [`pipeline::Pipeline::review`]: extraction ([`workload`]) →
//! reference completion (the [`cluster`] catalog, [`bundles`]) → candidate platforms
//! ([`scheduling`]) → resolution ([`resolver`], cached) → checked targets, on which [`policy`]
//! decides and words the verdict. Data flows one way; ARCHITECTURE.md has the map.
#![forbid(unsafe_code)]

pub mod admission;
pub mod bundles;
pub mod certs;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod mutation;
pub mod pipeline;
pub mod placement;
pub mod platform;
pub mod policy;
pub mod preflight;
pub mod reference;
pub mod resolver;
pub mod scan;
pub mod scheduling;
pub mod serve;
pub mod server;
pub mod subject;
pub mod telemetry;
pub mod tls;
pub mod workload;
pub mod yaml;

/// `archgate certs`: writes the CA, serving certificate and caBundle for the webhook Service.
pub fn run_certs(args: &cli::CertsArgs) -> i32 {
    let cli::CertsArgs {
        service,
        namespace,
        out_dir,
        dns_names,
        ips,
    } = args;
    let mut names = certs::service_names(service, namespace);
    names.extend(dns_names.iter().cloned());
    // rcgen makes a name that parses as an IP address an IP SAN.
    names.extend(ips.iter().map(ToString::to_string));
    match certs::generate(&names).and_then(|b| certs::write(&b, out_dir)) {
        Ok(()) => {
            println!(
                "wrote ca.crt, tls.crt, tls.key and ca-bundle.b64 to {} for {}",
                out_dir.display(),
                names.join(", ")
            );
            0
        }
        Err(e) => {
            eprintln!("archgate certs: {e}");
            check::EXIT_TROUBLE
        }
    }
}
