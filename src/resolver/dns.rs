//! Registry host names to addresses: the system resolver, bounded.
//!
//! Names go to the system resolver (`getaddrinfo` on tokio's blocking pool), so nsswitch,
//! `/etc/hosts`, the pod's search list and `ndots` apply exactly as for every other program in
//! the pod; an in-process DNS client (hickory) would read `resolv.conf` its own way. What the
//! plain call lacks is a bound: a thread running `getaddrinfo` cannot be stopped, so a review
//! naming hundreds of hosts whose DNS never answers took a blocking thread for each until its
//! resolver timeout (tokio allows 512, then queues without limit), and the real registry's
//! lookup waited behind them. So:
//! - at most [`LOOKUPS`] run at once; each holds its turn until `getaddrinfo` returns, so a
//!   lookup dropped by its caller (the connect timeout, the review deadline) never lets another
//!   thread start early;
//! - a name that resolved in the last [`KNOWN_FOR`] takes turns of its own ([`KNOWN_LOOKUPS`]):
//!   names that never answer cannot keep a working registry's name waiting;
//! - waiting for a turn is an ordinary future, dropped with its caller (reqwest's connect
//!   timeout covers the lookup);
//! - addresses archgate never fetches from ([`super::fetch::forbidden`]) are dropped, so a
//!   name pointing at a metadata service is refused before connecting;
//! - loopback addresses are dropped unless the name is a loopback name (`localhost`): the
//!   redirect rule keeps a registry elsewhere from sending archgate to its own host by address,
//!   and a name of the registry's choosing that resolves to 127.0.0.1 would get past it. In the
//!   cluster a name never legitimately leads there (archgate's loopback is its own pod, not the
//!   node the kubelet pulls on); a registry on this host is named as such.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::fetch::{forbidden, is_loopback_name};

/// Lookups of names not resolved lately, running at once.
pub const LOOKUPS: usize = 32;
/// Lookups of names resolved lately, running at once beside [`LOOKUPS`].
pub const KNOWN_LOOKUPS: usize = 16;
/// How long a name that resolved counts as known.
pub const KNOWN_FOR: Duration = Duration::from_secs(600);
/// Known names remembered, at most; the one resolved longest ago makes room.
const MAX_KNOWN_NAMES: usize = 1024;

/// A name's addresses, as the system resolver finds them (blocking).
type Lookup = dyn Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync;

/// The resolver reqwest asks (`ClientBuilder::dns_resolver`); clones share their turns.
#[derive(Clone)]
pub struct GuardedDns {
    lookup: Arc<Lookup>,
    fresh: Arc<Semaphore>,
    known: Arc<Semaphore>,
    /// Name → when it last resolved to an address archgate may use.
    resolved: Arc<Mutex<HashMap<String, Instant>>>,
    /// Names besides loopback names that may resolve to loopback: none outside tests, which
    /// need a registry on 127.0.0.1 that counts as elsewhere.
    loopback_aliases: Arc<[String]>,
}

/// Why a name's addresses are not used.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error(
        "{0} resolves only to link-local or metadata addresses; archgate does not connect there"
    )]
    Metadata(String),
    #[error(
        "{0} resolves only to loopback addresses, which archgate reaches only by a loopback name (localhost, 127.0.0.1, [::1]): a name leading there could be a registry sending archgate to its own host"
    )]
    Loopback(String),
}

impl GuardedDns {
    /// The system resolver.
    pub fn system() -> Self {
        Self::with_lookup(Arc::new(|name: &str| {
            Ok((name, 0).to_socket_addrs()?.collect())
        }))
    }

    /// The bounds around another blocking lookup (tests stand in for `getaddrinfo` with one
    /// that blocks for as long as they choose; no DNS server can be pointed at from a test
    /// without editing the machine's `/etc/resolv.conf`).
    pub(crate) fn with_lookup(lookup: Arc<Lookup>) -> Self {
        Self {
            lookup,
            fresh: Arc::new(Semaphore::new(LOOKUPS)),
            known: Arc::new(Semaphore::new(KNOWN_LOOKUPS)),
            resolved: Arc::default(),
            loopback_aliases: Arc::new([]),
        }
    }

