//! What `scan` found, and how it is written: text grouped by namespace and owner, JSON, or
//! wgpolicyk8s.io `PolicyReport`s (one per namespace) and a `ClusterPolicyReport` (for
//! cluster-scoped objects, if any), the shape Kyverno writes and Policy Reporter reads
//! (kubernetes-sigs/wg-policy-prototypes, `v1alpha2`: top-level `summary` and `results`, each
//! result with `policy`, `rule`, `result`, `message`, `resources`, `properties`).
//!
//! The words of each finding are the policy's (the same sentences the webhook denies with);
//! this module only arranges them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Value, json};

/// What a line says about its object, as a PolicyReport result would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Enforce mode would deny the object.
    Fail,
    /// A pod runs now on a node whose platform its image lacks.
    Wrong,
    /// Found, but the webhook would only warn (`--on-missing-image warn`).
    Warn,
    /// Could not be checked (a registry that could not be asked, a bundle that could not be
    /// fetched, an object that could not be read).
    Error,
    /// Nothing to check against: no node the pod could land on.
    Skip,
    /// How to fix the lines before it (text only; a property of the results in reports).
    Hint,
}

impl Status {
    fn tag(self) -> &'static str {
        match self {
            Status::Fail => "FAIL",
            Status::Wrong => "WRONG",
            Status::Warn => "warn",
            Status::Error => "ERROR",
            Status::Skip => "skip",
            Status::Hint => "hint",
        }
    }

    /// The PolicyReport `result`, or `None` for a hint.
    fn result(self) -> Option<&'static str> {
        Some(match self {
            Status::Fail | Status::Wrong => "fail",
            Status::Warn => "warn",
            Status::Error => "error",
            Status::Skip => "skip",
            Status::Hint => return None,
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub status: Status,
    /// The finding as the webhook words it.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub available: Vec<String>,
    /// The node a running pod is on (running checks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Entry {
    pub fn new(status: Status, message: String) -> Self {
        Self {
            status,
            message,
            container: None,
            image: None,
            missing: Vec::new(),
            available: Vec::new(),
            node: None,
        }
    }

    /// Whether this line comes from the running check (its own PolicyReport rule).
    fn running(&self) -> bool {
        self.node.is_some() || self.status == Status::Wrong
    }
}

/// The object a group of lines is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectId {
    /// Empty for a cluster-scoped object.
    pub namespace: String,
    pub kind: String,
    pub name: String,
    #[serde(skip)]
    pub api_version: String,
    #[serde(skip)]
    pub uid: Option<String>,
}

impl ObjectId {
    /// `Deployment web`: how lines name their object within its namespace.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }
}

/// The lines about one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub object: ObjectId,
    /// The object's images were reviewed (a workload, a bare pod, a run), not only its running
    /// containers checked against their nodes.
    pub reviewed: bool,
    pub entries: Vec<Entry>,
}

/// Everything one scan found.
#[derive(Debug, Default)]
pub struct Report {
    pub groups: Vec<Group>,
    /// Namespaces in which something was reviewed or checked.
    pub namespaces: BTreeSet<String>,
    /// Namespaces whose `archgate.io/mode` label makes the webhook only warn or audit there: the
    /// text says so in the namespace's heading, since enforce mode is what the lines describe.
    pub lenient: BTreeMap<String, crate::policy::Mode>,
    /// Said once on stderr (Tekton not installed, ...).
    pub notes: Vec<String>,
}

/// The counts the summary line and the JSON summary give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub objects: usize,
    pub namespaces: usize,
    pub would_be_denied: usize,
    pub running_on_wrong_platform: usize,
    pub not_checked: usize,
}

