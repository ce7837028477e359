//! Who archgate is to each registry: the `Authorization` header for pulling from one repository.
//!
//! Done the way the Docker client does it (distribution's `docs/spec/auth/token.md` and
//! `oauth.md`), on archgate's one HTTP client so that every request is bounded and counted:
//! - a registry host is probed with `GET /v2/` once per process; its answer (no challenge,
//!   `Basic`, or `Bearer realm=…,service=…`) is remembered, and updated if a later request is
//!   answered 401 with a different challenge;
//! - under a Bearer challenge, a token is asked for per (credentials, host, repository) and kept
//!   for its lifetime: `GET realm?service=S&scope=repository:R:pull` (anonymously or with Basic
//!   credentials), or, for an `identitytoken` (an OAuth2 refresh token `docker login` stores),
//!   `POST realm` with `grant_type=refresh_token` (oci-client has no such grant);
//! - the realm is the registry's to choose, so it is held to the redirect rules: no metadata
//!   address, no loopback from a remote registry, no https → http.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use reqwest::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
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
/// Bytes of a token endpoint's answer read, at most (a JWT is a few KiB).
const MAX_TOKEN_BYTES: usize = 64 << 10;

/// (credential identity, registry origin, repository)
pub type TokenKey = (super::Identity, String, String);

impl Fetcher {
    /// The Authorization header for pulling from `target`'s repository.
    pub(super) async fn authorization(&self, target: &Target<'_>) -> Result<Authorization> {
        if let Auth::Direct(RegistryAuth::Bearer(token)) = target.auth {
            return Ok(header(&format!("Bearer {token}")));
        }
        let origin = self.origin(target.reference);
        let challenge = self
            .challenges
            .try_get_with_by_ref(&origin, self.probe(target, &origin))
            .await
            .map_err(|e| (*e).clone())?;
        self.answer(target, &origin, &challenge).await
    }

    /// A 401 came back: remember the challenge it carried (the registry may have started
    /// asking, or a token died early) and forget the token, so the next
    /// [`Fetcher::authorization`] asks afresh.
    pub(super) async fn challenged(&self, target: &Target<'_>, challenge: Challenge) {
        let origin = self.origin(target.reference);
        self.challenges.insert(origin.clone(), challenge).await;
        self.tokens.invalidate(&token_key(target, origin)).await;
    }

    /// `GET /v2/`: how the host wants to be authenticated.
    async fn probe(&self, target: &Target<'_>, origin: &str) -> Result<Challenge> {
        let url = format!("{origin}/v2/");
        let challenge = match self.send(target.host, self.http()?.get(&url), &url).await {
            Ok(response) => response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse),
            // A 429 or 5xx says nothing about authentication: the lookup fails with it.
            Err(failure) if matches!(failure.status(), Some(429 | 500..)) => return Err(failure),
            Err(failure) if failure.status().is_some() => failure.challenge,
            Err(failure) => return Err(failure),
        };
        // Any answer without a challenge (200, or a 404 from a registry without the version
        // check) means "ask without credentials"; a refusal then says what is wrong.
        Ok(challenge.unwrap_or(Challenge::Anonymous))
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
        let probe_url = Url::parse(&format!("{origin}/v2/"))
            .map_err(|e| OciDistributionError::UrlParseError(e.to_string()))?;
        check_redirect(&probe_url, &realm_url, &[])
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
            .map_err(|failure| match failure.status() {
                // The token endpoint said no to these credentials.
                Some(400 | 401 | 403) => {
                    Failure::from(OciDistributionError::AuthenticationFailure(
                        "the token endpoint refused the credentials".into(),
                    ))
                }
                _ => failure,
            })?;
        let body = self.read(response, MAX_TOKEN_BYTES).await?;
        let (token, lifetime) = serde_json::from_slice::<TokenAnswer>(&body)
            .ok()
            .and_then(TokenAnswer::token)
            .ok_or_else(|| {
                OciDistributionError::AuthenticationFailure(
                    "the token endpoint answered without a token".into(),
                )
            })?;
        let lifetime = lifetime
            .or_else(|| jwt_lifetime(&token))
            .unwrap_or(DEFAULT_LIFETIME)
            .saturating_sub(RENEW_EARLY)
            .max(Duration::from_secs(1));
        Ok((header(&format!("Bearer {token}")), lifetime))
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

    #[test]
    fn secrets_are_sensitive_headers() {
        let value = basic("u", "p").unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "Basic dTpw");
        assert!(header("Bearer t").unwrap().is_sensitive());
    }
}
