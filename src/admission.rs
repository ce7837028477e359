//! AdmissionReview in, AdmissionReview out: kind dispatch, UPDATE diffs, and the response shape.
//!
//! Wire types are kube's (`kube::core::admission`); this module only decides which part of the
//! object to look at and turns a [`Verdict`] into an [`AdmissionResponse`].

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{ApiResource, DynamicObject, DynamicResourceScope, ObjectMeta, Status};
use serde_json::Value;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::bundles::{Bundles, WithBundles};
use crate::cluster::ClusterView;
use crate::metrics::{Decision, Metrics, ReviewLabels};
use crate::policy::{self, Mode, Policy, Verdict};
use crate::resolver::Resolver;
use crate::review::{self, Exemptions};
use crate::workload::{self, BundleRef, Catalog, ExtractOptions, Extraction};

/// Everything a review needs, shared across requests.
pub struct Admission {
    pub resolver: Arc<Resolver>,
    pub cluster: Arc<dyn ClusterView>,
    pub policy: Policy,
    pub deadline: std::time::Duration,
    pub exempt_namespaces: Vec<String>,
    pub exemptions: Exemptions,
    pub extract: ExtractOptions,
    pub metrics: Arc<Metrics>,
    pub bundles: Bundles,
}

/// Resources fetched from Tekton bundles for one review, at most.
const MAX_BUNDLE_RESOURCES: usize = 64;

/// Why a body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Decode(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error(
        "unsupported AdmissionReview apiVersion {0:?}: register the webhook with admissionReviewVersions: [v1]"
    )]
    Version(String),
}

/// Parses a request body.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<ReviewObject>, ReviewError> {
    let review: AdmissionReview<ReviewObject> =
        serde_json::from_slice(body).map_err(|e| ReviewError::Decode(e.to_string()))?;
    if review.types.api_version != "admission.k8s.io/v1" {
        return Err(ReviewError::Version(review.types.api_version));
    }
    review.try_into().map_err(|_| ReviewError::NoRequest)
}