impl Report {
    pub fn summary(&self) -> Summary {
        let count = |f: &dyn Fn(&Group) -> bool| self.groups.iter().filter(|g| f(g)).count();
        let has = |g: &Group, s: Status| g.entries.iter().any(|e| e.status == s);
        Summary {
            objects: count(&|g| g.reviewed),
            namespaces: self.namespaces.len(),
            would_be_denied: count(&|g| g.reviewed && has(g, Status::Fail)),
            running_on_wrong_platform: count(&|g| has(g, Status::Wrong)),
            not_checked: count(&|g| has(g, Status::Error)),
        }
    }

    /// `0` clean, `1` something would be denied or runs on the wrong platform (whatever else
    /// happened), `2` nothing found wrong but something could not be checked: `check`'s codes.
    pub fn exit_code(&self) -> i32 {
        let s = self.summary();
        if s.would_be_denied + s.running_on_wrong_platform > 0 {
            crate::check::EXIT_FINDINGS
        } else if s.not_checked > 0 {
            crate::check::EXIT_TROUBLE
        } else {
            crate::check::EXIT_OK
        }
    }

    /// Groups in report order: by namespace, then object; an object's lines in the order found.
    fn sorted(&self) -> Vec<&Group> {
        let mut groups: Vec<&Group> = self.groups.iter().collect();
        groups.sort_by(|a, b| a.object.cmp(&b.object));
        groups
    }

    /// Text: each namespace with something to say, its lines indented under it, then the
    /// summary line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut current: Option<&str> = None;
        for group in self.sorted().into_iter().filter(|g| !g.entries.is_empty()) {
            let namespace = group.object.namespace.as_str();
            if current != Some(namespace) {
                if current.is_some() {
                    out.push('\n');
                }
                match (namespace, self.lenient.get(namespace)) {
                    ("", _) => out.push_str("cluster-scoped\n"),
                    (ns, None) => out.push_str(&format!("namespace {ns}\n")),
                    (ns, Some(mode)) => out.push_str(&format!(
                        "namespace {ns} (archgate.io/mode: {mode}: the webhook does not deny here)\n"
                    )),
                }
                current = Some(namespace);
            }
            for entry in &group.entries {
                out.push_str(&format!("  {:<5} {}\n", entry.status.tag(), entry.message));
            }
        }
        if current.is_some() {
            out.push('\n');
        }
        out.push_str(&self.summary_line());
        out.push('\n');
        out
    }

    /// `scanned 42 objects in 7 namespaces: 3 would be denied, 1 pod running on the wrong
    /// platform`, with what could not be checked when something could not.
    pub fn summary_line(&self) -> String {
        let s = self.summary();
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut line = format!(
            "scanned {} in {}: {} would be denied, {} on the wrong platform",
            plural(s.objects, "object", "objects"),
            plural(s.namespaces, "namespace", "namespaces"),
            s.would_be_denied,
            plural(s.running_on_wrong_platform, "pod running", "pods running"),
        );
        if s.not_checked > 0 {
            line.push_str(&format!(
                ", {} could not be checked",
                plural(s.not_checked, "object", "objects")
            ));
        }
        line
    }

    /// `-o json`: the summary, every line but the hints with its object, and the notes.
    pub fn json(&self) -> Value {
        let findings: Vec<Value> = self
            .sorted()
            .into_iter()
            .flat_map(|g| {
                g.entries
                    .iter()
                    .filter(|e| e.status != Status::Hint)
                    .map(move |e| {
                        let mut line = serde_json::to_value(&g.object).unwrap_or_default();
                        if let (Some(map), Value::Object(entry)) = (
                            line.as_object_mut(),
                            serde_json::to_value(e).unwrap_or_default(),
                        ) {
                            map.extend(entry);
                        }
                        line
                    })
            })
            .collect();
        json!({
            "summary": self.summary(),
            "findings": findings,
            "notes": self.notes,
        })
    }

    /// A `PolicyReport` for every namespace scanned (a clean one too, so that applying it
    /// replaces an earlier report's failures) and a `ClusterPolicyReport` when a cluster-scoped
    /// object has results. `seconds`: when the scan ran (Unix time).
    pub fn policy_reports(&self, seconds: i64) -> Vec<Value> {
        let mut by_namespace: BTreeMap<&str, Vec<Value>> = self
            .namespaces
            .iter()
            .map(|ns| (ns.as_str(), Vec::new()))
            .collect();
        for group in self.sorted() {
            by_namespace
                .entry(group.object.namespace.as_str())
                .or_default()
                .extend(results(group, seconds));
        }
        by_namespace
            .into_iter()
            .filter(|(namespace, results)| !namespace.is_empty() || !results.is_empty())
            .map(|(namespace, results)| policy_report(namespace, results))
            .collect()
    }
}

