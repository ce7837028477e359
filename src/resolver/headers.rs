//! What archgate reads from a registry's response headers: how it wants to be authenticated
//! (`WWW-Authenticate`), how long to leave it alone (`Retry-After`), and how much of its pull
//! allowance is left (`RateLimit-Limit`/`RateLimit-Remaining`, Docker Hub's).
//!
//! Hand-written: each is a few lines over a header a registry controls, and the crates that
//! parse `WWW-Authenticate` in general (`www-authenticate`) pull in a hyper 0.14 stack.

use std::time::{Duration, SystemTime};

/// How a registry wants requests authenticated, learned once per host from the answer to the
/// first request sent to it (or from a later 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// No challenge: requests go without credentials.
    Anonymous,
    /// `Basic realm=...`: credentials go with every request.
    Basic,
    /// `Bearer realm=...,service=...`: credentials (or nothing) buy a token per repository
    /// at `realm` (distribution's `docs/spec/auth/token.md`).
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// The challenge in a `WWW-Authenticate` value; `None` for a scheme archgate does not
    /// speak, or a Bearer challenge without a realm.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, params) = header
            .split_once(char::is_whitespace)
            .unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Self::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut realm = None;
        let mut service = None;
        for (key, value) in params_of(params) {
            let is = |name: &str| key.eq_ignore_ascii_case(name);
            if (is("realm") || is("service") || is("scope"))
                && value.len() > MAX_CHALLENGE_PARAM_BYTES
            {
                return None;
            }
            if is("realm") {
                realm = Some(value);
            } else if is("service") {
                service = Some(value);
            }
        }
        Some(Self::Bearer {
            realm: realm.filter(|r| !r.is_empty())?.to_string(),
            service: service.map(str::to_string),
        })
    }
}

/// Parameters past this many are ignored: a challenge has two or three.
const MAX_PARAMS: usize = 16;

/// Bytes of a challenge's `realm`, `service` or `scope`, at most. Real ones are a URL, a host
/// name and a repository scope (Docker Hub's realm is 30 bytes); a challenge is remembered per
/// registry host, and a header may be ~400 KB, so past this the challenge is unreadable: not
/// remembered, and the 401 that carried it is the answer (under `onRegistryError`).
pub const MAX_CHALLENGE_PARAM_BYTES: usize = 1024;

/// `k="v",k2="v, with comma",k3=bare` → pairs, borrowed from the header (nothing is copied
/// before its length is checked); quotes may hold commas.
fn params_of(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() && out.len() < MAX_PARAMS {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim(), &after[end..]),
                None => (after.trim(), ""),
            }
        };
        out.push((key, value));
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// A `Retry-After` longer than this is cut to it: the registry controls the header, and a
/// registry paused for a day would turn every cold lookup into "not checked" for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3), at most [`MAX_RETRY_AFTER`];
/// `None` when absent, unreadable, or already past.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .ok()?,
    };
    (!wait.is_zero()).then(|| wait.min(MAX_RETRY_AFTER))
}

/// The count in a `RateLimit-Limit`/`RateLimit-Remaining` value: Docker Hub sends `100;w=21600`
/// (100 pulls per 21,600-second window).
pub fn rate_limit_count(value: &str) -> Option<u64> {
    value.split(';').next()?.trim().parse().ok()
}

/// An access token endpoint's answer (`token` or, OAuth2 style, `access_token`).
#[derive(Debug, serde::Deserialize)]
pub struct TokenAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenAnswer {
    /// The token, unless empty.
    pub fn token(self) -> Option<(String, Option<Duration>)> {
        let lifetime = self.expires_in.map(Duration::from_secs);
        self.token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))
            .map(|token| (token, lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            Challenge::parse("bearer realm=http://127.0.0.1:1/t"),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: None
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Basic"), Some(Challenge::Basic));
        assert_eq!(Challenge::parse("Bearer service=\"x\""), None);
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse(""), None);
        let many = format!("Bearer {}realm=\"late\"", "k=v,".repeat(100));
        assert_eq!(Challenge::parse(&many), None, "parameters are bounded");
    }

    /// A realm, service or scope past its bound makes the challenge unreadable (never
    /// remembered); one at the bound, or another parameter past it, does not.
    #[test]
    fn challenge_parameters_are_bounded() {
        let at = "a".repeat(MAX_CHALLENGE_PARAM_BYTES - "https://x/".len());
        let past = "a".repeat(MAX_CHALLENGE_PARAM_BYTES + 1);
        let bearer = |params: String| Challenge::parse(&format!("Bearer {params}"));
        assert_eq!(
            bearer(format!(
                r#"realm="https://x/{at}",service="s",other="{past}""#
            )),
            Some(Challenge::Bearer {
                realm: format!("https://x/{at}"),
                service: Some("s".into()),
            })
        );
        for params in [
            format!(r#"realm="https://x/{past}",service="s""#),
            format!(r#"realm="https://x/t",service="{past}""#),
            format!(r#"realm="https://x/t",Scope="repository:{past}:pull""#),
            format!("realm=https://x/{past}"),
            format!(r#"realm="https://x/t",service="{}""#, "s".repeat(400_000)),
        ] {
            assert!(bearer(params.clone()).is_none(), "{params:.60}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_784_000_000);
        assert_eq!(retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(" 0 ", now), None);
        assert_eq!(retry_after("999999999", now), Some(MAX_RETRY_AFTER));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(120)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(120));
        assert_eq!(retry_after(&earlier, now), None);
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn docker_hub_rate_limit_headers() {
        assert_eq!(rate_limit_count("100;w=21600"), Some(100));
        assert_eq!(rate_limit_count(" 76 ; w=21600"), Some(76));
        assert_eq!(rate_limit_count("0"), Some(0));
        assert_eq!(rate_limit_count("lots"), None);
    }

    #[test]
    fn token_answers() {
        let parse = |s: &str| serde_json::from_str::<TokenAnswer>(s).unwrap().token();
        assert_eq!(
            parse(r#"{"token":"t","expires_in":300}"#),
            Some(("t".into(), Some(Duration::from_secs(300))))
        );
        assert_eq!(parse(r#"{"access_token":"a"}"#), Some(("a".into(), None)));
        assert_eq!(
            parse(r#"{"token":"","access_token":"a"}"#),
            Some(("a".into(), None))
        );
        assert_eq!(parse(r#"{}"#), None);
    }
}