impl Admission {
    /// Answers one review. Never fails: anything unexpected is an allow with a warning, because
    /// a webhook that errors blocks the cluster (or, with failurePolicy Ignore, silently allows).
    pub async fn review(
        &self,
        req: &AdmissionRequest<ReviewObject>,
    ) -> AdmissionReview<DynamicObject> {
        let started = Instant::now();
        let span = info_span!(
            "review",
            uid = %req.uid,
            kind = %req.kind.kind,
            namespace = req.namespace.as_deref().unwrap_or(""),
            name = %req.name,
            operation = ?req.operation,
            decision = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let (verdict, decision) = self.decide(req).instrument(span.clone()).await;
        let took = started.elapsed();
        span.record("decision", tracing::field::debug(&decision));
        span.record("duration_ms", took.as_secs_f64() * 1000.0);
        // A clean allow is the common case on a busy cluster and is counted in metrics; log the
        // decisions someone may need to find later.
        span.in_scope(|| {
            if decision == Decision::Allowed {
                debug!("reviewed");
            } else {
                info!("reviewed");
            }
        });
        self.metrics
            .reviews
            .get_or_create(&ReviewLabels {
                decision,
                operation: operation_label(&req.operation).to_string(),
            })
            .inc();
        self.metrics.review_seconds.observe(took.as_secs_f64());
        respond(req, &verdict).into_review()
    }

    async fn decide(&self, req: &AdmissionRequest<ReviewObject>) -> (Verdict, Decision) {
        let allow = |warnings: Vec<String>| Verdict {
            allowed: true,
            warnings,
            ..Verdict::default()
        };
        if matches!(req.operation, Operation::Delete | Operation::Connect) {
            return (allow(vec![]), Decision::Allowed);
        }
        let namespace = req.namespace.as_deref().unwrap_or("");
        if self.exempt_namespaces.iter().any(|n| n == namespace) {
            return (allow(vec![]), Decision::Allowed);
        }
        let mode = self
            .cluster
            .namespace_mode(namespace)
            .unwrap_or(self.policy.mode);
        if mode == Mode::Off {
            return (allow(vec![]), Decision::Allowed);
        }
        let deadline = tokio::time::Instant::now() + self.deadline;
        let base = self.cluster.catalog();
        let mut fetched = HashMap::new();
        let mut notes = Vec::new();
        // Bundles can name bundles: fetch and extract again, a bounded number of rounds.
        let extraction = loop {
            let catalog = WithBundles {
                base: base.as_ref(),
                fetched: &fetched,
            };
            let extraction = match self.extract(req, &catalog) {
                Ok(Some(extraction)) => extraction,
                Ok(None) => return (allow(vec![]), Decision::Allowed),
                Err(e) => {
                    warn!(error = %e, "object not readable; allowed");
                    return (allow(vec![policy_clip(&e.to_string())]), Decision::Error);
                }
            };
            let wanted: Vec<BundleRef> = extraction
                .unresolved_bundles
                .iter()
                .filter(|b| !fetched.contains_key(*b))
                .cloned()
                .collect();
            if wanted.is_empty() || fetched.len() >= MAX_BUNDLE_RESOURCES {
                break extraction;
            }
            // Bundles are pulled with the webhook's own credentials and the namespace's default ones.
            let bundle_credentials = self.cluster.credentials(namespace, &Default::default());
            let results = join_all(wanted.iter().map(|b| {
                tokio::time::timeout_at(
                    deadline,
                    self.bundles.fetch(&self.resolver, &bundle_credentials, b),
                )
            }))
            .await;
            let before = fetched.len();
            for (reference, result) in wanted.into_iter().zip(results) {
                match result {
                    Ok(Ok(resource)) => {
                        fetched.insert(reference, resource);
                    }
                    Ok(Err(e)) => notes.push(policy_clip(&format!(
                        "{} {:?} from bundle {} was not checked: {e}",
                        reference.kind, reference.name, reference.bundle
                    ))),
                    Err(_) => notes.push(policy_clip(&format!(
                        "{} {:?} from bundle {} was not checked: the registry did not answer in time",
                        reference.kind, reference.name, reference.bundle
                    ))),
                }
            }
            if fetched.len() == before {
                break extraction;
            }
        };
        notes.extend(extraction.warnings.iter().cloned());

        let nodes = self.cluster.nodes();
        // Every target of one object comes from the same pod template (or, for Tekton, runs under
        // the same service account), so the first one's pull secrets stand for all.
        let credentials = match extraction.targets.first() {
            Some(t) => self.cluster.credentials(namespace, &t.placement),
            None => self.cluster.credentials(namespace, &Default::default()),
        };
        let checked = review::check(
            extraction.targets,
            &nodes,
            &self.resolver,
            &credentials,
            &self.exemptions,
            deadline,
        )
        .await;
        let policy = Policy {
            mode,
            ..self.policy
        };
        let verdict = policy::decide(&checked, &notes, &policy);
        for finding in &verdict.findings {
            info!(%finding, detail = ?finding, "finding");
        }
        let decision = match (verdict.allowed, verdict.findings.is_empty(), mode) {
            (false, _, _) => Decision::Denied,
            (true, true, _) => Decision::Allowed,
            (true, false, Mode::Audit) => Decision::Audited,
            (true, false, _) => Decision::Warned,
        };
        (verdict, decision)
    }

    /// The targets of this request: for UPDATE, only images the old object did not have.
    fn extract(
        &self,
        req: &AdmissionRequest<ReviewObject>,
        catalog: &dyn Catalog,
    ) -> Result<Option<Extraction>, workload::ExtractError> {
        let kind = req.kind.kind.as_str();
        let group = req.kind.group.as_str();
        let subresource = req.sub_resource.as_deref().unwrap_or("");
        let known = match kind {
            "PipelineRun" | "TaskRun" => group == "tekton.dev",
            _ => workload::pod::is_pod_kind(kind),
        };
        // Only the ephemeralcontainers subresource adds images; status and others never do.
        let subresource_ok =
            subresource.is_empty() || (kind == "Pod" && subresource == "ephemeralcontainers");
        if !known || !subresource_ok {
            return Ok(None);
        }
        let Some(object) = req.object.as_ref() else {
            return Ok(None);
        };
        let object = object_json(object, req);
        let Some(mut extraction) = workload::extract(kind, &object, catalog, &self.extract)? else {
            return Ok(None);
        };
        if req.operation == Operation::Update
            && let Some(old) = req.old_object.as_ref()
        {
            let old = object_json(old, req);
            // An old object we cannot read must not block the update: treat it as empty.
            let before: HashSet<String> = workload::extract(kind, &old, catalog, &self.extract)
                .ok()
                .flatten()
                .map(|e| e.targets.into_iter().map(|t| t.image).collect())
                .unwrap_or_default();
            extraction.targets.retain(|t| !before.contains(&t.image));
        }
        Ok(Some(extraction))
    }
}

/// The object under review as archgate reads it: typed metadata and the `spec` as JSON.
///
/// kube's `DynamicObject` would do, but it flattens twice (`types` and `data`), which makes serde
/// buffer and parse the whole object twice; on the review hot path that was the largest cost.
/// The envelope stays kube's `AdmissionReview`/`AdmissionRequest`.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct ReviewObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Value,
}

impl kube::Resource for ReviewObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The object as JSON for extractors: its spec plus the metadata they read (managedFields can be
/// large and are never needed, so they are left behind).
pub fn object_json(object: &ReviewObject, req: &AdmissionRequest<ReviewObject>) -> Value {
    let meta = &object.metadata;
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| req.name.clone());
    serde_json::json!({
        "metadata": {
            "name": name,
            "generateName": meta.generate_name,
            "namespace": meta.namespace.clone().or_else(|| req.namespace.clone()),
            "annotations": meta.annotations,
            "labels": meta.labels,
        },
        "spec": object.spec,
    })
}

fn policy_clip(text: &str) -> String {
    text.chars().take(policy::MAX_WARNING_CHARS).collect()
}

fn operation_label(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// The response: echoes the uid, never carries a patch, denies with 403 and the full message.
pub fn respond<T: kube::Resource>(
    req: &AdmissionRequest<T>,
    verdict: &Verdict,
) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(req);
    if let Some(message) = &verdict.message {
        response = response.deny(message);
        response.result = Status::failure(message, "Forbidden").with_code(403);
    }
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings.clone());
    }
    response
}
