//! Who archgate is to each registry: the `Authorization` header for pulling from one repository.
//!
//! Done the way the Docker client does it (distribution's `docs/spec/auth/token.md` and
//! `oauth.md`), on archgate's one HTTP client so that every request is bounded and counted:
//! - there is no separate `GET /v2/` probe: the first request to a registry is the probe, as
//!   the token spec's own flow has it ("attempt the operation; a registry that requires
//!   authorization answers 401 with a `WWW-Authenticate` challenge"). While a registry's
//!   challenge is not known, requests go anonymously at once (concurrent first lookups do not
//!   wait for each other); a 401 teaches the challenge (`Basic`, or `Bearer
//!   realm=…,service=…`), and the request is made once more with what it asks for; any other
//!   answer but a 429 or 5xx teaches "anonymous". What was learned is remembered per registry
//!   origin, and updated when a later request is answered 401 with a different challenge;
//! - credentials go only where they were asked for: Basic credentials are sent only to a
//!   registry whose challenge is `Basic`, and a token is bought only under a `Bearer` one;
//! - under a Bearer challenge, a token is asked for per (credentials, host, repository) and kept
//!   for its lifetime: `GET realm?service=S&scope=repository:R:pull` (anonymously or with Basic
//!   credentials), or, for an `identitytoken` (an OAuth2 refresh token `docker login` stores),
//!   `POST realm` with `grant_type=refresh_token` (oci-client has no such grant);
//! - the realm is the registry's to choose, so it is held to the redirect rules: no metadata
//!   address, no loopback from a remote registry, no https → http.
//!
//! Why no probe: every lookup of a first contact waited a whole round trip for it before
//! sending anything, and all but one then opened their connection only after it (BENCHMARKS.md,
//! "Cold path", has the timeline).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, Url};

use super::credentials::Auth;
use super::fetch::{Failure, Fetcher, Result, Target, check_redirect};
use super::headers::{Challenge, TokenAnswer};

/// How a request is authorised: the header value, if any.
pub type Authorization = Option<HeaderValue>;

/// Docker's client id for the refresh-token grant; registries log it, none checks it.
const CLIENT_ID: &str = "archgate";
/// A token whose lifetime is not given is kept this long (the spec's default `expires_in`).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are renewed this long before they expire, so a request never carries a dead one.
const RENEW_EARLY: Duration = Duration::from_secs(10);
/// A token is kept at most this long, whatever its endpoint says: a revoked grant should not
/// keep working in archgate for days. Registries issue minutes (Docker Hub 5) to hours.
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Bytes of a token endpoint's answer read, at most (a JWT is a few KiB).
const MAX_TOKEN_BYTES: usize = 64 << 10;

/// (credential identity, registry origin, repository)
pub type TokenKey = (super::Identity, String, String);

/// Bytes of tokens (with their keys) kept, at most: ~10,000 of the few-KiB JWTs registries
/// issue, but only 512 of the 64 KiB ones a hostile token endpoint may send, for as long as it
/// says (`expires_in` is its to choose).
pub(super) const MAX_TOKEN_CACHE_BYTES: u64 = 32 << 20;

/// A cached token's weight against [`MAX_TOKEN_CACHE_BYTES`]: its bytes and its key's, plus
/// what the entry costs whatever it holds.
pub(super) fn token_weight(key: &TokenKey, value: &(Authorization, Duration)) -> u32 {
    const ENTRY: usize = 128;
    let token = value.0.as_ref().map_or(0, HeaderValue::len);
    u32::try_from(ENTRY + key.1.len() + key.2.len() + token).unwrap_or(u32::MAX)
}

impl Fetcher {
    /// The Authorization header for pulling from `target`'s repository, given the challenge
    /// its registry is known to send (`None`: not known yet, so the request goes anonymously
    /// and its answer teaches it; see [`Fetcher::learn`]).
    pub(super) async fn authorization(
        &self,
        target: &Target<'_>,
        origin: &str,
        known: Option<&Challenge>,
    ) -> Result<Authorization> {
        if let Auth::Direct(RegistryAuth::Bearer(token)) = target.auth {
            return Ok(header(&format!("Bearer {token}")));
        }
        match known {
            Some(challenge) => self.answer(target, origin, challenge).await,
            None => Ok(None),
        }
    }

