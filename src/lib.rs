//! archgate: an admission webhook that denies pods whose images lack a platform the pod could be
//! scheduled on, so "exec format error" surfaces at `kubectl apply` instead of in a crash loop.
//!
//! Data flows one way: request → [`workload`] (targets) → [`scheduling`] (candidate platforms) →
//! [`resolver`] (platforms per image, cached) → [`policy`] (verdict) → response. The webhook
//! ([`serve`], [`admission`], [`server`]) and the CLI ([`check`]) are thin doors onto [`review`].
#![forbid(unsafe_code)]

pub mod admission;
pub mod bundles;
pub mod certs;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod platform;
pub mod policy;
pub mod preflight;
pub mod reference;
pub mod resolver;
pub mod review;
pub mod scheduling;
pub mod serve;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod workload;

/// `archgate certs`: writes the CA, serving certificate and caBundle for the webhook Service.
pub fn run_certs(args: &cli::CertsArgs) -> i32 {
    let names = certs::service_names(&args.service, &args.namespace);
    match certs::generate(&names).and_then(|b| certs::write(&b, &args.out_dir)) {
        Ok(()) => {
            println!(
                "wrote ca.crt, tls.crt, tls.key and ca-bundle.b64 to {} for {}",
                args.out_dir.display(),
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