/// The name of every report `scan` writes (one per namespace, and the cluster's).
pub const REPORT_NAME: &str = "archgate-scan";
/// `results[].policy`.
pub const POLICY: &str = "archgate-platforms";
/// `results[].rule`: what the webhook would decide about the object's images.
pub const RULE_IMAGES: &str = "image-platforms";
/// `results[].rule`: a running pod's image against its node.
pub const RULE_RUNNING: &str = "running-platform";

/// The report results for one object: one per line (hints become the `fix` property of the
/// failures before them), or one `pass` for a reviewed object with nothing to say.
fn results(group: &Group, seconds: i64) -> Vec<Value> {
    let hints: Vec<&str> = group
        .entries
        .iter()
        .filter(|e| e.status == Status::Hint)
        .map(|e| e.message.as_str())
        .collect();
    let mut reference = json!({
        "apiVersion": group.object.api_version,
        "kind": group.object.kind,
        "name": group.object.name,
    });
    if !group.object.namespace.is_empty() {
        reference["namespace"] = json!(group.object.namespace);
    }
    if let Some(uid) = &group.object.uid {
        reference["uid"] = json!(uid);
    }
    let resource = json!([reference]);
    let result = |rule: &str, result: &str, message: &str, properties: BTreeMap<&str, String>| {
        let mut r = json!({
            "policy": POLICY,
            "rule": rule,
            "result": result,
            "message": message,
            "source": "archgate",
            "category": "Image platforms",
            "scored": true,
            "resources": resource,
            "timestamp": {"seconds": seconds, "nanos": 0},
        });
        if result == "fail" {
            r["severity"] = json!("high");
        }
        if !properties.is_empty() {
            r["properties"] = json!(properties);
        }
        r
    };
    let mut out: Vec<Value> = group
        .entries
        .iter()
        .filter_map(|e| {
            let outcome = e.status.result()?;
            let mut properties = BTreeMap::new();
            let mut set = |key, value: Option<String>| {
                if let Some(v) = value.filter(|v| !v.is_empty()) {
                    properties.insert(key, v);
                }
            };
            set("container", e.container.clone());
            set("image", e.image.clone());
            set("missing", Some(e.missing.join(", ")));
            set("available", Some(e.available.join(", ")));
            set("node", e.node.clone());
            if outcome == "fail" && !e.running() {
                set("fix", Some(hints.join("; ")));
            }
            let rule = if e.running() {
                RULE_RUNNING
            } else {
                RULE_IMAGES
            };
            Some(result(rule, outcome, &e.message, properties))
        })
        .collect();
    let image_lines = group.entries.iter().any(|e| !e.running());
    if group.reviewed && !image_lines {
        out.push(result(
            RULE_IMAGES,
            "pass",
            "every image provides every platform of the nodes the pods may run on",
            BTreeMap::new(),
        ));
    }
    out
}

