//! What `scan` lists, page by page: the kinds the webhook reviews, less what their owners stand
//! for (a Deployment's ReplicaSets, a CronJob's Jobs, a PipelineRun's TaskRuns), and Tekton runs
//! only while they run.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::Value;

use crate::subject::{Kind, Workload};

/// Objects per list request: what one page holds in memory.
pub const PAGE: u32 = 250;
/// Pages of one kind read at most (two and a half million objects): a server that keeps handing
/// out continue tokens cannot keep the scan listing forever.
const MAX_PAGES: usize = 10_000;
/// Expired snapshots resumed from, per page at most.
const MAX_RESUMES: usize = 3;

/// One kind `scan` lists.
#[derive(Debug, Clone)]
pub struct Source {
    pub kind: Kind,
    pub resource: ApiResource,
}

impl Source {
    /// Every kind the webhook reviews, workloads before the pods they make.
    pub fn all() -> Vec<Source> {
        use Workload::*;
        let source = |group: &str, version: &str, kind: Kind, plural: &str| Source {
            kind,
            resource: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, version, kind.name()),
                plural,
            ),
        };
        vec![
            source("apps", "v1", Kind::Workload(Deployment), "deployments"),
            source("apps", "v1", Kind::Workload(StatefulSet), "statefulsets"),
            source("apps", "v1", Kind::Workload(DaemonSet), "daemonsets"),
            source("apps", "v1", Kind::Workload(ReplicaSet), "replicasets"),
            source(
                "",
                "v1",
                Kind::Workload(ReplicationController),
                "replicationcontrollers",
            ),
            source("batch", "v1", Kind::Workload(CronJob), "cronjobs"),
            source("batch", "v1", Kind::Workload(Job), "jobs"),
            source("", "v1", Kind::Pod, "pods"),
            source("tekton.dev", "v1", Kind::PipelineRun, "pipelineruns"),
            source("tekton.dev", "v1", Kind::TaskRun, "taskruns"),
        ]
    }

    /// Tekton's kinds exist only where Tekton is installed; their absence is no error.
    pub fn optional(&self) -> bool {
        matches!(self.kind, Kind::PipelineRun | Kind::TaskRun)
    }
}

/// Lists one kind a page at a time (`limit`/`continue`), so memory holds one page, not the
/// cluster.
pub struct Pager {
    api: Api<DynamicObject>,
    token: Option<String>,
    pages: usize,
    done: bool,
    /// The list's snapshot expired between two pages and the rest was read from a newer one.
    pub resumed: bool,
}

impl Pager {
    pub fn new(client: &Client, source: &Source, namespace: Option<&str>) -> Self {
        let api = match namespace {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &source.resource),
            None => Api::all_with(client.clone(), &source.resource),
        };
        Self {
            api,
            token: None,
            pages: 0,
            done: false,
            resumed: false,
        }
    }

    /// The next page, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<DynamicObject>>, kube::Error> {
        if self.done || self.pages >= MAX_PAGES {
            return Ok(None);
        }
        let mut resumes = 0;
        let list = loop {
            let mut params = ListParams::default().limit(PAGE);
            if let Some(token) = &self.token {
                params = params.continue_token(token);
            }
            match self.api.list(&params).await {
                Ok(list) => break list,
                // Reviewing a page can take longer than etcd keeps the list's snapshot (five
                // minutes by default): go on from the same place in a newer one rather than
                // start a large scan again; a few times per page at most.
                Err(e) => match resume_token(&e) {
                    Some(token) if resumes < MAX_RESUMES => {
                        resumes += 1;
                        self.resumed = true;
                        self.token = Some(token);
                    }
                    _ => return Err(e),
                },
            }
        };
        self.pages += 1;
        self.token = list.metadata.continue_.filter(|t| !t.is_empty());
        self.done = self.token.is_none();
        Ok(Some(list.items))
    }
}

/// The continue token a 410 "the list's snapshot expired" answer carries, for going on from
/// the same place in a newer snapshot (the API conventions' "inconsistent continuation").
fn resume_token(error: &kube::Error) -> Option<String> {
    match error {
        kube::Error::Api(status) if status.code == 410 => status
            .metadata
            .as_ref()?
            .continue_
            .clone()
            .filter(|t| !t.is_empty()),
        _ => None,
    }
}

