//! AdmissionReview in, AdmissionReview out: the webhook's front door onto the [`crate::pipeline`].
//!
//! Wire types are kube's (`kube::core::admission`), read through a private envelope and request
//! that skip what nothing here reads; this module turns a request into a [`Subject`] (and the
//! old object on UPDATE), decides what only a request can tell (operation, subresource,
//! namespace exemptions and mode, who sent it), and turns the [`Verdict`] into an
//! [`AdmissionResponse`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{
    ApiResource, DynamicObject, DynamicResourceScope, GroupVersionKind, GroupVersionResource,
    ObjectMeta, Status, TypeMeta,
};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tracing::field::Empty;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::cluster::ClusterView;
use crate::metrics::{Decision, Metrics, ReviewLabels};
use crate::pipeline::{self, Pipeline};
use crate::policy::{self, Mode, OnRegistryError, Policy, Verdict};
use crate::subject::{Kind, Subject};
use crate::workload::pod;

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
    #[error(
        "the object says it is a {declared} but the request's kind is {group:?} {kind:?}: not a review the API server sends"
    )]
    KindMismatch {
        declared: Kind,
        group: String,
        kind: String,
    },
}

/// The AdmissionReview envelope as it arrives. kube's `AdmissionReview` flattens its `TypeMeta`,
/// which makes serde buffer the whole body into an intermediate tree and read it twice; this
/// envelope names the same two fields.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

/// The request fields archgate reads (and `resource` and `dryRun`, which cost nothing), handed
/// on as kube's `AdmissionRequest`. Decoding kube's type itself also built what nothing here
/// reads, on every review: `requestKind`, `requestResource`, `options` (as a JSON tree) and the
/// user's uid, groups and extra, a tenth of the decode (BENCHMARKS.md, "Sixth pass"). serde
/// skips them; they stay at their defaults.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: GroupVersionKind,
    resource: GroupVersionResource,
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    namespace: Option<String>,
    operation: Operation,
    user_info: User,
    object: Option<ReviewObject>,
    old_object: Option<ReviewObject>,
    #[serde(default)]
    dry_run: bool,
}

/// Of the requesting user, the name (the Tekton controller is recognised by it).
#[derive(serde::Deserialize)]
struct User {
    username: Option<String>,
}

impl Request {
    fn into_kube(self, types: TypeMeta) -> AdmissionRequest<ReviewObject> {
        AdmissionRequest {
            types,
            uid: self.uid,
            kind: self.kind,
            resource: self.resource,
            sub_resource: self.sub_resource,
            request_kind: None,
            request_resource: None,
            request_sub_resource: None,
            name: self.name,
            namespace: self.namespace,
            operation: self.operation,
            user_info: UserInfo {
                username: self.user_info.username,
                ..UserInfo::default()
            },
            object: self.object,
            old_object: self.old_object,
            dry_run: self.dry_run,
            options: None,
        }
    }
}

/// Parses a request body.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<ReviewObject>, ReviewError> {
    // JSON is UTF-8 (RFC 8259). Checked once for the whole body, serde_json reads each string
    // without checking it again: a sixth of the decode (BENCHMARKS.md, "Warm path").
    let text = std::str::from_utf8(body)
        .map_err(|e| ReviewError::Decode(format!("not UTF-8 JSON: {e}")))?;
    let Envelope {
        api_version,
        kind,
        request,
    } = serde_json::from_str(text).map_err(|e| ReviewError::Decode(e.to_string()))?;
    if api_version != "admission.k8s.io/v1" {
        return Err(ReviewError::Version(api_version));
    }
    let request = request
        .ok_or(ReviewError::NoRequest)?
        .into_kube(TypeMeta { api_version, kind });
    // The kind is the request's; an object's own kind only chose how its spec was read.
    let reviewed = Kind::of(&request.kind.group, &request.kind.kind);
    for object in [&request.object, &request.old_object].into_iter().flatten() {
        if let Spec::Seen { declared, .. } = object.spec
            && Some(declared) != reviewed
        {
            return Err(ReviewError::KindMismatch {
                declared,
                group: request.kind.group.clone(),
                kind: request.kind.kind.clone(),
            });
        }
    }
    Ok(request)
}

