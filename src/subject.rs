//! The subject of a review: an object whose kind has been decided, once, by API group *and* kind.
//!
//! This is the only place that maps a `(group, kind)` pair to what archgate does with it: a
//! custom `example.com/v1 Job` is not a batch Job and is never read as one. Both front doors build
//! subjects here (the webhook from an AdmissionRequest, `archgate check` from YAML documents) and
//! hand them to [`crate::pipeline`].

use std::fmt;

use serde_json::Value;

/// The built-in kinds whose pod template archgate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    ReplicationController,
    Job,
    CronJob,
}

impl Workload {
    /// Where the pod spec sits in the object.
    pub fn spec_path(self) -> &'static [&'static str] {
        match self {
            Self::CronJob => &["spec", "jobTemplate", "spec", "template", "spec"],
            _ => &["spec", "template", "spec"],
        }
    }
}

/// What archgate reviews. Anything else is allowed without a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Pod,
    Workload(Workload),
    PipelineRun,
    TaskRun,
}

impl Kind {
    /// The kind for an API group and kind, or `None` when archgate does not review it.
    /// `extensions` is where Deployments, DaemonSets and ReplicaSets lived before `apps`; the API
    /// server converts under `matchPolicy: Equivalent`, but files written for old clusters say it.
    pub fn of(group: &str, kind: &str) -> Option<Self> {
        use Workload::*;
        let apps = group == "apps" || group == "extensions";
        Some(match (group, kind) {
            ("", "Pod") => Self::Pod,
            ("", "ReplicationController") => Self::Workload(ReplicationController),
            (_, "Deployment") if apps => Self::Workload(Deployment),
            (_, "DaemonSet") if apps => Self::Workload(DaemonSet),
            (_, "ReplicaSet") if apps => Self::Workload(ReplicaSet),
            ("apps", "StatefulSet") => Self::Workload(StatefulSet),
            ("batch", "Job") => Self::Workload(Job),
            ("batch", "CronJob") => Self::Workload(CronJob),
            ("tekton.dev", "PipelineRun") => Self::PipelineRun,
            ("tekton.dev", "TaskRun") => Self::TaskRun,
            _ => return None,
        })
    }

    /// The kind from a manifest's `apiVersion` (`apps/v1`, `v1`, `tekton.dev/v1`) and `kind`.
    pub fn of_api_version(api_version: &str, kind: &str) -> Option<Self> {
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        Self::of(group, kind)
    }

    /// The kind as users write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pod => "Pod",
            Self::PipelineRun => "PipelineRun",
            Self::TaskRun => "TaskRun",
            Self::Workload(w) => match w {
                Workload::Deployment => "Deployment",
                Workload::StatefulSet => "StatefulSet",
                Workload::DaemonSet => "DaemonSet",
                Workload::ReplicaSet => "ReplicaSet",
                Workload::ReplicationController => "ReplicationController",
                Workload::Job => "Job",
                Workload::CronJob => "CronJob",
            },
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An object archgate reviews: its kind, and the object as extractors read it (`metadata` with
/// name, generateName, namespace and annotations; `spec`).
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub kind: Kind,
    pub object: Value,
}

impl Subject {
    /// A YAML/JSON document, or `None` when it is not a kind archgate reviews.
    pub fn from_document(document: Value) -> Option<Self> {
        let kind = Kind::of_api_version(
            document["apiVersion"].as_str().unwrap_or_default(),
            document["kind"].as_str().unwrap_or_default(),
        )?;
        Some(Self {
            kind,
            object: document,
        })
    }

    /// The namespace the object lives in (empty when not set).
    pub fn namespace(&self) -> &str {
        self.object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }

