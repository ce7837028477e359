//! The review pipeline both front doors share (the webhook in [`crate::admission`], `archgate
//! check` in [`crate::check`]):
//!
//! ```text
//! Subject ─> extraction ─> reference completion ─> candidate platforms ─> resolution ─> Checked
//!            (workload)    (catalog, bundles)       (scheduling)           (resolver)
//! ```
//!
//! The verdict is the policy's ([`crate::policy::decide`]): this module decides nothing a user
//! reads, it only gathers what the policy needs. Where the catalog, the nodes and the credentials
//! come from is the [`ClusterView`]'s business: a live cluster, a fixed platform list, or the
//! files given to `archgate check`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::{BoxFuture, join_all};
use tokio::time::Instant;

use crate::bundles::{Bundles, WithBundles};
use crate::cluster::ClusterView;
use crate::platform::Platform;
use crate::policy::{Checked, Outcome};
use crate::reference::ImageRef;
use crate::resolver::credentials::Identity;
use crate::resolver::{Credentials, Resolution, ResolveError, Resolver};
use crate::scheduling::{self, NodeView};
use crate::subject::{Kind, Subject};
use crate::workload::tekton::{self, update::RunUpdate};
use crate::workload::{
    self, BundleRef, ExtractError, ExtractOptions, Extraction, Placement, Target,
};

/// Resources fetched from Tekton bundles for one review, at most.
const MAX_BUNDLE_RESOURCES: usize = 64;

/// What every review shares: the registry side and the settings of extraction.
pub struct Pipeline {
    pub resolver: Arc<Resolver>,
    pub bundles: Bundles,
    pub exemptions: Exemptions,
    /// Extraction options for objects from anyone.
    pub extract: ExtractOptions,
    /// The same, trusting what only the Tekton controller writes (`TEKTON_PLATFORM_COMMANDS`).
    extract_trusted: ExtractOptions,
}

/// One review: the object, what it was before (UPDATE), and where the cluster facts come from.
pub struct Request<'a> {
    pub subject: &'a Subject,
    pub old: Option<&'a Subject>,
    pub cluster: &'a dyn ClusterView,
    /// The review was sent by the Tekton controller (its `userInfo`), not by a pod's author.
    pub from_tekton_controller: bool,
    pub deadline: Instant,
}

/// What the policy decides on.
#[derive(Debug, Default)]
pub struct Reviewed {
    pub checked: Vec<Checked>,
    /// Warnings from extraction, in the user's words (values known only at run time, references
    /// that could not be followed).
    pub notes: Vec<String>,
    /// What was not checked, said as a reason: Tekton bundles that could not be fetched, a run
    /// past extraction's bounds. Like an image whose registry was not asked, each follows
    /// `--on-registry-error`.
    pub unchecked: Vec<String>,
}

impl Pipeline {
    pub fn new(resolver: Arc<Resolver>, exemptions: Exemptions, extract: ExtractOptions) -> Self {
        let extract_trusted = ExtractOptions {
            trust_tekton_platforms: true,
            ..extract.clone()
        };
        let extract = ExtractOptions {
            trust_tekton_platforms: false,
            ..extract
        };
        Self {
            resolver,
            bundles: Bundles::default(),
            exemptions,
            extract,
            extract_trusted,
        }
    }