impl Admission {
    /// When a review that arrives now must be answered: the review deadline from now.
    pub fn due(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.deadline
    }

    /// Answers one review that arrives now; see [`Admission::review_by`].
    pub async fn review(
        &self,
        req: AdmissionRequest<ReviewObject>,
    ) -> AdmissionReview<DynamicObject> {
        self.review_by(req, self.due()).await
    }

    /// Answers one review by `due` (the server takes it from the request's arrival, so time spent
    /// reading the body and waiting for a slot is not given again). Never fails: anything
    /// unexpected is an allow with a warning, because a webhook that errors blocks the cluster
    /// (or, with failurePolicy Ignore, silently allows).
    pub async fn review_by(
        &self,
        mut req: AdmissionRequest<ReviewObject>,
        due: tokio::time::Instant,
    ) -> AdmissionReview<DynamicObject> {
        let started = Instant::now();
        // `object`, not `name`: JSON logs nest the span with its own `name` ("review").
        let span = ReviewSpan {
            span: info_span!(
                "review",
                uid = Empty,
                kind = Empty,
                namespace = Empty,
                object = Empty,
                operation = Empty,
                decision = Empty,
                duration_ms = Empty,
            ),
            object: object_name(&req),
            identified: AtomicBool::new(false),
        };
        let verbose = tracing::enabled!(tracing::Level::DEBUG);
        if verbose {
            span.identify(&req);
        }
        let (verdict, decision) = self
            .decide(&mut req, &span, due)
            .instrument(span.span.clone())
            .await;
        let took = started.elapsed();
        // A clean allow is the common case on a busy cluster and is counted in metrics; log the
        // decisions someone may need to find later.
        let allowed = decision == Decision::Allowed;
        if !allowed || verbose {
            span.identify(&req);
            span.span
                .record("decision", tracing::field::debug(&decision));
            span.span.record("duration_ms", took.as_secs_f64() * 1000.0);
            span.span.in_scope(|| {
                if allowed {
                    debug!("reviewed");
                } else {
                    info!("reviewed");
                }
            });
        }
        self.metrics
            .reviews
            .get_or_create(&ReviewLabels {
                decision,
                operation: operation_label(&req.operation),
            })
            .inc();
        self.metrics.review_seconds.observe(took.as_secs_f64());
        let response = respond(&req, &verdict);
        // The request's apiVersion and kind, moved; `into_review` would copy them a second time.
        AdmissionReview {
            types: req.types,
            request: None,
            response: Some(response),
        }
    }