    /// This resolver, letting `names` resolve to loopback as if they were loopback names.
    #[cfg(test)]
    pub(crate) fn with_loopback_aliases(mut self, names: &[&str]) -> Self {
        self.loopback_aliases = names.iter().map(|n| n.to_string()).collect();
        self
    }

    /// `host`'s addresses archgate may connect to (port 0: the URL's port is used).
    pub async fn addresses(&self, host: String) -> io::Result<Vec<SocketAddr>> {
        let lane = if self.is_known(&host) {
            &self.known
        } else {
            &self.fresh
        };
        // Never closed.
        let turn = lane
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let lookup = self.lookup.clone();
        let name = host.clone();
        let found = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            lookup(&name)
        })
        .await
        .map_err(io::Error::other)??;
        let loopback_name = is_loopback_name(&host) || self.loopback_aliases.contains(&host);
        let loopback = |a: &SocketAddr| a.ip().to_canonical().is_loopback();
        let allowed: Vec<SocketAddr> = found
            .iter()
            .copied()
            .filter(|a| !forbidden(a.ip()) && (loopback_name || !loopback(a)))
            .collect();
        if allowed.is_empty() && !found.is_empty() {
            let why = if found.iter().any(loopback) {
                Unusable::Loopback(host)
            } else {
                Unusable::Metadata(host)
            };
            return Err(io::Error::other(why));
        }
        if !allowed.is_empty() {
            self.remember(host);
        }
        Ok(allowed)
    }

    fn is_known(&self, host: &str) -> bool {
        let resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved
            .get(host)
            .is_some_and(|at| at.elapsed() < KNOWN_FOR)
    }

    fn remember(&self, host: String) {
        let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        if resolved.len() >= MAX_KNOWN_NAMES && !resolved.contains_key(&host) {
            let oldest = resolved
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(h, _)| h.clone());
            if let Some(oldest) = oldest {
                resolved.remove(&oldest);
            }
        }
        resolved.insert(host, Instant::now());
    }
}

