//! Identity tokens: the OAuth2 refresh tokens `docker login` stores as `identitytoken`.
//!
//! oci-client has no refresh-token grant, so archgate does what the Docker client does
//! (distribution's `docs/spec/auth/oauth.md`): read the token realm and service from the
//! registry's `WWW-Authenticate: Bearer` challenge, then
//! `POST realm` with `grant_type=refresh_token&refresh_token=T&service=S&scope=repository:R:pull`.
//! The access token it returns covers one repository for `expires_in` seconds; it is cached per
//! (credential identity, host, repository) and handed to oci-client as a bearer token.

use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use serde::Deserialize;

use super::ResolveError;
use super::credentials::Identity;

/// Docker's client id; registries log it, none checks it.
const CLIENT_ID: &str = "archgate";
/// Tokens are renewed this long before they expire, so a request never carries a dead one.
const RENEW_EARLY: Duration = Duration::from_secs(10);
/// `expires_in` is optional in the spec; its default is 60 seconds.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

type Key = (Identity, String, String);

#[derive(Clone)]
struct AccessToken {
    token: String,
    lifetime: Duration,
}

struct Lifetime;

impl Expiry<Key, AccessToken> for Lifetime {
    fn expire_after_create(&self, _: &Key, value: &AccessToken, _: Instant) -> Option<Duration> {
        Some(
            value
                .lifetime
                .saturating_sub(RENEW_EARLY)
                .max(Duration::from_secs(1)),
        )
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Exchanges identity tokens for per-repository access tokens, and remembers them.
pub struct AccessTokens {
    http: reqwest::Client,
    cache: Cache<Key, AccessToken>,
}

impl AccessTokens {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            cache: Cache::builder()
                .max_capacity(10_000)
                .expire_after(Lifetime)
                .build(),
        }
    }

    /// An access token for pulling `repository` from `host` (reached over `scheme`).
    pub async fn get(
        &self,
        scheme: &str,
        host: &str,
        repository: &str,
        refresh_token: &str,
        identity: Identity,
    ) -> Result<String, ResolveError> {
        let key = (identity, host.to_string(), repository.to_string());
        let fetched = self
            .cache
            .try_get_with(key, self.exchange(scheme, host, repository, refresh_token))
            .await
            .map_err(|e| (*e).clone())?;
        Ok(fetched.token)
    }

    async fn exchange(
        &self,
        scheme: &str,
        host: &str,
        repository: &str,
        refresh_token: &str,
    ) -> Result<AccessToken, ResolveError> {
        let unreachable = |reason: String| ResolveError::Unreachable {
            registry: host.to_string(),
            reason,
        };
        let refused = || ResolveError::Unauthorized {
            registry: host.to_string(),
        };
        let ping = self
            .http
            .get(format!("{scheme}://{host}/v2/"))
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let challenge = ping
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(BearerChallenge::parse)
            .ok_or_else(|| {
                unreachable("an identity token needs a registry with token auth, and this one sent no Bearer challenge".into())
            })?;
        let scope = format!("repository:{repository}:pull");
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("scope", scope.as_str()),
            ("client_id", CLIENT_ID),
        ];
        if let Some(service) = challenge.service.as_deref() {
            form.push(("service", service));
        }
        let answer = self
            .http
            .post(&challenge.realm)
            .form(&form)
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = answer.status();
        if status.is_client_error() {
            return Err(refused());
        }
        if !status.is_success() {
            return Err(unreachable(format!(
                "token endpoint answered HTTP {}",
                status.as_u16()
            )));
        }
        let body: TokenResponse = answer
            .json()
            .await
            .map_err(|e| unreachable(format!("token endpoint answer: {e}")))?;
        let token = body
            .access_token
            .or(body.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(refused)?;
        let lifetime = body
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        Ok(AccessToken { token, lifetime })
    }
}

/// `Bearer realm="https://auth.example/token",service="registry.example"`.
#[derive(Debug, PartialEq, Eq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

impl BearerChallenge {
    fn parse(header: &str) -> Option<Self> {
        let rest = header.trim();
        let (scheme, params) = rest.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut realm = None;
        let mut service = None;
        for (key, value) in params_of(params) {
            match key.to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value),
                "service" => service = Some(value),
                _ => {}
            }
        }
        Some(Self {
            realm: realm.filter(|r| !r.is_empty())?,
            service,
        })
    }
}

/// `k="v",k2="v, with comma",k3=bare` → pairs; quotes may hold commas.
fn params_of(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (quoted[..end].to_string(), &quoted[end + 1..]),
                None => (quoted.to_string(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_string(), &after[end..]),
                None => (after.trim().to_string(), ""),
            }
        };
        out.push((key, value));
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = BearerChallenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.docker.io/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        let bare = BearerChallenge::parse("bearer realm=http://127.0.0.1:1/t").unwrap();
        assert_eq!(bare.realm, "http://127.0.0.1:1/t");
        assert_eq!(bare.service, None);
        assert!(BearerChallenge::parse(r#"Basic realm="x""#).is_none());
        assert!(BearerChallenge::parse("Bearer service=\"x\"").is_none());
        assert!(BearerChallenge::parse("").is_none());
    }
}