    /// Runs every stage for one object. `Err` means the object cannot be read as its kind.
    pub async fn review(&self, request: Request<'_>) -> Result<Reviewed, ExtractError> {
        let Request {
            subject,
            old,
            cluster,
            from_tekton_controller,
            deadline,
        } = request;
        // An UPDATE that leaves the spec as it was (labels, annotations, finalizers: most Pod
        // updates) runs nothing new: every target would be dropped as the old object's below.
        let mut old = old.filter(|old| old.kind == subject.kind);
        if let Some(previous) = old {
            if previous.object.get("spec") == subject.object.get("spec") {
                return Ok(Reviewed::default());
            }
            if matches!(subject.kind, Kind::PipelineRun | Kind::TaskRun) {
                match tekton::update::run_update(&previous.object, &subject.object) {
                    RunUpdate::Nothing => return Ok(Reviewed::default()),
                    RunUpdate::Everything => old = None,
                    RunUpdate::Changed => {}
                }
            }
        }
        let options = if from_tekton_controller {
            &self.extract_trusted
        } else {
            &self.extract
        };
        let namespace = subject.namespace();
        let (extraction, mut unchecked) = self
            .complete(subject, cluster, namespace, options, deadline)
            .await?;
        unchecked.extend(extraction.incomplete);
        let notes = extraction.warnings;
        let nodes = cluster.nodes();
        let mut targets = extraction.targets;
        let mut placed = Placed::new(&nodes);
        if let Some(old) = old {
            // On UPDATE an image is left alone only if the old object already ran it on the same
            // candidate platforms: a changed nodeSelector or affinity moves the pod somewhere new.
            // Every target is compared (none dropped for the bound first: an UPDATE that adds
            // thousands of containers after unchanged ones must still have them checked).
            let before = self.placed_images(old, cluster, options, &nodes);
            targets
                .retain(|t| !before.contains(&(t.image.clone(), placed.candidates(&t.placement))));
        }
        // Each target pulls with its own pod's credentials: a Tekton task can run under a
        // ServiceAccount of its own (taskRunSpecs[].serviceAccountName).
        let checked = resolve_placed(
            targets,
            placed,
            &self.resolver,
            |placement| cluster.credentials(namespace, placement),
            &self.exemptions,
            deadline,
        )
        .await;
        Ok(Reviewed {
            checked,
            notes,
            unchecked,
        })
    }

