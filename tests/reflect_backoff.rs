//! The reflector driver with an optional resource (a Tekton CRD) that is not installed: it must
//! say so once and back off, then say once that it appeared. In its own test binary because it
//! captures log lines with a thread-local subscriber, and tracing caches per-callsite interest
//! process-wide: another test emitting the same events on another thread can race it.

mod common;

use std::sync::Arc;

use archgate::cluster::{Health, TektonKind, drive};
use archgate::metrics::Metrics;
use futures::StreamExt;
use kube::api::DynamicObject;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;

fn task(name: &str) -> DynamicObject {
    let mut task = DynamicObject::new(name, &TektonKind::Task.api_resource()).within("ci");
    task.data = serde_json::json!({"spec": {"steps": [{"name": "s", "image": "alpine"}]}});
    task
}

/// Log lines written by the subscriber installed for the test, as plain text.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Issue 12: kube's watcher yields `Init` before each list attempt, and that reset both the
/// log-once flag and the watcher's backoff, so an absent CRD was listed and logged about once a
/// second. Fed the same alternation (`Init`, 404, `Init`, 404, ...) as fast as it asks, the driver
/// must log once and wait 1 s, then 2 s, between attempts; and log once more when the resource
/// appears. (Before the fix: thousands of attempts and as many log lines in these 2.5 s.)
#[tokio::test]
async fn a_missing_resource_is_logged_once_and_asked_for_with_backoff() {
    let logs = LogBuffer::default();
    let writer_logs = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer_logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let health = Arc::new(Health::new(Arc::new(Metrics::new())));
    let resource = TektonKind::Task.api_resource();
    let writer = Writer::<DynamicObject>::new(resource.clone());
    let store = writer.as_reader();
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = attempts.clone();
    // Yields between items, as a live watcher does, so the timeout below can fire.
    let absent = futures::stream::iter(0..).then(move |i| {
        let counted = counted.clone();
        async move {
            tokio::task::yield_now().await;
            if i % 2 == 0 {
                Ok(Event::Init)
            } else {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(common::missing_resource_error())
            }
        }
    });
    let run = drive(
        "Task",
        absent,
        writer,
        resource.clone(),
        true,
        health.clone(),
    );
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(2500), run)
            .await
            .is_err()
    );
    let attempts = attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (2..=3).contains(&attempts),
        "{attempts} list attempts in 2.5 s"
    );
    assert!(store.wait_until_ready().await.is_ok() && store.is_empty());
    let text = logs.text();
    assert_eq!(
        text.matches("resource not served by the API server")
            .count(),
        1,
        "{text}"
    );

    // Then Tekton is installed: said once, and the store fills.
    let writer = Writer::<DynamicObject>::new(resource.clone());
    let store = writer.as_reader();
    let appears = futures::stream::iter(vec![
        Ok(Event::Init),
        Err(common::missing_resource_error()),
        Ok(Event::Init),
        Ok(Event::InitApply(task("build"))),
        Ok(Event::InitDone),
    ]);
    drive("Task", appears, writer, resource, true, health).await;
    assert_eq!(store.len(), 1);
    let text = logs.text();
    assert_eq!(
        text.matches("resource not served by the API server")
            .count(),
        2,
        "{text}"
    );
    assert_eq!(
        text.matches("resource now served by the API server")
            .count(),
        1,
        "{text}"
    );
}