    async fn decide(
        &self,
        req: &mut AdmissionRequest<ReviewObject>,
        span: &ReviewSpan,
        due: tokio::time::Instant,
    ) -> (Verdict, Decision) {
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
        let request = self.request(req, &subject, old.as_ref(), due);
        let reviewed = match self.pipeline.review(request).await {
            Ok(reviewed) => reviewed,
            Err(e) => {
                span.identify(req);
                // Not read is not checked: like an image whose registry could not be asked, it
                // follows `--on-registry-error` (an object its author can make unreadable, e.g.
                // a Tekton custom task's spec nested past the JSON reader's 128 levels, must
                // not pass a cluster that asked for `deny`).
                let why = policy::unreadable(&e);
                if mode == Mode::Enforce && self.policy.on_registry_error == OnRegistryError::Deny {
                    warn!(error = %e, "object not readable; denied (on-registry-error deny)");
                    let denied = Verdict {
                        allowed: false,
                        message: Some(why),
                        ..Verdict::default()
                    };
                    return (denied, Decision::Denied);
                }
                warn!(error = %e, "object not readable; allowed");
                return (allow(vec![why]), Decision::Error);
            }
        };
        let policy = Policy {
            mode,
            ..self.policy
        };
        let verdict = policy::decide(
            &reviewed.checked,
            &reviewed.unchecked,
            &reviewed.notes,
            &policy,
        );
        if !verdict.findings.is_empty() {
            span.identify(req);
        }
        for finding in &verdict.findings {
            info!(%finding, "finding");
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

/// A review's span. Which review it is (uid, kind, namespace, object, operation) is written into
/// it before the first line logged in it, not when it is created: a formatting subscriber
/// renders a span's fields as they are written, and a clean allow, the common case, logs
/// nothing at the default level (that rendering was a tenth of a warm review).
struct ReviewSpan {
    span: tracing::Span,
    /// Taken before the object leaves the request.
    object: String,
    identified: AtomicBool,
}

impl ReviewSpan {
    /// Writes which review this is, once.
    fn identify<T: kube::Resource>(&self, req: &AdmissionRequest<T>) {
        if self.identified.swap(true, Ordering::Relaxed) {
            return;
        }
        self.span.record("uid", tracing::field::display(&req.uid));
        self.span
            .record("kind", tracing::field::display(&req.kind.kind));
        self.span
            .record("namespace", req.namespace.as_deref().unwrap_or(""));
        self.span
            .record("object", tracing::field::display(&self.object));
        self.span
            .record("operation", tracing::field::debug(&req.operation));
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

    /// The pipeline's request for a subject taken out of `req`, to be answered by `due`.
    pub(crate) fn request<'a, T>(
        &'a self,
        req: &AdmissionRequest<T>,
        subject: &'a Subject,
        old: Option<&'a Subject>,
        due: tokio::time::Instant,
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
            deadline: due,
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
        object: object_json(kind, object, &req.name, req.namespace.as_deref()),
    };
    Some((subject(object), old.map(subject)))
}

/// The object under review as archgate reads it: typed metadata and the spec.
///
/// kube's `DynamicObject` would do, but it flattens twice (`types` and `data`), which makes serde
/// buffer and parse the whole object twice; on the review hot path that was the largest cost.
/// The request around it stays kube's `AdmissionRequest`.
///
/// Of the metadata only what archgate reads is decoded (see [`Metadata`]): `managedFields`
/// alone is often larger than the spec and would be built as JSON values on every review.
///
/// Of a Pod's or a workload's spec only what extraction reads is kept, read in the same pass
/// ([`pod::SpecView`]), when the object says its kind before its spec, as the API server's
/// encoding always does; [`decode`] then holds that kind to the request's. Any other spec is
/// kept as its JSON text.
#[derive(Debug, Clone, Default)]
pub struct ReviewObject {
    /// Boxed: `ObjectMeta` is 360 bytes, held twice in the request (object and oldObject), and
    /// the request is moved whole several times between the decoder and the pipeline.
    pub metadata: Box<ObjectMeta>,
    pub spec: Spec,
}

/// An object's spec as decoding left it.
#[derive(Debug, Clone, Default)]
pub enum Spec {
    /// No spec, or `null`.
    #[default]
    Absent,
    /// The view of a pod-spec kind's spec, and the kind the object declared, which chose it.
    Seen { declared: Kind, view: Value },
    /// Any other spec, as written.
    Text(Box<RawValue>),
}

impl ReviewObject {
    /// The spec as a JSON value (`null` when absent): the view, or all of a spec kept as text.
    pub fn spec_value(&self) -> Value {
        match &self.spec {
            Spec::Absent => Value::Null,
            Spec::Seen { view, .. } => view.clone(),
            Spec::Text(raw) => whole(raw),
        }
    }
}

/// JSON text already checked by the decoder as a value; it parses again, unless it nests deeper
/// than serde_json's 128 levels (the decoder only skipped it): then `null`, which extraction
/// reports as unreadable.
fn whole(spec: &RawValue) -> Value {
    serde_json::from_str(spec.get()).unwrap_or_default()
}

/// Where a kind's pod spec sits below the object's `spec`, for the kinds that have one.
fn pod_spec_below_spec(kind: Kind) -> Option<&'static [&'static str]> {
    match kind {
        Kind::Pod => Some(&[]),
        // `spec_path` starts at the object's `spec`.
        Kind::Workload(workload) => workload.spec_path().get(1..),
        Kind::PipelineRun | Kind::TaskRun => None,
    }
}

impl<'de> serde::Deserialize<'de> for ReviewObject {
    fn deserialize<D: serde::Deserializer<'de>>(from: D) -> Result<Self, D::Error> {
        from.deserialize_map(ObjectFields)
    }
}

/// Reads an object's `apiVersion`, `kind`, `metadata` and `spec`, skipping the rest (`status`).
struct ObjectFields;

impl<'de> serde::de::Visitor<'de> for ObjectFields {
    type Value = ReviewObject;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ReviewObject, A::Error> {
        use serde::de::IgnoredAny;
        let (mut api_version, mut kind) = (None::<Value>, None::<Value>);
        let mut object = ReviewObject::default();
        while let Some(key) = map.next_key::<ObjectKey>()? {
            match key {
                ObjectKey::ApiVersion => api_version = Some(map.next_value()?),
                ObjectKey::Kind => kind = Some(map.next_value()?),
                ObjectKey::Metadata => {
                    object.metadata = Box::new(
                        map.next_value::<Option<Metadata>>()?
                            .map(Metadata::into_meta)
                            .unwrap_or_default(),
                    );
                }
                ObjectKey::Spec => {
                    let declared = match (&api_version, &kind) {
                        (Some(Value::String(api_version)), Some(Value::String(kind))) => {
                            Kind::of_api_version(api_version, kind)
                        }
                        _ => None,
                    };
                    object.spec = match declared.and_then(|k| Some((k, pod_spec_below_spec(k)?))) {
                        Some((declared, path)) => {
                            match map.next_value_seed(pod::SpecView { path })? {
                                Value::Null => Spec::Absent,
                                view => Spec::Seen { declared, view },
                            }
                        }
                        None => map
                            .next_value::<Option<Box<RawValue>>>()?
                            .map_or(Spec::Absent, Spec::Text),
                    };
                }
                ObjectKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(object)
    }
}

/// The object fields [`ObjectFields`] reads; a key is matched without being copied.
#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum ObjectKey {
    ApiVersion,
    Kind,
    Metadata,
    Spec,
    #[serde(other)]
    Other,
}

/// The metadata fields archgate reads: names for messages and logs, the namespace, annotations
/// for extractors and placement mode, ownerReferences for placement mode. serde skips the rest
/// (labels, managedFields, timestamps, finalizers, ...) without building it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
}

impl Metadata {
    fn into_meta(self) -> ObjectMeta {
        let Self {
            name,
            generate_name,
            namespace,
            annotations,
            owner_references,
        } = self;
        ObjectMeta {
            name,
            generate_name,
            namespace,
            annotations,
            owner_references,
            ..ObjectMeta::default()
        }
    }
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

/// The object as JSON for extractors: the metadata they read and the spec, of which only the pod
/// spec's fields archgate reads for the kinds with a pod spec ([`pod::SpecView`]).
fn object_json(kind: Kind, object: ReviewObject, name: &str, namespace: Option<&str>) -> Value {
    let ReviewObject { metadata, spec } = object;
    let metadata = *metadata;
    let spec = match spec {
        Spec::Absent => Value::Null,
        // Read for the kind the object declared, which `decode` held to the request's.
        Spec::Seen { view, .. } => view,
        Spec::Text(raw) => match pod_spec_below_spec(kind) {
            Some(path) => pod::SpecView { path }
                .of_text(raw.get())
                .unwrap_or_else(|_| whole(&raw)),
            None => whole(&raw),
        },
    };
    let name = metadata
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| name.to_string());
    let text = |s: Option<String>| s.map_or(Value::Null, Value::String);
    let strings = |m: Option<BTreeMap<String, String>>| {
        m.map_or(Value::Null, |m| {
            Value::Object(m.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
        })
    };
    let meta = Map::from_iter([
        ("name".to_string(), Value::String(name)),
        ("generateName".to_string(), text(metadata.generate_name)),
        (
            "namespace".to_string(),
            text(metadata.namespace.or_else(|| namespace.map(str::to_string))),
        ),
        ("annotations".to_string(), strings(metadata.annotations)),
    ]);
    Value::Object(Map::from_iter([
        ("metadata".to_string(), Value::Object(meta)),
        ("spec".to_string(), spec),
    ]))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POD: &str = include_str!("../tests/data/admissionreview/pod-create.json");

    #[test]
    fn decode_keeps_what_archgate_reads() {
        let req = decode(POD.as_bytes()).expect("the Pod review decodes");
        assert_eq!(req.types.api_version, "admission.k8s.io/v1");
        assert_eq!(req.types.kind, "AdmissionReview");
        assert_eq!(req.kind.kind, "Pod");
        assert_eq!(req.operation, Operation::Create);
        assert_eq!(
            req.user_info.username.as_deref(),
            Some("system:serviceaccount:kube-system:replicaset-controller")
        );
        assert_eq!(req.resource.resource, "pods");
        assert_eq!(req.name, "echo-7d9c5b8f6-x2kqp");
        // Sent, but nothing reads them: left at their defaults rather than built.
        assert_eq!((req.request_kind, req.request_resource), (None, None));
        assert!(req.options.is_none());
        assert_eq!(req.user_info.groups, None);
        let object = req.object.as_ref().expect("object");
        let meta = &object.metadata;
        assert_eq!(meta.name.as_deref(), Some("echo-7d9c5b8f6-x2kqp"));
        assert_eq!(meta.generate_name.as_deref(), Some("echo-7d9c5b8f6-"));
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        // Nothing reads an object's labels (a node's are the cluster view's).
        assert_eq!(meta.labels, None);
        assert_eq!(
            meta.annotations.as_ref().unwrap()["prometheus.io/port"],
            "8080"
        );
        assert_eq!(
            meta.owner_references.as_ref().unwrap()[0].kind,
            "ReplicaSet"
        );
        // Left unread on purpose: never needed, often the largest part of the object.
        assert_eq!(meta.managed_fields, None);
        assert_eq!(object.spec_value()["containers"][0]["name"], "echo-server");
    }

    #[test]
    fn decode_refuses_what_is_not_a_v1_review() {
        let mut review: Value = serde_json::from_str(POD).unwrap();
        review["apiVersion"] = "admission.k8s.io/v1beta1".into();
        let body = serde_json::to_vec(&review).unwrap();
        assert!(
            matches!(decode(&body), Err(ReviewError::Version(v)) if v == "admission.k8s.io/v1beta1")
        );
        review["apiVersion"] = "admission.k8s.io/v1".into();
        review.as_object_mut().unwrap().remove("request");
        let body = serde_json::to_vec(&review).unwrap();
        assert!(matches!(decode(&body), Err(ReviewError::NoRequest)));
        review.as_object_mut().unwrap().remove("apiVersion");
        let body = serde_json::to_vec(&review).unwrap();
        assert!(matches!(decode(&body), Err(ReviewError::Decode(_))));
        for body in [&b"[]"[..], b"{", b"", b"{\"apiVersion\": 1}"] {
            assert!(
                matches!(decode(body), Err(ReviewError::Decode(_))),
                "{body:?}"
            );
        }
    }

    /// The Pod review with its object's spec replaced by `spec` (JSON text), kind `kind`, said
    /// in the request and in the object (before its spec, as the API server writes it) or, with
    /// `declared` false, only in the request.
    fn review_of(kind: (&str, &str), spec: &str, declared: bool) -> Vec<u8> {
        let mut review: Value = serde_json::from_str(POD).unwrap();
        review["request"]["kind"] =
            serde_json::json!({"group": kind.0, "version": "v1", "kind": kind.1});
        let object = &mut review["request"]["object"];
        object["spec"] = serde_json::from_str(spec).unwrap();
        let fields = object.as_object_mut().unwrap();
        if declared {
            let group = if kind.0.is_empty() {
                String::new()
            } else {
                format!("{}/", kind.0)
            };
            fields.insert("apiVersion".into(), format!("{group}v1").into());
            fields.insert("kind".into(), kind.1.into());
        } else {
            fields.remove("kind");
        }
        serde_json::to_vec(&review).unwrap()
    }

    #[test]
    fn a_pod_spec_is_read_in_the_decoding_pass_when_the_object_says_its_kind_first() {
        let req = decode(POD.as_bytes()).unwrap();
        let object = req.object.as_ref().unwrap();
        assert!(
            matches!(&object.spec, Spec::Seen { declared: Kind::Pod, view } if view["containers"][0]["image"].is_string()),
            "{:?}",
            object.spec
        );
        // No kind before the spec: kept as text, and read for the request's kind later.
        let body = review_of(
            ("", "Pod"),
            r#"{"containers": [{"name": "a", "image": "x"}]}"#,
            false,
        );
        let mut req = decode(&body).unwrap();
        assert!(matches!(req.object.as_ref().unwrap().spec, Spec::Text(_)));
        let (subject, _) = subjects(&mut req).unwrap();
        assert_eq!(subject.object["spec"]["containers"][0]["image"], "x");
        // A Tekton run's spec is always kept whole.
        let body = review_of(
            ("tekton.dev", "TaskRun"),
            r#"{"taskSpec": {"steps": []}}"#,
            true,
        );
        let req = decode(&body).unwrap();
        assert!(matches!(req.object.as_ref().unwrap().spec, Spec::Text(_)));
    }

    /// Deeply nested JSON never overflows the stack (an abort would be a webhook that fails
    /// open): where archgate keeps the value (`affinity`), serde_json's recursion limit makes it a
    /// bad body; where it skips it (a volume, an unknown request field), the skip walks it without
    /// recursing and the review decodes.
    #[test]
    fn deep_nesting_is_a_bad_body_or_skipped_never_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        /// Where the nesting goes, and whether the review still decodes.
        type Placed = (fn(&mut Value), bool);
        let placed: [Placed; 3] = [
            (
                |r| r["request"]["object"]["spec"]["affinity"] = json!({"nodeAffinity": "DEEP"}),
                false,
            ),
            (
                |r| r["request"]["object"]["spec"]["volumes"][0]["extra"] = json!("DEEP"),
                true,
            ),
            (|r| r["request"]["extra"] = json!("DEEP"), true),
        ];
        for (i, (place, decodes)) in placed.iter().enumerate() {
            let mut review: Value = serde_json::from_str(POD).unwrap();
            place(&mut review);
            let body = serde_json::to_string(&review)
                .unwrap()
                .replacen("\"DEEP\"", &deep, 1);
            assert!(body.len() > 200_000, "placement {i}");
            match decode(body.as_bytes()) {
                Ok(req) => assert!(*decodes && req.object.is_some(), "placement {i}"),
                Err(e) => assert!(
                    !decodes
                        && matches!(&e, ReviewError::Decode(m) if m.contains("recursion limit")),
                    "placement {i}: {e}"
                ),
            }
        }
    }

