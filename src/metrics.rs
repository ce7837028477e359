//! Prometheus metrics, all prefixed `archgate_`, with bounded label values only: no object, image
//! or registry names (one series per image would grow without bound in a busy cluster).

use std::time::Duration;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Warned,
    Denied,
    Audited,
    Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    pub decision: Decision,
    /// CREATE, UPDATE, DELETE, CONNECT: a closed set from the API server.
    pub operation: &'static str,
}

/// What the mutating webhook did with a Pod: `steered`, or why it was left alone
/// ([`crate::placement::Leave::label`], a closed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MutationLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub cache: CacheResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    ClientError,
    ServerError,
    /// No HTTP answer: connection refused, reset, timeout.
    Transport,
}

impl StatusClass {
    /// The class of an HTTP status.
    pub fn of(status: u16) -> Self {
        match status {
            500.. => Self::ServerError,
            400..500 => Self::ClientError,
            _ => Self::Success,
        }
    }
}

/// One registry host, for the rate-limit gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub registry: String,
}

/// Registries with rate-limit gauges, at most: the label is a host a registry reference
/// names, so an unbounded set would let anyone who can create pods grow `/metrics`. Past it the
/// host heard from longest ago makes room, so hosts named first cannot keep docker.io out.
pub const MAX_RATE_LIMITED_HOSTS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub status: StatusClass,
}

/// Label values are lower-case words, as Prometheus conventions expect.
macro_rules! label_values {
    ($ty:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(match self {
                    $(Self::$variant => $text,)*
                })
            }
        }
    };
}

label_values!(Decision { Allowed => "allowed", Warned => "warned", Denied => "denied", Audited => "audited", Error => "error" });
label_values!(CacheResult { Hit => "hit", Miss => "miss" });
label_values!(StatusClass { Success => "2xx", ClientError => "4xx", ServerError => "5xx", Transport => "transport" });