    /// Extraction with every reference the catalog or a Tekton bundle can fill in, and what could
    /// not be fetched. Bundles can name bundles: fetch and extract again, a bounded number of rounds.
    async fn complete(
        &self,
        subject: &Subject,
        cluster: &dyn ClusterView,
        namespace: &str,
        options: &ExtractOptions,
        deadline: Instant,
    ) -> Result<(Extraction, Vec<String>), ExtractError> {
        let base = cluster.catalog();
        let mut fetched = HashMap::new();
        // Tried and not fetched, or past the bound: warned about once, never asked again.
        let mut given_up = HashSet::new();
        let mut unchecked = Vec::new();
        loop {
            let catalog = WithBundles {
                base: base.as_ref(),
                fetched: &fetched,
            };
            let extraction = workload::extract(subject.kind, &subject.object, &catalog, options)?;
            let mut wanted: Vec<BundleRef> = extraction
                .unresolved_bundles
                .iter()
                .filter(|b| !fetched.contains_key(*b) && !given_up.contains(*b))
                .cloned()
                .collect();
            // Past the bound a bundle is not fetched, and says so: its images go unchecked.
            let room = MAX_BUNDLE_RESOURCES.saturating_sub(fetched.len() + given_up.len());
            let over = wanted.split_off(room.min(wanted.len()));
            if !over.is_empty() {
                let why =
                    format!("over the limit of {MAX_BUNDLE_RESOURCES} bundle resources per object");
                for reference in over {
                    unchecked.push(crate::policy::bundle_not_checked(&reference, &why));
                    given_up.insert(reference);
                }
            }
            if wanted.is_empty() {
                return Ok((extraction, unchecked));
            }
            // Bundles are pulled with the webhook's own credentials and the namespace's default ones.
            let credentials = cluster.credentials(namespace, &Default::default());
            let results = join_all(wanted.iter().map(|b| {
                tokio::time::timeout_at(
                    deadline,
                    self.bundles.fetch(&self.resolver, &credentials, b),
                )
            }))
            .await;
            let before = fetched.len();
            for (reference, result) in wanted.into_iter().zip(results) {
                let why = match result {
                    Ok(Ok(resource)) => {
                        fetched.insert(reference, resource);
                        continue;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "the registry did not answer in time".to_string(),
                };
                unchecked.push(crate::policy::bundle_not_checked(&reference, &why));
                given_up.insert(reference);
            }
            if fetched.len() == before {
                return Ok((extraction, unchecked));
            }
        }
    }

    /// The old object's images with the platforms each had to run on. An old object that cannot
    /// be read counts as empty, so every image is checked.
    fn placed_images(
        &self,
        old: &Subject,
        cluster: &dyn ClusterView,
        options: &ExtractOptions,
        nodes: &[NodeView],
    ) -> HashSet<(String, Arc<[Platform]>)> {
        let catalog = cluster.catalog();
        let mut placed = Placed::new(nodes);
        workload::extract(old.kind, &old.object, catalog.as_ref(), options)
            .map(|e| {
                e.targets
                    .into_iter()
                    .map(|t| {
                        let candidates = placed.candidates(&t.placement);
                        (t.image, candidates)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What a pod's targets share, worked out once per pod: they share one placement (one `Arc`),
/// and placing walks every node. Placed per target, an UPDATE naming 40,000 containers on a
/// 1,000-node cluster was 80 million node checks before any bound applied.
struct Placed<'a> {
    nodes: &'a [NodeView],
    pods: Vec<Pod>,
}

/// One pod: where it may run, why nowhere when nothing is left, and what it pulls with (asked
/// only when one of its images needs a lookup).
struct Pod {
    placement: Arc<Placement>,
    candidates: Arc<[Platform]>,
    unplaceable: Option<scheduling::Unplaceable>,
    credentials: Option<Arc<Credentials>>,
}

impl<'a> Placed<'a> {
    fn new(nodes: &'a [NodeView]) -> Self {
        Self {
            nodes,
            pods: Vec::new(),
        }
    }

    fn pod(&mut self, placement: &Arc<Placement>) -> &mut Pod {
        // From the end: a pod's targets come one after another.
        let i = match self
            .pods
            .iter()
            .rposition(|p| Arc::ptr_eq(&p.placement, placement))
        {
            Some(i) => i,
            None => {
                let candidates: Arc<[Platform]> =
                    scheduling::candidates(placement, self.nodes).into();
                let unplaceable = candidates
                    .is_empty()
                    .then(|| scheduling::unplaceable(placement, self.nodes));
                self.pods.push(Pod {
                    placement: placement.clone(),
                    candidates,
                    unplaceable,
                    credentials: None,
                });
                self.pods.len() - 1
            }
        };
        &mut self.pods[i]
    }

    fn candidates(&mut self, placement: &Arc<Placement>) -> Arc<[Platform]> {
        self.pod(placement).candidates.clone()
    }
}

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

/// A cached answer that would deny is asked again unless it is younger than this: the tag may
/// have just been rebuilt (`docker buildx build --push`) for the missing platform.
pub const RECHECK_AFTER: Duration = Duration::from_secs(5);

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

    /// [`Self::covers`] for a parsed image; the canonical form is only built when some pattern
    /// could match it.
    fn covers_image(&self, image: &ImageRef) -> bool {
        !self.patterns.is_empty() && self.covers(image.written(), Some(&image.canonical()))
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

/// Resolution: every target's image once per identity it is pulled with, in parallel, paired
/// with its candidate platforms. `credentials` says what a pod with this placement pulls with;
/// targets of one pod share a placement, so it is asked once per pod.
pub async fn resolve(
    targets: Vec<Target>,
    nodes: &[NodeView],
    resolver: &Resolver,
    credentials: impl Fn(&Placement) -> Arc<Credentials>,
    exemptions: &Exemptions,
    deadline: Instant,
) -> Vec<Checked> {
    let placed = Placed::new(nodes);
    resolve_placed(targets, placed, resolver, credentials, exemptions, deadline).await
}

/// [`resolve`] with the pods already placed (an UPDATE placed them to compare with the old
/// object): each pod's candidates are worked out once per review, not once per stage.
async fn resolve_placed(
    targets: Vec<Target>,
    mut placed: Placed<'_>,
    resolver: &Resolver,
    credentials: impl Fn(&Placement) -> Arc<Credentials>,
    exemptions: &Exemptions,
    deadline: Instant,
) -> Vec<Checked> {
    // Each distinct (image, identity) once, in first-seen order; targets refer to it by index.
    let mut lookups: Vec<Lookup> = Vec::new();
    let mut index: HashMap<(ImageRef, Identity), usize, foldhash::fast::RandomState> =
        HashMap::default();
    let mut pending = Vec::new();
    let mut targets = targets;
    let overflow = if targets.len() > MAX_TARGETS_PER_REVIEW {
        targets.truncate(MAX_TARGETS_PER_REVIEW + 1);
        targets.pop()
    } else {
        None
    };
    for target in targets {
        let parsed = ImageRef::parse(&target.image);
        if let Ok(image) = &parsed
            && exemptions.covers_image(image)
        {
            continue;
        }
        let pod = placed.pod(&target.placement);
        let (candidates, unplaceable) = (pod.candidates.clone(), pod.unplaceable);
        let mut slot = None;
        if let (Ok(image), None) = (&parsed, &target.known_platforms) {
            let pulls_with = pod
                .credentials
                .get_or_insert_with(|| credentials(&target.placement))
                .clone();
            let identity = pulls_with.identity_for(image);
            let key = (image.clone(), identity);
            let found = match index.get(&key) {
                Some(&i) => Some(i),
                None if lookups.len() < MAX_IMAGES_PER_REVIEW => {
                    index.insert(key, lookups.len());
                    lookups.push(Lookup {
                        image: image.clone(),
                        credentials: pulls_with,
                        needed: Vec::new(),
                    });
                    Some(lookups.len() - 1)
                }
                None => None,
            };
            if let Some(i) = found {
                let needed = &mut lookups[i].needed;
                if !needed.iter().any(|n| Arc::ptr_eq(n, &candidates)) {
                    needed.push(candidates.clone());
                }
                slot = Some(i);
            }
        }
        pending.push((target, candidates, unplaceable, parsed, slot));
    }

    // Collected first: a stream holding the mapping closure trips the compiler's `Send`
    // inference (rust-lang/rust#102211) once the handler is spawned. The futures are lazy;
    // at most `LOOKUPS_PER_REVIEW` run (and hold requests) at once.
    // Past what runs at once, images on registries that answered lately go first, one per
    // registry in turn: an object can name hundreds of images on hosts that never answer (or
    // that answered once and now stall), and in the order written they would hold every slot
    // until the deadline while a real image waited behind them.
    // (Empty, so nothing is allocated, when all start at once: the usual review.)
    let mut order: Vec<usize> = Vec::new();
    if lookups.len() > LOOKUPS_PER_REVIEW {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let turn: Vec<usize> = lookups
            .iter()
            .map(|l| {
                let n = seen.entry(l.image.registry()).or_default();
                *n += 1;
                *n
            })
            .collect();
        order = (0..lookups.len()).collect();
        order.sort_by_cached_key(|&i| {
            let answered = resolver.answered_lately(lookups[i].image.registry());
            (!answered, turn[i])
        });
    }
    let futures: Vec<BoxFuture<'_, _>> = (0..lookups.len())
        .map(|k| order.get(k).copied().unwrap_or(k))
        .map(|i| -> BoxFuture<'_, _> {
            let lookup = &lookups[i];
            Box::pin(async move {
                let outcome = resolve_within(
                    &lookup.image,
                    &lookup.needed,
                    resolver,
                    &lookup.credentials,
                    deadline,
                )
                .await;
                (i, outcome)
            })
        })
        .collect();
    let mut resolved: Vec<Option<Result<Resolution, ResolveError>>> = vec![None; lookups.len()];
    let mut answers = futures::stream::iter(futures).buffer_unordered(LOOKUPS_PER_REVIEW);
    while let Some((i, outcome)) = answers.next().await {
        resolved[i] = Some(outcome);
    }
    drop(answers);

    let mut checked: Vec<Checked> = pending
        .into_iter()
        .map(|(target, candidates, unplaceable, parsed, slot)| {
            let outcome = match (parsed, &target.known_platforms) {
                (Err(e), _) => Outcome::Invalid(e),
                (Ok(_), Some(known)) => Outcome::Resolved(Resolution {
                    digest: None,
                    platforms: known.clone().into(),
                }),
                (Ok(image), None) => match slot.and_then(|i| resolved[i].as_ref()) {
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
                unplaceable,
                outcome,
            }
        })
        .collect();
    if let Some(target) = overflow {
        let candidates = placed.candidates(&target.placement);
        let registry = ImageRef::parse(&target.image)
            .map(|i| i.registry().to_string())
            .unwrap_or_default();
        // First, so that its finding leads the warnings and the denial.
        checked.insert(
            0,
            Checked {
                target,
                candidates,
                unplaceable: None,
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

/// One distinct image of [`resolve`]: what it is pulled with, and the candidate platforms of
/// each pod that runs it.
struct Lookup {
    image: ImageRef,
    credentials: Arc<Credentials>,
    needed: Vec<Arc<[Platform]>>,
}

/// One image: the cached answer, re-asked once if it would deny and is not fresh.
async fn resolve_within(
    image: &ImageRef,
    needed: &[Arc<[Platform]>],
    resolver: &Resolver,
    credentials: &Credentials,
    deadline: Instant,
) -> Result<Resolution, ResolveError> {
    let timeout = || ResolveError::Timeout {
        registry: image.registry().to_string(),
    };
    let first = tokio::time::timeout_at(deadline, resolver.resolve(image, credentials))
        .await
        .unwrap_or_else(|_| Err(timeout()));
    let would_deny = |answer: &Result<Resolution, ResolveError>| match answer {
        Ok(r) => needed
            .iter()
            .flat_map(|pod| pod.iter())
            .any(|need| !r.platforms.iter().any(|have| have.satisfies(need))),
        Err(e) => e.is_not_found(),
    };
    if let Err(e) = &first
        && !e.is_not_found()
    {
        // The registry cannot be asked now (past the tag's lifetime, say): what it answered
        // before still stands if it denies, where `--on-registry-error allow` would admit on the
        // error an image archgate has seen lacking the platform.
        return match resolver.last_known(image, credentials).await {
            Some(known) if would_deny(&known) => known,
            _ => first,
        };
    }
    if !would_deny(&first) {
        return first;
    }
    match resolver.tag_age(image, credentials).await {
        Some(age) if age > RECHECK_AFTER => {
            match tokio::time::timeout_at(deadline, resolver.refresh(image, credentials)).await {
                // The registry answered: its answer is the tag's now, allowing or not.
                Ok(Ok(fresh)) => Ok(fresh),
                Ok(Err(gone)) if gone.is_not_found() => Err(gone),
                // A recheck that failed or came too late says nothing new: the denial archgate
                // already knows stands, where `--on-registry-error allow` would admit on the error.
                Ok(Err(_)) | Err(_) => first,
            }
        }
        _ => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{EmptyCatalog, ExtractOptions};

    #[test]
    fn a_pod_is_placed_once_however_many_containers_it_has() {
        let containers: Vec<serde_json::Value> = (0..1000)
            .map(|i| serde_json::json!({"name": format!("c{i}"), "image": "a"}))
            .collect();
        let pod = serde_json::json!({"kind": "Pod", "spec": {"containers": containers}});
        let kind = Kind::of("", "Pod").unwrap();
        let targets = workload::extract(kind, &pod, &EmptyCatalog, &ExtractOptions::default())
            .unwrap()
            .targets;
        let nodes: Vec<NodeView> = ["linux/amd64", "linux/arm64"]
            .iter()
            .map(|p| NodeView::synthetic(&p.parse().unwrap()))
            .collect();
        let mut placed = Placed::new(&nodes);
        let first = placed.candidates(&targets[0].placement);
        assert_eq!(first.len(), 2);
        for t in &targets {
            assert!(Arc::ptr_eq(&placed.candidates(&t.placement), &first));
        }
        assert_eq!(targets.len(), 1000);
        assert_eq!(placed.pods.len(), 1, "one placement for one pod");
    }

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
        // As the README warns: `*` crosses `:` and `/`, so a short name's pattern also covers a
        // registry whose host is that name; the full name does not.
        let other = "nginx:5000/other/image";
        let canonical = Some("nginx:5000/other/image:latest");
        assert!(Exemptions::new(vec!["nginx:*".into()]).covers(other, canonical));
        assert!(
            !Exemptions::new(vec!["docker.io/library/nginx:*".into()]).covers(other, canonical)
        );
    }
}