    /// JSON is UTF-8: a body with any other byte sequence, in a string that is read or in one
    /// that is skipped, is a bad body (the body is checked once, as a whole, before decoding).
    #[test]
    fn a_body_that_is_not_utf8_is_a_bad_body() {
        for placed in ["echo-server", "kube-api-access-9tq4m"] {
            let mut body = POD.as_bytes().to_vec();
            let at = POD.find(placed).expect("the fixture names it");
            body[at] = 0xff;
            match decode(&body) {
                Err(ReviewError::Decode(m)) => assert!(m.contains("UTF-8"), "{placed}: {m}"),
                other => panic!("{placed}: {:?}", other.map(|r| r.uid)),
            }
        }
    }

    /// The request's kind decides; an object that says otherwise is not the API server's, and
    /// its spec, read for the kind it claims, must not be read as another.
    #[test]
    fn an_object_whose_kind_disagrees_with_the_request_is_refused() {
        let mut review: Value = serde_json::from_str(POD).unwrap();
        review["request"]["kind"] =
            serde_json::json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        let body = serde_json::to_vec(&review).unwrap();
        let err = decode(&body).unwrap_err();
        assert!(
            matches!(&err, ReviewError::KindMismatch { declared: Kind::Pod, kind, .. } if kind == "Deployment"),
            "{err}"
        );
        // The same on UPDATE's old object.
        let mut review: Value = serde_json::from_str(POD).unwrap();
        review["request"]["operation"] = "UPDATE".into();
        let mut old = review["request"]["object"].clone();
        old["kind"] = "Deployment".into();
        old["apiVersion"] = "apps/v1".into();
        review["request"]["oldObject"] = old;
        let body = serde_json::to_vec(&review).unwrap();
        assert!(matches!(
            decode(&body),
            Err(ReviewError::KindMismatch {
                declared: Kind::Workload(_),
                ..
            })
        ));
    }

