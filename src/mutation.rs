//! `POST /mutate`: the placement mode's front door. The same subject and pipeline as the
//! validating webhook ([`crate::admission`]); what differs is the answer: never a denial, at most
//! a JSON Patch from [`crate::placement`] that steers a Pod to the nodes its images run on.
//!
//! Only Pods at CREATE are steered. Workload templates never are: GitOps tools (Argo CD, Flux)
//! would see their Deployment differ from git and fight the webhook forever; the Pods those
//! templates stamp out are steered one by one instead.

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use json_patch::Patch;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::Value;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::admission::{self, Admission, ReviewObject};
use crate::metrics::MutationLabels;
use crate::placement::{self, Leave, Plan};
use crate::policy::{self, Mode};
use crate::subject::Kind;

/// Where the MutatingWebhookConfiguration sends Pods.
pub const MUTATE_PATH: &str = "/mutate";

/// The review as JSON with `patch` as the API documents it: base64 of the JSON Patch.
///
/// kube's `AdmissionResponse::with_patch` stores the bytes in a `Vec<u8>` that serde writes as an
/// array of numbers (kube-rs/kube#1781); `admission.k8s.io/v1` says `[]byte`, which Go's JSON
/// encoding writes, and the API server documents, as a base64 string. So the two fields are set
/// here instead.
fn with_patch(response: AdmissionResponse, patch: &Patch) -> Result<Value, serde_json::Error> {
    let mut review = serde_json::to_value(response.into_review())?;
    let bytes = serde_json::to_vec(patch)?;
    review["response"]["patch"] = Value::String(BASE64_STANDARD.encode(bytes));
    review["response"]["patchType"] = Value::String("JSONPatch".into());
    Ok(review)
}

impl Admission {
    /// Answers one review in placement mode: always allowed, with a patch when the Pod is steered.
    /// Answered by `due` (see [`Admission::review_by`]).
    pub async fn steer(
        &self,
        mut req: AdmissionRequest<ReviewObject>,
        due: tokio::time::Instant,
    ) -> Value {
        let span = info_span!(
            "mutate",
            uid = %req.uid,
            kind = %req.kind.kind,
            namespace = req.namespace.as_deref().unwrap_or(""),
            object = %admission::object_name(&req),
            operation = admission::operation_label(&req.operation),
            outcome = tracing::field::Empty,
        );
        let plan = self.plan(&mut req, due).instrument(span.clone()).await;
        let mut response = AdmissionResponse::from(&req);
        let (review, outcome) = match plan {
            Plan::Leave(why) => {
                if why == Leave::Unselectable {
                    // The developer learns why the pod was not steered, and what would let it be.
                    span.in_scope(|| info!("not steered: node labels do not say where it runs"));
                    response.warnings = Some(vec![policy::unselectable_warning()]);
                }
                (serde_json::to_value(response.into_review()), why.label())
            }
            Plan::Steer(steering) => {
                span.in_scope(|| info!(restriction = %steering.restriction, "steered"));
                // kubectl shows it: the developer learns where the Pod went and why.
                let restriction = steering.restriction.to_string();
                let warning = policy::steered_warning(&restriction, placement::ANNOTATION);
                response.warnings = Some(vec![warning]);
                (with_patch(response, &steering.patch), "steered")
            }
        };
        span.record("outcome", outcome);
        span.in_scope(|| debug!("reviewed"));
        self.metrics
            .mutations
            .get_or_create(&MutationLabels { outcome })
            .inc();
        review.unwrap_or_else(|e| {
            // Serialising plain JSON values cannot fail; answer "allowed" all the same.
            warn!(error = %e, "answer not serialisable");
            serde_json::json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": req.uid, "allowed": true},
            })
        })
    }

    async fn plan(
        &self,
        req: &mut AdmissionRequest<ReviewObject>,
        due: tokio::time::Instant,
    ) -> Plan {
        let pod_create = matches!(req.operation, Operation::Create)
            && req.sub_resource.as_deref().unwrap_or("").is_empty()
            && Kind::of(&req.kind.group, &req.kind.kind) == Some(Kind::Pod);
        // Audit promises not to interfere; steering is interfering.
        let mode = self.mode_for(req.namespace.as_deref().unwrap_or_default());
        if !pod_create || matches!(mode, None | Some(Mode::Audit)) {
            return Plan::Leave(Leave::NotApplicable);
        }
        // Read before `subjects` keeps only what extraction needs (ownerReferences are dropped).
        if let Some(object) = &req.object
            && let Some(why) = placement::never_steered(&object.metadata, &object.spec_value())
        {
            return Plan::Leave(why);
        }
        let Some((subject, _)) = admission::subjects(req) else {
            return Plan::Leave(Leave::NotApplicable);
        };
        match self
            .pipeline
            .review(self.request(req, &subject, None, due))
            .await
        {
            Ok(reviewed) => {
                placement::plan(&subject.object, &reviewed.checked, &self.cluster.nodes())
            }
            Err(e) => {
                debug!(error = %e, "object not readable; left alone");
                Plan::Leave(Leave::Unknown)
            }
        }
    }
}
