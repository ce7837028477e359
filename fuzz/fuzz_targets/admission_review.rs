//! An AdmissionReview body as the API server sends it: decode, extract the images of the object
//! and of the old object the way the webhook does, then build and encode the response.
//!
//! Run with: cargo fuzz run -s none -a admission_review fuzz/corpus/admission_review fuzz/seeds/admission_review
#![no_main]

use archgate::admission;
use archgate::policy::Verdict;
use archgate::workload::{self, EmptyCatalog};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(mut req) = admission::decode(body) else {
        return;
    };
    let kind = req.kind.kind.clone();
    // The same subjects (kind decided by group and kind) the webhook hands its extractors.
    if let Some((subject, old)) = admission::subjects(&mut req) {
        // What the decoder kept of the spec extracts exactly what the whole spec does.
        if let Ok(whole) = serde_json::from_slice::<serde_json::Value>(body) {
            let mut object = subject.object.clone();
            object["spec"] = whole["request"]["object"]["spec"].clone();
            let options = workload::ExtractOptions {
                trust_tekton_platforms: true,
                ..Default::default()
            };
            assert_eq!(
                workload::extract(subject.kind, &subject.object, &EmptyCatalog, &options),
                workload::extract(subject.kind, &object, &EmptyCatalog, &options),
            );
        }
        for subject in std::iter::once(&subject).chain(old.as_ref()) {
            match workload::extract(
                subject.kind,
                &subject.object,
                &EmptyCatalog,
                &Default::default(),
            ) {
                Ok(extraction) => {
                    for target in &extraction.targets {
                        let _ = target.location.to_string();
                    }
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }
    // Both response shapes: a plain allow, and a denial with warnings.
    for verdict in [
        Verdict::default(),
        Verdict {
            allowed: false,
            message: Some(format!("denied {kind}")),
            warnings: vec!["warning".into()],
            findings: Vec::new(),
        },
    ] {
        let review = admission::respond(&req, &verdict).into_review();
        serde_json::to_vec(&review).expect("a response always encodes");
    }
});