impl reqwest::dns::Resolve for GuardedDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let allowed = dns.addresses(host).await?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stand-in for `getaddrinfo`: names starting `stall` block until the gate opens; the
    /// rest answer 192.0.2.1 (TEST-NET-1) at once. Counts the lookups running and the most
    /// seen at once.
    #[derive(Default)]
    struct Stalling {
        open: Mutex<bool>,
        opened: Condvar,
        running: AtomicUsize,
        most: AtomicUsize,
    }

    impl Stalling {
        fn lookup(self: &Arc<Self>) -> Arc<Lookup> {
            let this = self.clone();
            Arc::new(move |name: &str| {
                let now = this.running.fetch_add(1, Ordering::SeqCst) + 1;
                this.most.fetch_max(now, Ordering::SeqCst);
                if name.starts_with("stall") {
                    let open = this.open.lock().unwrap();
                    drop(this.opened.wait_while(open, |open| !*open).unwrap());
                }
                this.running.fetch_sub(1, Ordering::SeqCst);
                Ok(vec![SocketAddr::from(([192, 0, 2, 1], 0))])
            })
        }

        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn names_that_never_resolve_hold_a_bounded_number_of_threads() {
        let stalling = Arc::new(Stalling::default());
        // A failed assertion must not leave 32 threads blocked: the runtime waits for them.
        struct OpenOnDrop(Arc<Stalling>);
        impl Drop for OpenOnDrop {
            fn drop(&mut self) {
                self.0.open();
            }
        }
        let _open = OpenOnDrop(stalling.clone());
        let dns = GuardedDns::with_lookup(stalling.lookup());
        dns.addresses("registry.example".into()).await.unwrap();

        // 300 names whose DNS never answers, each given up by its caller after 20 ms.
        let mut gave_up = tokio::task::JoinSet::new();
        for i in 0..300 {
            let dns = dns.clone();
            gave_up.spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(20),
                    dns.addresses(format!("stall-{i}")),
                )
                .await
                .is_err()
            });
        }
        while let Some(timed_out) = gave_up.join_next().await {
            assert!(timed_out.unwrap(), "a stalled lookup answered");
        }
        // Every caller is gone; the threads they started are not, and no more were started.
        assert_eq!(stalling.running.load(Ordering::SeqCst), LOOKUPS);
        assert_eq!(stalling.most.load(Ordering::SeqCst), LOOKUPS);

        // The registry that resolved before still resolves; a new name waits its turn.
        let known = tokio::time::timeout(
            Duration::from_secs(30),
            dns.addresses("registry.example".into()),
        )
        .await;
        assert!(matches!(known, Ok(Ok(ref a)) if !a.is_empty()), "{known:?}");
        let fresh = tokio::time::timeout(
            Duration::from_millis(100),
            dns.addresses("new.example".into()),
        )
        .await;
        assert!(
            fresh.is_err(),
            "a new name got a turn while every turn was held"
        );

        stalling.open();
        let fresh =
            tokio::time::timeout(Duration::from_secs(30), dns.addresses("new.example".into()))
                .await;
        assert!(matches!(fresh, Ok(Ok(_))), "{fresh:?}");
        assert!(stalling.most.load(Ordering::SeqCst) <= LOOKUPS + KNOWN_LOOKUPS);
    }

    /// A lookup answering each name with the addresses `ips` gives for it.
    fn answering(ips: fn(&str) -> &'static [&'static str]) -> Arc<Lookup> {
        Arc::new(move |name: &str| {
            Ok(ips(name)
                .iter()
                .map(|ip| SocketAddr::new(ip.parse().unwrap(), 0))
                .collect())
        })
    }

    #[tokio::test]
    async fn forbidden_addresses_are_dropped_and_a_name_with_only_those_is_refused() {
        let dns = GuardedDns::with_lookup(answering(|name| match name {
            "metadata.example" => &["169.254.169.254", "fe80::1"],
            _ => &["169.254.169.254", "10.0.0.7"],
        }));
        let mixed = dns.addresses("mixed.example".into()).await.unwrap();
        assert_eq!(mixed, [SocketAddr::from(([10, 0, 0, 7], 0))]);
        let refused = dns.addresses("metadata.example".into()).await.unwrap_err();
        assert!(
            refused.to_string().contains("link-local or metadata"),
            "{refused}"
        );
        assert!(!dns.is_known("metadata.example") && dns.is_known("mixed.example"));
    }

    #[tokio::test]
    async fn only_loopback_names_resolve_to_loopback() {
        let dns = GuardedDns::with_lookup(answering(|name| match name {
            "mixed.example" => &["127.0.0.1", "10.0.0.7"],
            _ => &["127.0.0.1", "::1", "::ffff:127.0.0.2"],
        }));
        let mixed = dns.addresses("mixed.example".into()).await.unwrap();
        assert_eq!(mixed, [SocketAddr::from(([10, 0, 0, 7], 0))]);
        let refused = dns.addresses("rebind.example".into()).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("rebind.example resolves only to loopback addresses"),
            "{refused}"
        );
        for name in ["localhost", "registry.localhost", "LocalHost."] {
            let found = dns.addresses(name.into()).await.unwrap();
            assert_eq!(found.len(), 3, "{name}: {found:?}");
        }
    }

    #[tokio::test]
    async fn the_system_resolver_reads_the_hosts_file() {
        let found = GuardedDns::system()
            .addresses("localhost".into())
            .await
            .unwrap();
        assert!(found.iter().any(|a| a.ip().is_loopback()), "{found:?}");
    }

    #[test]
    fn known_names_are_bounded() {
        let dns = GuardedDns::with_lookup(Arc::new(|_: &str| Ok(vec![])));
        for i in 0..MAX_KNOWN_NAMES + 10 {
            dns.remember(format!("host-{i}"));
        }
        let resolved = dns.resolved.lock().unwrap();
        assert_eq!(resolved.len(), MAX_KNOWN_NAMES);
        assert!(resolved.contains_key(&format!("host-{}", MAX_KNOWN_NAMES + 9)));
    }
}