    /// `Deployment web`, or `Pod web-*` for a name the server has not chosen yet.
    pub fn display_name(&self) -> String {
        format!(
            "{} {}",
            self.kind,
            crate::workload::object_name(&self.object)
        )
    }
}

/// `kind: List` (what `kubectl get -o yaml` prints) and typed lists (`PodList`, ...) hold their
/// objects in `items`; everything else is one object. Lists inside lists are not a thing the API
/// returns, so one level is expanded.
///
/// The API server leaves `apiVersion` and `kind` out of a typed list's items (the list says
/// them once), so an item of a `<Kind>List` without its own takes `<Kind>` and the list's
/// `apiVersion`: without them no item would be a kind archgate reviews, and the list would pass
/// unread. Items of a plain `List` can be of any kind and keep only what they say.
pub fn expand_lists(document: Value) -> Vec<Value> {
    let is_list = document["kind"]
        .as_str()
        .is_some_and(|k| k.ends_with("List"))
        && document["items"].is_array();
    if !is_list {
        return vec![document];
    }
    let Value::Object(mut map) = document else {
        return Vec::new();
    };
    let item_kind = map["kind"]
        .as_str()
        .and_then(|k| k.strip_suffix("List"))
        .filter(|k| !k.is_empty())
        .map(|k| Value::String(k.to_string()));
    let api_version = map.get("apiVersion").filter(|v| v.is_string()).cloned();
    let Some(Value::Array(items)) = map.remove("items") else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| match item {
            Value::Object(mut item) => {
                if let Some(kind) = &item_kind {
                    item.entry("kind").or_insert_with(|| kind.clone());
                    if let Some(api_version) = &api_version {
                        item.entry("apiVersion")
                            .or_insert_with(|| api_version.clone());
                    }
                }
                Some(Value::Object(item))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kind_is_decided_by_group_and_kind() {
        let cases = [
            ("v1", "Pod", Some(Kind::Pod)),
            (
                "apps/v1",
                "Deployment",
                Some(Kind::Workload(Workload::Deployment)),
            ),
            (
                "extensions/v1beta1",
                "DaemonSet",
                Some(Kind::Workload(Workload::DaemonSet)),
            ),
            ("batch/v1", "Job", Some(Kind::Workload(Workload::Job))),
            (
                "batch/v1",
                "CronJob",
                Some(Kind::Workload(Workload::CronJob)),
            ),
            ("tekton.dev/v1", "PipelineRun", Some(Kind::PipelineRun)),
            ("tekton.dev/v1beta1", "TaskRun", Some(Kind::TaskRun)),
            // Same kind, another group: not ours.
            ("example.com/v1", "Job", None),
            ("example.com/v1", "Deployment", None),
            ("example.com/v1", "Pod", None),
            ("argoproj.io/v1alpha1", "PipelineRun", None),
            ("v1", "ConfigMap", None),
            ("apps/v1", "Pod", None),
        ];
        for (api_version, kind, want) in cases {
            assert_eq!(
                Kind::of_api_version(api_version, kind),
                want,
                "{api_version} {kind}"
            );
        }
    }

    #[test]
    fn lists_are_expanded_one_level() {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}},
            "not an object",
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "b"}},
        ]});
        let items = expand_lists(list);
        assert_eq!(items.len(), 2);
        assert_eq!(items[1]["kind"], "Deployment");
        let pod = json!({"apiVersion": "v1", "kind": "Pod"});
        assert_eq!(expand_lists(pod.clone()), vec![pod]);
        // A kind that ends in "List" but has no items is an object of its own.
        let odd = json!({"apiVersion": "example.com/v1", "kind": "AllowList", "spec": {}});
        assert_eq!(expand_lists(odd.clone()), vec![odd]);
    }

    /// Before: the items of a `DeploymentList` (as the API returns it, items without apiVersion
    /// or kind) were no kind archgate reviews, and `check` passed them unread.
    #[test]
    fn typed_list_items_take_the_list_kind() {
        let list = json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "items": [
            {"metadata": {"name": "web"}, "spec": {}},
            // An item that says what it is keeps it.
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"}},
            {"kind": "Deployment", "metadata": {"name": "api"}},
        ]});
        let kinds: Vec<Option<Kind>> = expand_lists(list)
            .into_iter()
            .map(|item| Subject::from_document(item).map(|s| s.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                Some(Kind::Workload(Workload::Deployment)),
                Some(Kind::Workload(Workload::StatefulSet)),
                Some(Kind::Workload(Workload::Deployment)),
            ]
        );
        let pods =
            json!({"apiVersion": "v1", "kind": "PodList", "items": [{"metadata": {"name": "p"}}]});
        let items = expand_lists(pods);
        assert_eq!(
            Subject::from_document(items[0].clone()).map(|s| s.kind),
            Some(Kind::Pod)
        );
        assert_eq!(items[0]["apiVersion"], "v1");
        // `kind: List` names no kind for its items: one without its own stays unreviewed.
        let list =
            json!({"apiVersion": "v1", "kind": "List", "items": [{"metadata": {"name": "x"}}]});
        let items = expand_lists(list);
        assert_eq!(items.len(), 1);
        assert_eq!(Subject::from_document(items[0].clone()), None);
    }
}
