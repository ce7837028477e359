//! AdmissionReview in, AdmissionReview out: the webhook's front door onto the [`crate::pipeline`].
//!
//! Wire types are kube's (`kube::core::admission`); this module turns a request into a
//! [`Subject`] (and the old object on UPDATE), decides what only a request can tell (operation,
//! subresource, namespace exemptions and mode, who sent it), and turns the [`Verdict`] into an
//! [`AdmissionResponse`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{ApiResource, DynamicObject, DynamicResourceScope, ObjectMeta, Status};
use serde_json::Value;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::cluster::ClusterView;
use crate::metrics::{Decision, Metrics, ReviewLabels};
use crate::pipeline::{self, Pipeline};
use crate::policy::{self, Mode, Policy, Verdict};
use crate::subject::{Kind, Subject};

/// The identity the Tekton controller creates TaskRun pods with (its ServiceAccount in the
/// default install).
pub const DEFAULT_TEKTON_CONTROLLER: &str =
    "system:serviceaccount:tekton-pipelines:tekton-pipelines-controller";

/// Everything a review needs, shared across requests.
pub struct Admission {
    pub pipeline: Pipeline,
    pub cluster: Arc<dyn ClusterView>,
    pub policy: Policy,
    pub deadline: std::time::Duration,
    pub exempt_namespaces: Vec<String>,
    /// `userInfo.username` of the Tekton controller: only its pods' `TEKTON_PLATFORM_COMMANDS`
    /// are trusted.
    pub tekton_controller: String,
    pub metrics: Arc<Metrics>,
}

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
        mut req: AdmissionRequest<ReviewObject>,
    ) -> AdmissionReview<DynamicObject> {
        let started = Instant::now();
        // `object`, not `name`: JSON logs nest the span with its own `name` ("review").
        let span = info_span!(
            "review",
            uid = %req.uid,
            kind = %req.kind.kind,
            namespace = req.namespace.as_deref().unwrap_or(""),
            object = %object_name(&req),
            operation = ?req.operation,
            decision = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let (verdict, decision) = self.decide(&mut req).instrument(span.clone()).await;
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
        respond(&req, &verdict).into_review()
    }

    async fn decide(&self, req: &mut AdmissionRequest<ReviewObject>) -> (Verdict, Decision) {
        let allow = |warnings: Vec<String>| Verdict {
            allowed: true,
            warnings,
            ..Verdict::default()
        };
        let Some(mode) = self.mode_for(req.namespace.as_deref().unwrap_or_default()) else {
            return (allow(vec![]), Decision::Allowed);
        };
        let Some((subject, old)) = subjects(req) else {
            return (allow(vec![]), Decision::Allowed);
        };
        let request = self.request(req, &subject, old.as_ref());
        let reviewed = match self.pipeline.review(request).await {
            Ok(reviewed) => reviewed,
            Err(e) => {
                warn!(error = %e, "object not readable; allowed");
                return (allow(vec![policy::unreadable(&e)]), Decision::Error);
            }
        };
        let policy = Policy {
            mode,
            ..self.policy
        };
        let notes = [reviewed.unchecked, reviewed.notes].concat();
        let verdict = policy::decide(&reviewed.checked, &notes, &policy);
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
}

/// The object's name as a person would look for it: `request.name` is empty on CREATE when the
/// client did not repeat it, and on `generateName` objects; the object itself knows more.
pub(crate) fn object_name(req: &AdmissionRequest<ReviewObject>) -> String {
    let meta = req.object.as_ref().map(|o| &o.metadata);
    if !req.name.is_empty() {
        return req.name.clone();
    }
    match meta {
        Some(m) if m.name.as_deref().is_some_and(|n| !n.is_empty()) => {
            m.name.clone().unwrap_or_default()
        }
        Some(m) => m
            .generate_name
            .as_deref()
            .map(|g| format!("{g}*"))
            .unwrap_or_default(),
        None => String::new(),
    }
}

impl Admission {
    /// The mode for objects in `namespace`, or `None` when archgate does not look at them
    /// (an exempt namespace, or mode `off`).
    pub(crate) fn mode_for(&self, namespace: &str) -> Option<Mode> {
        if self.exempt_namespaces.iter().any(|n| n == namespace) {
            return None;
        }
        let mode = self
            .cluster
            .namespace_mode(namespace)
            .unwrap_or(self.policy.mode);
        (mode != Mode::Off).then_some(mode)
    }

    /// The pipeline's request for a subject taken out of `req`, due within the review deadline.
    pub(crate) fn request<'a, T>(
        &'a self,
        req: &AdmissionRequest<T>,
        subject: &'a Subject,
        old: Option<&'a Subject>,
    ) -> pipeline::Request<'a>
    where
        T: kube::Resource,
    {
        pipeline::Request {
            subject,
            old,
            cluster: self.cluster.as_ref(),
            from_tekton_controller: req.user_info.username.as_deref()
                == Some(self.tekton_controller.as_str()),
            deadline: tokio::time::Instant::now() + self.deadline,
        }
    }
}

/// The objects a request asks archgate to review, taken out of it: the object and, on UPDATE,
/// the old one. `None` when there is nothing to review: DELETE and CONNECT, kinds archgate does
/// not know (decided by group and kind in [`Kind::of`]), and subresources other than a Pod's
/// `ephemeralcontainers` (the only one that adds images).
pub fn subjects(req: &mut AdmissionRequest<ReviewObject>) -> Option<(Subject, Option<Subject>)> {
    if matches!(req.operation, Operation::Delete | Operation::Connect) {
        return None;
    }
    let kind = Kind::of(&req.kind.group, &req.kind.kind)?;
    match req.sub_resource.as_deref().unwrap_or("") {
        "" => {}
        "ephemeralcontainers" if kind == Kind::Pod => {}
        _ => return None,
    }
    let object = req.object.take()?;
    let old = match req.operation {
        Operation::Update => req.old_object.take(),
        _ => None,
    };
    let subject = |object| Subject {
        kind,
        object: object_json(object, &req.name, req.namespace.as_deref()),
    };
    Some((subject(object), old.map(subject)))
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

/// The object as JSON for extractors: its spec (moved, not copied) plus the metadata they read
/// (managedFields can be large and are never needed, so they are left behind).
fn object_json(object: ReviewObject, name: &str, namespace: Option<&str>) -> Value {
    let ReviewObject { metadata, spec } = object;
    let name = metadata
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| name.to_string());
    serde_json::json!({
        "metadata": {
            "name": name,
            "generateName": metadata.generate_name,
            "namespace": metadata.namespace.or_else(|| namespace.map(str::to_string)),
            "annotations": metadata.annotations,
            "labels": metadata.labels,
        },
        "spec": spec,
    })
}

pub(crate) fn operation_label(op: &Operation) -> &'static str {
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