/// Whether `scan` reviews this object itself, or something else stands for it. An object with a
/// controller is reviewed through its owner: its template is the owner's, and a finding there
/// says what to change. (`ownerReferences` are the author's claim; trusting one here only leaves
/// an object to its owner's review, and the pods it runs are still checked against their nodes.)
pub fn reviewed_on_its_own(kind: Kind, object: &Value) -> bool {
    let owners: Vec<OwnerReference> =
        serde_json::from_value(object["metadata"]["ownerReferences"].clone()).unwrap_or_default();
    // `v1` is the core group's; `apps/v1` the `apps` group's.
    fn group(api_version: &str) -> &str {
        api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }
    let owned_by = |owner_group: &str, owner_kind: &str| {
        owners
            .iter()
            .any(|o| o.kind == owner_kind && group(&o.api_version) == owner_group)
    };
    // Only an owner `scan` reviews stands for what it owns: a ReplicaSet of an Argo Rollout, a
    // Pod of an operator's resource, would otherwise be reviewed by nobody.
    match kind {
        Kind::Pod => ![
            ("apps", "ReplicaSet"),
            ("apps", "StatefulSet"),
            ("apps", "DaemonSet"),
            ("", "ReplicationController"),
            ("batch", "Job"),
            ("tekton.dev", "TaskRun"),
        ]
        .iter()
        .any(|(g, k)| owned_by(g, k)),
        Kind::Workload(Workload::ReplicaSet) => !owned_by("apps", "Deployment"),
        Kind::Workload(Workload::ReplicationController) => true,
        Kind::Workload(Workload::Job) => !owned_by("batch", "CronJob"),
        Kind::TaskRun => !owned_by("tekton.dev", "PipelineRun") && active(object),
        Kind::PipelineRun => active(object),
        Kind::Workload(_) => true,
    }
}

/// A Tekton run still running or yet to start: its `Succeeded` condition is absent or
/// `Unknown`. A finished run starts no more pods.
fn active(run: &Value) -> bool {
    run["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Succeeded")
        .is_none_or(|c| c["status"] == "Unknown")
}

/// The object as the pipeline reads it, without what only costs memory (managedFields, the
/// last-applied copy). `status` stays: a pod's says what runs where.
pub fn object_json(object: DynamicObject) -> Value {
    let mut object = object;
    object.metadata.managed_fields = None;
    if let Some(annotations) = &mut object.metadata.annotations {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    serde_json::to_value(object).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_owner(api_version: &str, kind: &str) -> Value {
        json!({"metadata": {"name": "x", "ownerReferences": [
            {"apiVersion": api_version, "kind": kind, "name": "o", "uid": "u"}]}})
    }

    #[test]
    fn owners_stand_for_what_they_own() {
        let bare = json!({"metadata": {"name": "x"}});
        let rs = Kind::Workload(Workload::ReplicaSet);
        let job = Kind::Workload(Workload::Job);
        let cases = [
            (Kind::Pod, bare.clone(), true),
            (Kind::Pod, with_owner("apps/v1", "ReplicaSet"), false),
            (Kind::Pod, with_owner("v1", "ReplicationController"), false),
            (Kind::Pod, with_owner("tekton.dev/v1", "TaskRun"), false),
            // Owners `scan` does not review leave the object to be reviewed on its own.
            (
                Kind::Pod,
                with_owner("argoproj.io/v1alpha1", "Workflow"),
                true,
            ),
            (
                Kind::Pod,
                with_owner("sparkoperator.k8s.io/v1beta2", "SparkApplication"),
                true,
            ),
            (rs, bare.clone(), true),
            (rs, with_owner("apps/v1", "Deployment"), false),
            (rs, with_owner("argoproj.io/v1alpha1", "Rollout"), true),
            (job, bare.clone(), true),
            (job, with_owner("batch/v1", "CronJob"), false),
            // Another group's CronJob is not batch's: the Job is still its own.
            (job, with_owner("example.com/v1", "CronJob"), true),
            (
                Kind::Workload(Workload::Deployment),
                with_owner("argoproj.io/v1alpha1", "Rollout"),
                true,
            ),
            (
                Kind::TaskRun,
                with_owner("tekton.dev/v1", "PipelineRun"),
                false,
            ),
            (Kind::TaskRun, bare.clone(), true),
        ];
        for (kind, object, want) in cases {
            assert_eq!(reviewed_on_its_own(kind, &object), want, "{kind} {object}");
        }
    }

    #[test]
    fn an_expired_list_goes_on_from_the_token_it_is_given() {
        let expired = |token: Option<&str>| {
            let mut status = kube::core::Status::failure("too old", "Expired").with_code(410);
            status.metadata = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta {
                continue_: token.map(str::to_string),
                ..Default::default()
            });
            kube::Error::Api(Box::new(status))
        };
        assert_eq!(resume_token(&expired(Some("abc"))).as_deref(), Some("abc"));
        assert_eq!(resume_token(&expired(None)), None);
        assert_eq!(resume_token(&expired(Some(""))), None);
        let forbidden = kube::Error::Api(Box::new(
            kube::core::Status::failure("no", "Forbidden").with_code(403),
        ));
        assert_eq!(resume_token(&forbidden), None);
    }

    #[test]
    fn finished_runs_are_left_alone() {
        let run = |conditions: Value| json!({"metadata": {"name": "r"}, "status": {"conditions": conditions}});
        let succeeded = |status: &str| json!([{"type": "Succeeded", "status": status}]);
        assert!(reviewed_on_its_own(
            Kind::PipelineRun,
            &json!({"metadata": {"name": "r"}})
        ));
        assert!(reviewed_on_its_own(
            Kind::PipelineRun,
            &run(succeeded("Unknown"))
        ));
        assert!(!reviewed_on_its_own(
            Kind::PipelineRun,
            &run(succeeded("True"))
        ));
        assert!(!reviewed_on_its_own(
            Kind::TaskRun,
            &run(succeeded("False"))
        ));
        assert!(reviewed_on_its_own(Kind::TaskRun, &run(json!([]))));
    }
}