    /// Extraction and placement read the same from the cut-down spec as from the whole one,
    /// errors included, for every kind with a pod spec and for odd shapes.
    #[test]
    fn extractors_read_the_same_from_the_spec_they_are_given() {
        use crate::workload::{EmptyCatalog, ExtractOptions, extract};
        let pod: Value = serde_json::from_str(POD).unwrap();
        let pod_spec = pod["request"]["object"]["spec"].to_string();
        let template = format!(
            r#"{{"replicas": 2, "template": {{"metadata": {{"labels": {{"a": "b"}}}}, "spec": {pod_spec}}}}}"#
        );
        let cron = format!(r#"{{"schedule": "* * * * *", "jobTemplate": {{"spec": {template}}}}}"#);
        let with_scheduling = r#"{"nodeName": "n1", "nodeSelector": {"kubernetes.io/arch": "arm64"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}},
            "tolerations": [{"key": "arch", "operator": "Exists"}], "imagePullSecrets": [{"name": "pull"}],
            "serviceAccountName": "builder", "volumes": [{"name": "v", "emptyDir": {}}],
            "initContainers": [{"name": "init", "image": "busybox", "resources": {}}],
            "containers": [{"name": "app", "image": "nginx", "env": [{"name": "TEKTON_PLATFORM_COMMANDS", "value": "{}"}], "ports": [{"containerPort": 80}]}],
            "ephemeralContainers": [{"name": "debug", "image": "alpine"}]}"#;
        let daemon_set = format!(r#"{{"template": {{"spec": {with_scheduling}}}}}"#);
        let cases: Vec<((&str, &str), String)> = vec![
            (("", "Pod"), pod_spec.clone()),
            (("", "Pod"), with_scheduling.to_string()),
            (("apps", "Deployment"), template.clone()),
            (("apps", "DaemonSet"), daemon_set),
            (("batch", "Job"), template.clone()),
            (("batch", "CronJob"), cron),
            // Odd shapes: each must end in the same error or the same targets.
            (("", "Pod"), r#"{"containers": null}"#.into()),
            (("", "Pod"), r#"{"containers": "nope"}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a"}, 7]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": 7}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": "x"}], "containers": [{"name": "b", "image": "y"}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": "x", "image": "z"}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": "x", "env": [{"name": 5}]}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": "x", "env": {"name": "e"}}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": "x", "env": [{"name": "TEKTON_PLATFORM_COMMANDS", "value": "{\"linux/arm64\": []}"}, {"name": "TEKTON_PLATFORM_COMMANDS", "value": "{\"linux/amd64\": []}"}, {"name": "OTHER", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": "x", "env": [{"name": "TEKTON_PLATFORM_COMMANDS", "value": "not json"}]}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": "x", "env": [{"name": "E", "value": 5}]}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": "x", "env": [{"name": "E", "valueFrom": 5}, "E=1"]}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": "x", "env": [{"value": "v"}, {"name": null}, {"name": "E", "value": null}, {"name": "E", "value": {}}, {"name": "E", "value": ["v"]}]}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": "x", "env": [{"name": "E", "value": "v", "name": "TEKTON_PLATFORM_COMMANDS"}, {"name": "TEKTON_PLATFORM_COMMANDS", "name": "E", "value": "{\"linux/s390x\": []}"}]}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": "x", "env": [{"name": "TEKTON\u005fPLATFORM_COMMANDS", "value": "{\"linux\/riscv64\": []}"}, {"name": "E\n", "value": "\u00e9"}]}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "a", "image": "x", "env": [true, 1.5, -3, null, [], {}]}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "step-a", "image": "x", "command": ["/tekton/bin/entrypoint"], "args": ["--"], "env": [{"name": "TEKTON_PLATFORM_COMMANDS", "value": "{\"linux/arm64\": []}"}]}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "step-a", "image": "x", "command": "/tekton/bin/entrypoint", "args": [1, null]}]}"#.into()),
            (("", "Pod"), r#"{"containers": [{"name": "step-a", "image": "x", "command": null, "args": {"a": "b"}}]}"#.into()),
            (("", "Pod"), r#"{"containers": {"name": "a", "image": "x"}, "tolerations": "all"}"#.into()),
            (("", "Pod"), r#"{}"#.into()),
            (("", "Pod"), r#"[]"#.into()),
            (("", "Pod"), r#"[[{"name": "a", "image": "x"}]]"#.into()),
            (("", "Pod"), r#"{"containers": [["a", "x", null]]}"#.into()),
            (("", "Pod"), r#"{"nodeSelector": null, "containers": [{"name": "a", "image": null, "env": null}]}"#.into()),
            (("apps", "Deployment"), r#"{"template": null}"#.into()),
            (("apps", "Deployment"), r#"{"template": {"spec": 5}}"#.into()),
            (("apps", "Deployment"), r#"{"template": {"metadata": {}}}"#.into()),
            (("apps", "Deployment"), r#"{"template": {"spec": {"containers": []}}, "template": {"spec": {"containers": [{"name": "c", "image": "d"}]}}}"#.into()),
        ];
        let options = ExtractOptions {
            trust_tekton_platforms: true,
            ..ExtractOptions::default()
        };
        // The fixture's spec takes the cut-down path: what no extractor reads is gone.
        let mut req = decode(&review_of(("", "Pod"), &pod_spec, true)).unwrap();
        let (subject, _) = subjects(&mut req).unwrap();
        let spec = &subject.object["spec"];
        assert!(spec.get("volumes").is_none() && spec.get("restartPolicy").is_none());
        assert!(spec["containers"][0].get("readinessProbe").is_none());
        // Only TEKTON_PLATFORM_COMMANDS is ever read of an env.
        assert_eq!(spec["containers"][0]["env"], serde_json::json!([]));
        assert_eq!(spec["serviceAccountName"], "default");
        for ((kind, spec), declared) in cases.iter().flat_map(|case| [(case, true), (case, false)])
        {
            let (kind, spec) = (*kind, spec.as_str());
            let mut req = decode(&review_of(kind, spec, declared)).unwrap();
            let (subject, _) = subjects(&mut req).expect("reviewed");
            let mut whole = subject.object.clone();
            whole["spec"] = serde_json::from_str(spec).unwrap();
            let seen = extract(subject.kind, &subject.object, &EmptyCatalog, &options);
            let all = extract(subject.kind, &whole, &EmptyCatalog, &options);
            assert_eq!(seen, all, "{kind:?} {spec}");
            if subject.kind == Kind::Pod {
                for field in ["nodeName", "nodeSelector", "affinity"] {
                    assert_eq!(
                        subject.object["spec"][field], whole["spec"][field],
                        "{spec}"
                    );
                }
            }
        }
    }
}