/// Every metric archgate exports.
pub struct Metrics {
    registry: Registry,
    pub reviews: Family<ReviewLabels, Counter>,
    pub review_seconds: Histogram,
    /// Pods reviewed by `POST /mutate` (placement mode), by outcome.
    pub mutations: Family<MutationLabels, Counter>,
    /// `lookups{cache="hit"}` and `lookups{cache="miss"}`, taken out of their family once: a
    /// review counts three lookups or so, and the family's lock and label hash were a visible
    /// part of a warm one.
    lookup_hits: Counter,
    lookup_misses: Counter,
    pub registry_requests: Family<RegistryLabels, Counter>,
    pub registry_seconds: Histogram,
    /// 1 while the cluster view (nodes, namespaces, ...) is being served from a lost watch.
    pub cluster_stale: Gauge,
    /// Docker Hub's `RateLimit-Remaining`/`RateLimit-Limit`, by registry host.
    pub rate_limit_remaining: Family<HostLabels, Gauge>,
    pub rate_limit_limit: Family<HostLabels, Gauge>,
    /// Each host with gauges, by when its headers were last seen (a count of observations).
    rate_limited_hosts: std::sync::Mutex<(u64, std::collections::HashMap<String, u64>)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("archgate");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "reviews",
            "Admission reviews answered, by decision",
            reviews.clone(),
        );
        // Admission must stay well under the API server's timeout: buckets from 100 µs to 10 s.
        let review_seconds = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "review_duration_seconds",
            "Time to answer one review",
            review_seconds.clone(),
        );
        let mutations = Family::<MutationLabels, Counter>::default();
        registry.register(
            "mutations",
            "Pods reviewed in placement mode, by outcome: steered (node affinity added) or why left alone",
            mutations.clone(),
        );
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "lookups",
            "Image platform lookups, by cache result",
            lookups.clone(),
        );
        let registry_requests = Family::<RegistryLabels, Counter>::default();
        registry.register(
            "registry_requests",
            "Requests sent to image registries and their token endpoints (version probes, tokens, manifests, blobs), by status class",
            registry_requests.clone(),
        );
        let registry_seconds = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "registry_request_duration_seconds",
            "Latency of registry requests",
            registry_seconds.clone(),
        );
        registry.register(
            "build",
            "The running archgate's version (always 1)",
            prometheus_client::metrics::info::Info::new(vec![(
                "version",
                env!("CARGO_PKG_VERSION"),
            )]),
        );
        let cluster_stale = Gauge::default();
        registry.register(
            "cluster_view_stale",
            "1 while a watch on the API server is failing and the last known state is used",
            cluster_stale.clone(),
        );
        let rate_limit_remaining = Family::<HostLabels, Gauge>::default();
        registry.register(
            "registry_ratelimit_remaining",
            "Pulls left in the registry's window, from its last RateLimit-Remaining header",
            rate_limit_remaining.clone(),
        );
        let rate_limit_limit = Family::<HostLabels, Gauge>::default();
        registry.register(
            "registry_ratelimit_limit",
            "Pulls allowed per window, from the registry's last RateLimit-Limit header",
            rate_limit_limit.clone(),
        );
        Self {
            registry,
            reviews,
            review_seconds,
            mutations,
            // `_owned`: the guard `get_or_create` returns would hold the family's lock to the
            // end of this statement, and the second call would wait on it for ever.
            lookup_hits: lookups.get_or_create_owned(&LookupLabels {
                cache: CacheResult::Hit,
            }),
            lookup_misses: lookups.get_or_create_owned(&LookupLabels {
                cache: CacheResult::Miss,
            }),
            registry_requests,
            registry_seconds,
            cluster_stale,
            rate_limit_remaining,
            rate_limit_limit,
            rate_limited_hosts: Default::default(),
        }
    }

    /// A registry's rate-limit headers. Past [`MAX_RATE_LIMITED_HOSTS`] hosts, the one whose
    /// headers came longest ago loses its gauges.
    pub fn observe_rate_limit(&self, host: &str, limit: Option<u64>, remaining: u64) {
        // Held while the gauges are set, so an eviction cannot interleave and leave more.
        let mut guard = self
            .rate_limited_hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (clock, hosts) = &mut *guard;
        *clock += 1;
        if !hosts.contains_key(host) && hosts.len() >= MAX_RATE_LIMITED_HOSTS {
            let oldest = hosts
                .iter()
                .min_by_key(|(_, seen)| **seen)
                .map(|(h, _)| h.clone());
            if let Some(oldest) = oldest {
                hosts.remove(&oldest);
                let labels = HostLabels { registry: oldest };
                self.rate_limit_remaining.remove(&labels);
                self.rate_limit_limit.remove(&labels);
            }
        }
        hosts.insert(host.to_string(), *clock);
        let labels = HostLabels {
            registry: host.to_string(),
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.rate_limit_remaining
            .get_or_create(&labels)
            .set(gauge(remaining));
        if let Some(limit) = limit {
            self.rate_limit_limit
                .get_or_create(&labels)
                .set(gauge(limit));
        }
    }

    pub fn observe_registry(&self, status: StatusClass, took: Duration) {
        self.registry_requests
            .get_or_create(&RegistryLabels { status })
            .inc();
        self.registry_seconds.observe(took.as_secs_f64());
    }

    pub fn observe_lookup(&self, cache: CacheResult) {
        match cache {
            CacheResult::Hit => self.lookup_hits.inc(),
            CacheResult::Miss => self.lookup_misses.inc(),
        };
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before: the first 64 hosts to send rate-limit headers kept their gauges for good, so
    /// anyone who could name 64 registries first kept docker.io's out of `/metrics`.
    #[test]
    fn rate_limit_gauges_go_to_the_hosts_heard_from_last() {
        let metrics = Metrics::new();
        for i in 0..MAX_RATE_LIMITED_HOSTS {
            metrics.observe_rate_limit(&format!("attacker-{i}.example"), Some(100), 1);
        }
        metrics.observe_rate_limit("docker.io", Some(100), 75);
        let text = metrics.encode();
        assert!(
            text.contains("archgate_registry_ratelimit_remaining{registry=\"docker.io\"} 75"),
            "{text}"
        );
        // attacker-0 was heard from longest ago: its gauges made room.
        assert!(!text.contains("attacker-0.example"), "{text}");
        assert!(text.contains("attacker-1.example"), "{text}");
        let series = text
            .lines()
            .filter(|l| l.starts_with("archgate_registry_ratelimit_remaining{"))
            .count();
        assert_eq!(series, MAX_RATE_LIMITED_HOSTS);
    }
}