    /// A 401 came back carrying `challenge`, not the one the request answered (`answered`):
    /// remember it (this was the first contact, or the registry started asking, or moved its
    /// realm). The token the request `sent` under an old Bearer challenge is forgotten, so the
    /// next [`Fetcher::authorization`] asks afresh; one that a concurrent request has just bought
    /// under the new challenge stays.
    pub(super) async fn challenged(
        &self,
        target: &Target<'_>,
        origin: &str,
        answered: Option<&Challenge>,
        challenge: Challenge,
        sent: &Authorization,
    ) {
        self.challenges.insert(origin.to_string(), challenge).await;
        if let Some(Challenge::Bearer { .. }) = answered {
            self.refused_token(target, origin, sent).await;
        }
    }

    /// The registry refused `sent`, a token bought for the repository (under its current
    /// challenge, or under one it has since moved from): forget it, unless a concurrent request
    /// has already replaced it (that token is not the refused one).
    pub(super) async fn refused_token(
        &self,
        target: &Target<'_>,
        origin: &str,
        sent: &Authorization,
    ) {
        use moka::ops::compute::Op;
        self.tokens
            .entry(token_key(target, origin.to_string()))
            .and_compute_with(|cached| {
                let op = match cached {
                    Some(entry) if entry.value().0 == *sent => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    /// What the answer to a request sent while `origin`'s challenge was unknown says about
    /// authentication, other than a 401 (handled by [`Fetcher::challenged`]): an answer the
    /// registry gave without asking for credentials (a 2xx, a 404, a 403...) means "anonymous".
    /// A 429 or a 5xx, or no answer at all, says nothing: the next request is a first contact
    /// again. Never overwrites a challenge a concurrent request has learned meanwhile.
    pub(super) async fn learn(&self, origin: &str, answered: &Result<reqwest::Response>) {
        let anonymous = match answered {
            Ok(_) => true,
            Err(failure) => failure
                .status()
                .is_some_and(|status| !matches!(status, 401 | 429 | 500..)),
        };
        if anonymous {
            self.challenges
                .entry_by_ref(origin)
                .or_insert(Challenge::Anonymous)
                .await;
        }
    }

    /// What `challenge` asks for, with `target`'s credentials: nothing, Basic, or a token.
    async fn answer(
        &self,
        target: &Target<'_>,
        origin: &str,
        challenge: &Challenge,
    ) -> Result<Authorization> {
        match (challenge, target.auth) {
            (Challenge::Anonymous, _) => Ok(None),
            (Challenge::Basic, Auth::Direct(RegistryAuth::Basic(user, password))) => {
                Ok(basic(user, password))
            }
            (Challenge::Basic, _) => Ok(None),
            (Challenge::Bearer { realm, service }, _) => {
                let key = token_key(target, origin.to_string());
                self.tokens
                    .try_get_with(key, self.token(target, origin, realm, service.as_deref()))
                    .await
                    .map(|(authorization, _)| authorization)
                    .map_err(|e| (*e).clone())
            }
        }
    }

    /// A pull token for `target`'s repository from the realm.
    async fn token(
        &self,
        target: &Target<'_>,
        origin: &str,
        realm: &str,
        service: Option<&str>,
    ) -> Result<(Authorization, Duration)> {
        let realm_url = Url::parse(realm).map_err(|e| {
            OciDistributionError::AuthenticationFailure(format!(
                "the registry's token realm {realm:?} is not a URL: {e}"
            ))
        })?;
        let registry_url = Url::parse(&format!("{origin}/v2/"))
            .map_err(|e| OciDistributionError::UrlParseError(e.to_string()))?;
        check_redirect(&registry_url, &realm_url, &[])
            .map_err(|refused| OciDistributionError::GenericError(Some(refused.to_string())))?;
        let scope = format!("repository:{}:pull", target.reference.repository());
        let http = self.http()?;
        let request = match target.auth {
            Auth::IdentityToken(refresh_token) => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token.as_str()),
                    ("scope", scope.as_str()),
                    ("client_id", CLIENT_ID),
                ];
                if let Some(service) = service {
                    form.push(("service", service));
                }
                http.request(Method::POST, realm_url.clone()).form(&form)
            }
            Auth::Direct(auth) => {
                let mut query = vec![("scope", scope.as_str())];
                if let Some(service) = service {
                    query.push(("service", service));
                }
                let request = http.get(realm_url.clone()).query(&query);
                match auth {
                    RegistryAuth::Basic(user, password) => match basic(user, password) {
                        Some(value) => request.header(AUTHORIZATION, value),
                        None => request,
                    },
                    _ => request,
                }
            }
        };
        let response = self
            .send(target.host, request, realm_url.as_str())
            .await
            .map_err(refusal)?;
        let body = self.read(response, MAX_TOKEN_BYTES).await?;
        let (token, lifetime) = serde_json::from_slice::<TokenAnswer>(&body)
            .ok()
            .and_then(TokenAnswer::token)
            .ok_or_else(|| {
                OciDistributionError::AuthenticationFailure(
                    "the token endpoint answered without a token".into(),
                )
            })?;
        let lifetime = kept_for(lifetime, &token);
        Ok((header(&format!("Bearer {token}")), lifetime))
    }
}

/// What a token endpoint's failed answer means for the lookup. A 429 or a 5xx is about load
/// and stays what it is (rate limited, server fault), and so does no answer at all. Any other
/// answer (400, 401, 403, but also 404, 410, a 3xx left unfollowed...) is a refusal of access:
/// the image was never asked for, so it is not "not found" (which is cached as a missing tag
/// and falls under --on-missing-image), whatever status or error code the endpoint chose.
fn refusal(failure: Failure) -> Failure {
    let refused = match &*failure.error {
        OciDistributionError::ServerError { code, .. } => match code {
            429 | 500.. => None,
            400 | 401 | 403 => Some("the token endpoint refused the credentials".to_string()),
            code => Some(format!(
                "the token endpoint answered HTTP {code} instead of a token"
            )),
        },
        // Built only for statuses other than 401, 403, 404, 429 and 5xx (`fetch::failure`).
        OciDistributionError::RegistryError { .. } => {
            Some("the token endpoint refused the request".to_string())
        }
        _ => None,
    };
    match refused {
        Some(reason) => Failure::from(OciDistributionError::AuthenticationFailure(reason)),
        None => failure,
    }
}

fn token_key(target: &Target<'_>, origin: String) -> TokenKey {
    (
        target.identity,
        origin,
        target.reference.repository().to_string(),
    )
}

/// A header value marked sensitive, so no debug output or log shows it.
pub(super) fn header(value: &str) -> Authorization {
    HeaderValue::from_str(value).ok().map(|mut v| {
        v.set_sensitive(true);
        v
    })
}

fn basic(user: &str, password: &str) -> Authorization {
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    header(&format!("Basic {pair}"))
}

/// How long a token is kept: as long as its endpoint (or its JWT) says, within
/// [`MAX_LIFETIME`], renewed [`RENEW_EARLY`].
fn kept_for(stated: Option<Duration>, token: &str) -> Duration {
    stated
        .or_else(|| jwt_lifetime(token))
        .unwrap_or(DEFAULT_LIFETIME)
        .min(MAX_LIFETIME)
        .saturating_sub(RENEW_EARLY)
        .max(Duration::from_secs(1))
}

/// A JWT's `exp` from now; `None` for opaque tokens.
fn jwt_lifetime(token: &str) -> Option<Duration> {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: u64,
    }
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<Claims>(&json).ok()?.exp;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lifetimes_are_bounded() {
        // Before: `expires_in` of a year kept the token for a year.
        let year = Duration::from_secs(365 * 24 * 3600);
        assert_eq!(kept_for(Some(year), "opaque"), MAX_LIFETIME - RENEW_EARLY);
        assert_eq!(
            kept_for(Some(Duration::from_secs(300)), "opaque"),
            Duration::from_secs(290)
        );
        assert_eq!(kept_for(None, "opaque"), DEFAULT_LIFETIME - RENEW_EARLY);
        assert_eq!(
            kept_for(Some(Duration::ZERO), "opaque"),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn token_lifetimes_come_from_the_jwt() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{{\"exp\":{}}}", now + 300));
        let lifetime = jwt_lifetime(&format!("e30.{claims}.sig")).unwrap();
        assert!(lifetime <= Duration::from_secs(300) && lifetime >= Duration::from_secs(290));
        assert_eq!(jwt_lifetime("opaque"), None);
    }

    fn fetcher() -> Fetcher {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = super::super::fetch::FetchOptions {
            insecure: &[],
            ca_pem: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            manifest_redirect_hosts: &[],
            concurrency: 1,
        };
        Fetcher::new(options, std::sync::Arc::new(crate::metrics::Metrics::new())).unwrap()
    }

    fn answered(status: u16) -> Result<reqwest::Response> {
        if status < 300 {
            let response = axum::http::Response::builder()
                .status(status)
                .body(Vec::<u8>::new())
                .unwrap();
            return Ok(response.into());
        }
        Err(Failure::from(OciDistributionError::ServerError {
            code: status,
            url: "https://r.example/v2/a/manifests/1".into(),
            message: String::new(),
        }))
    }

    /// A first contact's answer teaches "anonymous" only when the registry answered without
    /// asking for credentials; a 429 or 5xx is about load, not authentication.
    #[tokio::test]
    async fn only_an_answer_given_without_asking_teaches_anonymous() {
        let origin = "https://r.example";
        for status in [200, 403, 404] {
            let fetcher = fetcher();
            fetcher.learn(origin, &answered(status)).await;
            assert_eq!(
                fetcher.challenges.get(origin).await,
                Some(Challenge::Anonymous),
                "{status}"
            );
        }
        for status in [401, 429, 500, 503] {
            let fetcher = fetcher();
            fetcher.learn(origin, &answered(status)).await;
            assert_eq!(fetcher.challenges.get(origin).await, None, "{status}");
        }
        // A challenge a concurrent first request learned stands.
        let fetcher = fetcher();
        let bearer = Challenge::Bearer {
            realm: "https://auth.example/token".into(),
            service: None,
        };
        fetcher
            .challenges
            .insert(origin.to_string(), bearer.clone())
            .await;
        fetcher.learn(origin, &answered(200)).await;
        assert_eq!(fetcher.challenges.get(origin).await, Some(bearer));
    }

    /// A moved realm forgets the token the refused request sent, not one a concurrent request
    /// has just bought under the new challenge (which would cost one more token exchange).
    #[tokio::test]
    async fn a_changed_challenge_forgets_only_the_token_that_was_refused() {
        let fetcher = fetcher();
        let origin = "https://r.example";
        let reference: oci_client::Reference = "r.example/team/app:1".parse().unwrap();
        let auth = Auth::Direct(RegistryAuth::Anonymous);
        let target = Target {
            host: "r.example",
            reference: &reference,
            auth: &auth,
            identity: 0,
        };
        let key = token_key(&target, origin.to_string());
        let bearer = |realm: &str| Challenge::Bearer {
            realm: realm.into(),
            service: None,
        };
        let (old, new) = (
            bearer("https://auth.example/old"),
            bearer("https://auth.example/new"),
        );
        let (refused, bought) = (header("Bearer old"), header("Bearer new"));
        let lifetime = Duration::from_secs(60);
        fetcher
            .tokens
            .insert(key.clone(), (bought.clone(), lifetime))
            .await;
        fetcher
            .challenged(&target, origin, Some(&old), new.clone(), &refused)
            .await;
        assert_eq!(fetcher.challenges.get(origin).await, Some(new.clone()));
        assert_eq!(
            fetcher.tokens.get(&key).await,
            Some((bought.clone(), lifetime))
        );
        // The token that was sent and refused is forgotten.
        fetcher
            .challenged(&target, origin, Some(&old), new, &bought)
            .await;
        assert_eq!(fetcher.tokens.get(&key).await, None);
    }

    /// Tokens as large as a token endpoint's answer may be never hold more than the byte
    /// budget, however long they are said to live; the cache still keeps what fits.
    #[tokio::test]
    async fn the_token_cache_is_bounded_in_bytes() {
        let fetcher = fetcher();
        let token = header(&format!("Bearer {}", "t".repeat(MAX_TOKEN_BYTES)));
        let entries = MAX_TOKEN_CACHE_BYTES / MAX_TOKEN_BYTES as u64 + 100;
        for i in 0..entries {
            let key = (0, "https://r.example".to_string(), format!("team/app{i}"));
            let forever = Duration::from_secs(u64::MAX / 4);
            fetcher.tokens.insert(key, (token.clone(), forever)).await;
        }
        fetcher.tokens.run_pending_tasks().await;
        let held: u64 = fetcher
            .tokens
            .iter()
            .map(|(_, (token, _))| token.map_or(0, |t| t.len() as u64))
            .sum();
        assert!(held <= MAX_TOKEN_CACHE_BYTES, "{held} bytes of tokens held");
        assert!(fetcher.tokens.entry_count() > 0);
    }

    /// Before: a token endpoint's 404 stayed a 404, so the image was "not found". Every answer
    /// but a 429 or a 5xx is now a refusal of access.
    #[test]
    fn a_token_endpoints_answer_is_a_refusal_unless_about_load() {
        for status in [302, 400, 401, 403, 404, 410, 418] {
            let refused = refusal(answered(status).unwrap_err());
            assert!(
                matches!(
                    *refused.error,
                    OciDistributionError::AuthenticationFailure(_)
                ),
                "{status}: {:?}",
                refused.error
            );
        }
        for status in [429, 500, 503] {
            let kept = refusal(answered(status).unwrap_err());
            assert_eq!(kept.status(), Some(status));
        }
    }

    #[test]
    fn secrets_are_sensitive_headers() {
        let value = basic("u", "p").unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "Basic dTpw");
        assert!(header("Bearer t").unwrap().is_sensitive());
    }
}