fn policy_report(namespace: &str, results: Vec<Value>) -> Value {
    let mut summary: BTreeMap<&str, usize> = ["pass", "fail", "warn", "error", "skip"]
        .into_iter()
        .map(|k| (k, 0))
        .collect();
    for r in &results {
        if let Some(count) = r["result"].as_str().and_then(|k| summary.get_mut(k)) {
            *count += 1;
        }
    }
    let mut metadata = json!({
        "name": REPORT_NAME,
        "labels": {"app.kubernetes.io/managed-by": "archgate"},
    });
    let kind = if namespace.is_empty() {
        "ClusterPolicyReport"
    } else {
        metadata["namespace"] = json!(namespace);
        "PolicyReport"
    };
    json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": kind,
        "metadata": metadata,
        "summary": summary,
        "results": results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(namespace: &str, kind: &str, name: &str) -> ObjectId {
        ObjectId {
            namespace: namespace.into(),
            kind: kind.into(),
            name: name.into(),
            api_version: "apps/v1".into(),
            uid: Some(format!("uid-{name}")),
        }
    }

    fn sample() -> Report {
        let fail = Entry {
            container: Some("app".into()),
            image: Some("r/arm:v1".into()),
            missing: vec!["linux/amd64".into()],
            available: vec!["linux/arm64".into()],
            ..Entry::new(
                Status::Fail,
                "Deployment web, container \"app\" image \"r/arm:v1\" is missing linux/amd64 (available: linux/arm64)".into(),
            )
        };
        let wrong = Entry {
            node: Some("arm-1".into()),
            ..Entry::new(
                Status::Wrong,
                "Pod web-1, container \"app\" image \"r/amd:v1\" is running on node arm-1 (linux/arm64), which the image does not provide (available: linux/amd64)".into(),
            )
        };
        Report {
            groups: vec![
                Group {
                    object: object("b", "Pod", "web-1"),
                    reviewed: false,
                    entries: vec![wrong],
                },
                Group {
                    object: object("a", "Deployment", "web"),
                    reviewed: true,
                    entries: vec![
                        fail,
                        Entry::new(Status::Hint, "rebuild for every platform: docker buildx build --platform linux/amd64,linux/arm64 ...".into()),
                    ],
                },
                Group {
                    object: object("a", "Deployment", "api"),
                    reviewed: true,
                    entries: vec![],
                },
            ],
            namespaces: ["a", "b", "c"].into_iter().map(String::from).collect(),
            lenient: [("b".to_string(), crate::policy::Mode::Warn)].into(),
            notes: vec![],
        }
    }

    #[test]
    fn text_groups_by_namespace_and_object() {
        let report = sample();
        let text = report.text();
        let want = [
            "namespace a",
            "  FAIL  Deployment web, container \"app\" image \"r/arm:v1\" is missing linux/amd64 (available: linux/arm64)",
            "  hint  rebuild for every platform: docker buildx build --platform linux/amd64,linux/arm64 ...",
            "",
            "namespace b (archgate.io/mode: warn: the webhook does not deny here)",
            "  WRONG Pod web-1, container \"app\" image \"r/amd:v1\" is running on node arm-1 (linux/arm64), which the image does not provide (available: linux/amd64)",
            "",
            "scanned 2 objects in 3 namespaces: 1 would be denied, 1 pod running on the wrong platform",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), want);
        assert_eq!(report.exit_code(), crate::check::EXIT_FINDINGS);
    }

    #[test]
    fn a_clean_scan_is_one_line_and_exit_zero() {
        let report = Report {
            groups: vec![Group {
                object: object("a", "Deployment", "api"),
                reviewed: true,
                entries: vec![],
            }],
            namespaces: ["a".to_string()].into(),
            lenient: BTreeMap::new(),
            notes: vec![],
        };
        assert_eq!(
            report.text(),
            "scanned 1 object in 1 namespace: 0 would be denied, 0 pods running on the wrong platform\n"
        );
        assert_eq!(report.exit_code(), crate::check::EXIT_OK);
        let mut troubled = report;
        troubled.groups[0]
            .entries
            .push(Entry::new(Status::Error, "x was not checked".into()));
        assert_eq!(troubled.exit_code(), crate::check::EXIT_TROUBLE);
        assert!(
            troubled
                .summary_line()
                .ends_with(", 1 object could not be checked")
        );
    }

    #[test]
    fn json_lines_carry_their_object_and_leave_hints_out() {
        let value = sample().json();
        assert_eq!(value["summary"]["wouldBeDenied"], 1);
        assert_eq!(value["summary"]["runningOnWrongPlatform"], 1);
        let findings = value["findings"].as_array().unwrap();
        assert_eq!(findings.len(), 2);
        assert_eq!(findings[0]["namespace"], "a");
        assert_eq!(findings[0]["kind"], "Deployment");
        assert_eq!(findings[0]["status"], "fail");
        assert_eq!(findings[0]["missing"], json!(["linux/amd64"]));
        assert_eq!(findings[1]["status"], "wrong");
        assert_eq!(findings[1]["node"], "arm-1");
    }

    #[test]
    fn policy_reports_one_per_namespace_in_the_wg_policy_shape() {
        let reports = sample().policy_reports(1_700_000_000);
        let names: Vec<(&str, &str)> = reports
            .iter()
            .map(|r| {
                (
                    r["kind"].as_str().unwrap(),
                    r["metadata"]["namespace"].as_str().unwrap(),
                )
            })
            .collect();
        // A clean namespace gets a report too: applying it clears an earlier one's failures.
        assert_eq!(
            names,
            [
                ("PolicyReport", "a"),
                ("PolicyReport", "b"),
                ("PolicyReport", "c")
            ]
        );
        let a = &reports[0];
        assert_eq!(a["apiVersion"], "wgpolicyk8s.io/v1alpha2");
        assert_eq!(a["metadata"]["name"], REPORT_NAME);
        assert_eq!(
            a["summary"],
            json!({"pass": 1, "fail": 1, "warn": 0, "error": 0, "skip": 0})
        );
        let results = a["results"].as_array().unwrap();
        let pass = results.iter().find(|r| r["result"] == "pass").unwrap();
        assert_eq!(pass["resources"][0]["name"], "api");
        let fail = results.iter().find(|r| r["result"] == "fail").unwrap();
        assert_eq!(fail["policy"], POLICY);
        assert_eq!(fail["rule"], RULE_IMAGES);
        assert_eq!(fail["severity"], "high");
        assert_eq!(fail["source"], "archgate");
        assert_eq!(
            fail["timestamp"],
            json!({"seconds": 1_700_000_000, "nanos": 0})
        );
        assert_eq!(
            fail["resources"][0],
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                   "namespace": "a", "uid": "uid-web"})
        );
        assert!(
            fail["properties"]["fix"]
                .as_str()
                .unwrap()
                .starts_with("rebuild")
        );
        assert_eq!(fail["properties"]["missing"], "linux/amd64");
        let b = &reports[1]["results"][0];
        assert_eq!(b["rule"], RULE_RUNNING);
        assert_eq!(b["properties"]["node"], "arm-1");
        assert_eq!(reports[2]["results"], json!([]));
        // Every property is a string, as the CRD's map[string]string requires.
        for r in reports
            .iter()
            .flat_map(|r| r["results"].as_array().unwrap())
        {
            for v in r["properties"].as_object().into_iter().flatten() {
                assert!(v.1.is_string(), "{r}");
            }
        }
    }

    #[test]
    fn cluster_scoped_results_go_to_a_cluster_policy_report() {
        let mut report = sample();
        report.groups.push(Group {
            object: object("", "Thing", "t"),
            reviewed: true,
            entries: vec![],
        });
        let reports = report.policy_reports(0);
        let cluster = reports
            .iter()
            .find(|r| r["kind"] == "ClusterPolicyReport")
            .unwrap();
        assert!(cluster["metadata"].get("namespace").is_none());
        assert_eq!(cluster["summary"]["pass"], 1);
        assert!(
            cluster["results"][0]["resources"][0]
                .get("namespace")
                .is_none()
        );
    }
}
