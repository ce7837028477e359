//! The pipeline both front doors share: extracted targets → candidate platforms → resolutions
//! (parallel, deduplicated, within a deadline) → checked targets for the policy.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::policy::{Checked, Outcome};
use crate::reference::ImageRef;
use crate::resolver::{Credentials, Resolution, ResolveError, Resolver};
use crate::scheduling::{self, NodeView};
use crate::workload::Target;

/// A cached answer that would deny is asked again unless it is younger than this: the tag may
/// have just been rebuilt (`docker buildx build --push`) for the missing platform.
pub const RECHECK_AFTER: Duration = Duration::from_secs(5);

/// Distinct images looked up for one object, at most. Real pods name a handful and the largest
/// pipeline runs a few hundred; an object naming more is an attack on the deadline and on
/// memory. Images past the bound are "not checked" (a registry error for the policy, so
/// `--on-registry-error` decides), and the review still answers within its deadline.
pub const MAX_IMAGES_PER_REVIEW: usize = 1000;

/// Targets (containers, steps) checked for one object, at most. Past it, the first target over
/// the bound stands for all the rest with one "too large to check" finding, so neither the
/// lookups nor the verdict grow with the object (60,000 containers fit in a 4 MiB body).
pub const MAX_TARGETS_PER_REVIEW: usize = 2000;

/// Cold lookups one review runs at once; each holds a registry request's worth of memory, so
/// this (not the object's size) bounds a review's memory. Cache hits finish at once either way.
pub const LOOKUPS_PER_REVIEW: usize = 64;

/// Glob patterns of images that are never checked (`registry.k8s.io/*`).
#[derive(Debug, Clone, Default)]
pub struct Exemptions {
    patterns: Vec<String>,
}

impl Exemptions {
    pub fn new(patterns: Vec<String>) -> Self {
        Self { patterns }
    }

    /// Matches the image as written and its canonical form (`nginx` is `docker.io/library/nginx`).
    pub fn covers(&self, written: &str, canonical: Option<&str>) -> bool {
        self.patterns
            .iter()
            .any(|p| glob(p, written) || canonical.is_some_and(|c| glob(p, c)))
    }
}

/// `*` matches any run of characters (including `/`), `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Resolves every target's image once, in parallel, and pairs each with its candidate platforms.
pub async fn check(
    targets: Vec<Target>,
    nodes: &[NodeView],
    resolver: &Resolver,
    credentials: &Credentials,
    exemptions: &Exemptions,
    deadline: Instant,
) -> Vec<Checked> {
    let mut images: HashMap<ImageRef, Vec<crate::platform::Platform>> = HashMap::new();
    let mut pending = Vec::new();
    let mut targets = targets;
    let overflow = if targets.len() > MAX_TARGETS_PER_REVIEW {
        targets.truncate(MAX_TARGETS_PER_REVIEW + 1);
        targets.pop()
    } else {
        None
    };
    for target in targets {
        let candidates = scheduling::candidates(&target.placement, nodes);
        let parsed = ImageRef::parse(&target.image);
        if let Ok(image) = &parsed
            && exemptions.covers(image.written(), Some(&image.canonical()))
        {
            continue;
        }
        if let (Ok(image), None) = (&parsed, &target.known_platforms)
            && (images.len() < MAX_IMAGES_PER_REVIEW || images.contains_key(image))
        {
            images
                .entry(image.clone())
                .or_default()
                .extend(candidates.iter().cloned());
        }
        pending.push((target, candidates, parsed));
    }

    // Collected first: a stream holding the mapping closure trips the compiler's `Send`
    // inference (rust-lang/rust#102211) once the handler is spawned. The futures are lazy;
    // at most `LOOKUPS_PER_REVIEW` run (and hold requests) at once.
    let lookups: Vec<BoxFuture<'_, _>> = images
        .iter()
        .map(|(image, needed)| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let outcome = resolve_within(image, needed, resolver, credentials, deadline).await;
                (image.clone(), outcome)
            })
        })
        .collect();
    let resolved: HashMap<ImageRef, Result<Resolution, ResolveError>> =
        futures::stream::iter(lookups)
            .buffer_unordered(LOOKUPS_PER_REVIEW)
            .collect()
            .await;

    let mut checked: Vec<Checked> = pending
        .into_iter()
        .map(|(target, candidates, parsed)| {
            let outcome = match (parsed, &target.known_platforms) {
                (Err(e), _) => Outcome::Invalid(e),
                (Ok(_), Some(known)) => Outcome::Resolved(Resolution {
                    digest: String::new(),
                    platforms: known.clone().into(),
                }),
                (Ok(image), None) => match resolved.get(&image) {
                    Some(Ok(r)) => Outcome::Resolved(r.clone()),
                    Some(Err(e)) => Outcome::Failed(e.clone()),
                    None => Outcome::Failed(ResolveError::TooLarge {
                        registry: image.registry().to_string(),
                        limit: MAX_IMAGES_PER_REVIEW,
                        counted: "distinct images",
                    }),
                },
            };
            Checked {
                target,
                candidates,
                outcome,
            }
        })
        .collect();
    if let Some(target) = overflow {
        let candidates = scheduling::candidates(&target.placement, nodes);
        let registry = ImageRef::parse(&target.image)
            .map(|i| i.registry().to_string())
            .unwrap_or_default();
        // First, so that its finding leads the warnings and the denial.
        checked.insert(
            0,
            Checked {
                target,
                candidates,
                outcome: Outcome::Failed(ResolveError::TooLarge {
                    registry,
                    limit: MAX_TARGETS_PER_REVIEW,
                    counted: "images",
                }),
            },
        );
    }
    checked
}

/// One image: the cached answer, re-asked once if it would deny and is not fresh.
async fn resolve_within(
    image: &ImageRef,
    needed: &[crate::platform::Platform],
    resolver: &Resolver,
    credentials: &Credentials,
    deadline: Instant,
) -> Result<Resolution, ResolveError> {
    let timeout = || ResolveError::Timeout {
        registry: image.registry().to_string(),
    };
    let first = tokio::time::timeout_at(deadline, resolver.resolve(image, credentials))
        .await
        .map_err(|_| timeout())?;
    let would_deny = match &first {
        Ok(r) => needed
            .iter()
            .any(|need| !r.platforms.iter().any(|have| have.satisfies(need))),
        Err(e) => e.is_not_found(),
    };
    if !would_deny {
        return first;
    }
    match resolver.tag_age(image, credentials).await {
        Some(age) if age > RECHECK_AFTER => {
            tokio::time::timeout_at(deadline, resolver.refresh(image, credentials))
                .await
                .unwrap_or(first)
        }
        _ => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        let cases = [
            ("registry.k8s.io/*", "registry.k8s.io/pause:3.9", true),
            ("registry.k8s.io/*", "registry.k8s.io", false),
            ("*/library/nginx:*", "docker.io/library/nginx:1.27", true),
            ("nginx", "nginx", true),
            ("nginx", "nginx:1", false),
            ("ngin?:1", "nginx:1", true),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob(p, t), want, "{p} vs {t}");
        }
        let ex = Exemptions::new(vec!["docker.io/library/*".into()]);
        assert!(ex.covers("nginx", Some("docker.io/library/nginx:latest")));
        assert!(!ex.covers("ghcr.io/x/y", Some("ghcr.io/x/y:latest")));
    }
}
