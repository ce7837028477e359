//! Tekton bundles: the Pipelines and Tasks a run names with `resolver: bundles` live in an OCI
//! image, one resource per layer. Tekton's bundle contract: each layer carries the annotations
//! `dev.tekton.image.kind` (lower-case), `dev.tekton.image.name` and `dev.tekton.image.apiVersion`,
//! and holds a (usually gzipped) tar with one YAML or JSON file, the resource.
//!
//! Fetched resources are cached briefly (a bundle tag can move) and shared across reviews.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use serde::Deserialize;
use serde_json::Value;

use crate::reference::ImageRef;
use crate::resolver::manifest::Capped;
use crate::resolver::{Credentials, Resolver};
use crate::workload::{BundleRef, Catalog};

/// Layers (resources) read from a bundle manifest, at most: Tekton's own bound,
/// `MaximumBundleObjects` in tektoncd/pipeline's `pkg/resolution/resolver/bundle` (10 in the
/// older `pkg/remote/oci`). Tekton refuses a bundle listing more, and so does archgate: past it
/// the bundle is unreadable, and the layers are skipped as they are read, never built.
pub const MAX_BUNDLE_LAYERS: usize = 20;
/// A resource is a few KiB of YAML.
const MAX_LAYER_BYTES: i64 = 4 << 20;
/// What one resource may expand to while its YAML is read (aliases replay anchors): real Tasks
/// are a few hundred nodes and a few KiB of text.
const MAX_RESOURCE_NODES: usize = 50_000;
const MAX_RESOURCE_TEXT_BYTES: usize = MAX_LAYER_BYTES as usize;
/// Bytes of the resource's file read, at most; a file past it is refused, never cut (a Task
/// cut short still parses, and the steps past the cut would go unchecked).
const MAX_RESOURCE_FILE_BYTES: u64 = MAX_LAYER_BYTES as u64;
/// Bytes a gzipped layer may unpack to before its resource is read (tar headers and entries
/// skipped before the file count); past it the layer is refused.
const MAX_UNPACKED_BYTES: u64 = 4 * MAX_LAYER_BYTES as u64;
/// Cached resources, weighed by [`weight`]: a bundle reference is the run author's choice.
const CACHE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Reference(String),
    #[error("{0}")]
    Registry(String),
    #[error("bundle has no {kind} named {name:?}")]
    NoSuchResource { kind: String, name: String },
    #[error("bundle layer is not a Tekton resource: {0}")]
    Layer(String),
    #[error(
        "the bundle lists more than {MAX_BUNDLE_LAYERS} layers, the most Tekton reads from a bundle"
    )]
    TooManyLayers,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Option<Capped<Layer, MAX_BUNDLE_LAYERS>>,
}

#[derive(Deserialize)]
struct Layer {
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    annotations: Option<Annotations>,
}

/// The two annotations a layer is found by; every other key is skipped without being copied
/// (a whole map per layer was most of a hostile manifest's cost).
#[derive(Deserialize)]
struct Annotations {
    #[serde(rename = "dev.tekton.image.kind")]
    kind: Option<String>,
    #[serde(rename = "dev.tekton.image.name")]
    name: Option<String>,
}

/// Fetches and caches resources out of Tekton bundles.
pub struct Bundles {
    /// Only successes are cached: a registry hiccup must not hide a bundle for minutes.
    cache: Cache<(u64, BundleRef), Arc<Value>>,
}

impl Default for Bundles {
    fn default() -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(CACHE_BYTES)
                .weigher(|_, resource: &Arc<Value>| {
                    u32::try_from(weight(resource)).unwrap_or(u32::MAX)
                })
                .time_to_live(Duration::from_secs(300))
                .build(),
        }
    }
}

impl Bundles {
    /// The resource `reference` names, read from its bundle with `credentials`.
    pub async fn fetch(
        &self,
        resolver: &Resolver,
        credentials: &Credentials,
        reference: &BundleRef,
    ) -> Result<Arc<Value>, BundleError> {
        let image = ImageRef::parse(&reference.bundle)
            .map_err(|e| BundleError::Reference(e.to_string()))?;
        let identity = credentials.identity_for(&image);
        self.cache
            .try_get_with(
                (identity, reference.clone()),
                fetch(resolver, credentials, &image, reference),
            )
            .await
            .map_err(|e| (*e).clone())
    }
}

async fn fetch(
    resolver: &Resolver,
    credentials: &Credentials,
    image: &ImageRef,
    reference: &BundleRef,
) -> Result<Arc<Value>, BundleError> {
    // The warning gets the one-clause summary images get (the full reason names transport
    // details and internal hosts, for the log only).
    let registry_error = |e: crate::resolver::ResolveError| {
        tracing::warn!(bundle = %image.written(), error = %e, "bundle not fetched");
        BundleError::Registry(e.summary())
    };
    let body = resolver
        .read_manifest(image, credentials)
        .await
        .map_err(registry_error)?;
    // Only the chosen layer's digest leaves the manifest: neither the body nor the parsed
    // manifest is held while the blob is fetched (up to 64 bundle fetches run at once).
    let digest = choose_layer(&body, reference)?;
    drop(body);
    let blob = resolver
        .read_blob(image, credentials, &digest, MAX_LAYER_BYTES as usize)
        .await
        .map_err(registry_error)?;
    // Gunzip, untar and YAML are CPU work of up to tens of milliseconds for a hostile layer:
    // off the reviews' worker threads.
    tokio::task::spawn_blocking(move || read_resource(&blob).map(Arc::new))
        .await
        .map_err(|e| BundleError::Layer(format!("reading the layer failed: {e}")))?
}

/// About what a resource holds in memory: its text and a fixed cost per node.
fn weight(value: &Value) -> usize {
    const NODE: usize = 64;
    NODE + match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(weight).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + weight(v)).sum(),
        _ => 0,
    }
}

/// The digest of the layer holding the resource `reference` names, read from a bundle
/// manifest of at most [`MAX_BUNDLE_LAYERS`] layers.
fn choose_layer(body: &[u8], reference: &BundleRef) -> Result<String, BundleError> {
    let manifest: Manifest =
        serde_json::from_slice(body).map_err(|e| BundleError::Layer(format!("manifest: {e}")))?;
    let layers = manifest.layers.map(|l| (l.items, l.overflowed));
    let (layers, overflowed) = layers.unwrap_or_default();
    if overflowed {
        return Err(BundleError::TooManyLayers);
    }
    let layer = find_layer(layers, &reference.kind, &reference.name).ok_or_else(|| {
        BundleError::NoSuchResource {
            kind: reference.kind.to_ascii_lowercase(),
            name: reference.name.clone(),
        }
    })?;
    if layer.size > MAX_LAYER_BYTES {
        return Err(BundleError::Layer(format!("layer is {} bytes", layer.size)));
    }
    Ok(layer.digest)
}

fn find_layer(layers: Vec<Layer>, kind: &str, name: &str) -> Option<Layer> {
    layers.into_iter().find(|l| {
        l.annotations.as_ref().is_some_and(|a| {
            a.kind
                .as_ref()
                .is_some_and(|k| k.eq_ignore_ascii_case(kind))
                && a.name.as_ref().is_some_and(|n| n == name)
        })
    })
}

/// The one file in a layer's tar (gzipped or not), parsed as YAML or JSON. A gzipped tar is
/// read through the decoder as it unpacks (nothing past the file is unpacked), against
/// [`MAX_UNPACKED_BYTES`].
pub fn read_resource(blob: &[u8]) -> Result<Value, BundleError> {
    if !blob.starts_with(&[0x1f, 0x8b]) {
        return read_tar(blob);
    }
    let mut unpacked = Bounded {
        inner: flate2::read::GzDecoder::new(blob),
        read: 0,
        cap: MAX_UNPACKED_BYTES,
    };
    // The tar reader reports a failed read in its own words; the bound is said here.
    read_tar(&mut unpacked).map_err(|e| {
        if unpacked.read > unpacked.cap {
            BundleError::Layer(format!(
                "the layer unpacks to more than {MAX_UNPACKED_BYTES} bytes"
            ))
        } else {
            e
        }
    })
}

/// A reader that fails once more than `cap` bytes have come through it: an error, never an
/// early end, which the reader above would take for the end of the data.
struct Bounded<R> {
    inner: R,
    read: u64,
    cap: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One byte past the cap is asked for, so that reaching it exactly is not an error.
        let room = (self.cap + 1 - self.read.min(self.cap)).min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..room])?;
        self.read += n as u64;
        if self.read > self.cap {
            return Err(std::io::Error::other(format!(
                "more than {} bytes",
                self.cap
            )));
        }
        Ok(n)
    }
}

fn read_tar(tar: impl Read) -> Result<Value, BundleError> {
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| BundleError::Layer(format!("tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BundleError::Layer(format!("tar: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let mut text = String::new();
        entry
            .by_ref()
            .take(MAX_RESOURCE_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| BundleError::Layer(format!("file: {e}")))?;
        if text.len() as u64 > MAX_RESOURCE_FILE_BYTES {
            return Err(BundleError::Layer(format!(
                "the resource is more than {MAX_RESOURCE_FILE_BYTES} bytes of text"
            )));
        }
        return parse_resource(&text);
    }
    Err(BundleError::Layer("the layer holds no file".into()))
}

fn parse_resource(text: &str) -> Result<Value, BundleError> {
    // Aliases replay what they point at: bound what the text may expand to, not only the text.
    // No source snippets in errors: the layer is someone else's text (crate::yaml).
    let options = serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_nodes: MAX_RESOURCE_NODES,
            max_total_scalar_bytes: MAX_RESOURCE_TEXT_BYTES,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_RESOURCE_NODES,
        },
    };
    let value: Value = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| BundleError::Layer(crate::policy::clip(&crate::yaml::describe(&e, 1))))?;
    if value.get("kind").is_none() {
        return Err(BundleError::Layer("the resource has no kind".into()));
    }
    Ok(value)
}

/// A catalog with fetched bundle resources in front of another catalog.
pub struct WithBundles<'a> {
    pub base: &'a dyn Catalog,
    pub fetched: &'a HashMap<BundleRef, Arc<Value>>,
}

impl Catalog for WithBundles<'_> {
    fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.base.get(kind, namespace, name)
    }

    fn bundle(&self, reference: &BundleRef) -> Option<Value> {
        self.fetched
            .get(reference)
            .map(|v| (**v).clone())
            .or_else(|| self.base.bundle(reference))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(name: &str, contents: &str) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, contents.as_bytes())
            .unwrap();
        builder.into_inner().unwrap()
    }

    /// Before: a layer's YAML was read with serde-saphyr's defaults, under which a few KiB of
    /// anchors and aliases expand to 64 MiB of text or a million events, per resource, in a
    /// cache of 1000. Now a resource expands to at most 4 MiB of text and 50,000 nodes.
    #[test]
    fn aliases_cannot_expand_a_resource_past_its_bounds() {
        let head = "apiVersion: tekton.dev/v1\nkind: Task\nmetadata: {name: bomb}\n";
        let ten = |name: &str, of: &str| {
            format!(
                "{name}: &{name} [{}]\n",
                vec![format!("*{of}"); 10].join(",")
            )
        };
        // 10 MiB of text from 10 KiB: a 10 KiB string, replayed 1000 times.
        let text = format!(
            "{head}a: &a \"{}\"\n{}{}d: [{}]\n",
            "x".repeat(10 << 10),
            ten("b", "a"),
            ten("c", "b"),
            ["*c"; 10].join(",")
        );
        let err = read_resource(&tar_of("task.yaml", &text)).unwrap_err();
        assert!(matches!(err, BundleError::Layer(_)), "{err}");
        // 100,000 nodes from a few hundred bytes.
        let nodes = format!(
            "{head}a: &a [1,1,1,1,1,1,1,1,1,1]\n{}{}{}e: [{}]\n",
            ten("b", "a"),
            ten("c", "b"),
            ten("d", "c"),
            ["*d"; 10].join(",")
        );
        let err = read_resource(&tar_of("task.yaml", &nodes)).unwrap_err();
        assert!(err.to_string().chars().count() < 400, "{err}");
        // A real resource with a few aliases still reads.
        let fine = format!("{head}a: &a [1, 2]\n{}", ten("b", "a"));
        assert_eq!(
            read_resource(&tar_of("task.yaml", &fine)).unwrap()["b"][9][1],
            2
        );
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, bytes).unwrap();
        gz.finish().unwrap()
    }

    /// Before: a resource's text was read with `take(4 MiB)`, and a Task cut there still parsed,
    /// so the steps past the cut (and their images) were never checked. The gzip output was cut
    /// at 16 MiB the same way. Now either bound passed is an error: the resource is not
    /// checked, which --on-registry-error decides.
    #[test]
    fn a_resource_past_its_bounds_is_refused_not_cut() {
        let head = "apiVersion: tekton.dev/v1\nkind: Task\nmetadata: {name: t}\nspec:\n  steps:\n  - name: a\n    image: alpine\n";
        let filler =
            "  # padding padding padding padding padding padding padding padding\n".repeat(80_000);
        let tail = "  - name: b\n    image: registry.example/amd64-only:1\n";
        let text = format!("{head}{filler}{tail}");
        assert!(text.len() > 4 << 20);
        let layer = gzip(&tar_of("task.yaml", &text));
        assert!(layer.len() < 4 << 20, "the layer itself is small");
        let error = read_resource(&layer).unwrap_err().to_string();
        assert!(error.contains("4194304 bytes"), "{error}");
        // The same text within the bound reads whole.
        let within = format!("{head}{}{tail}", &filler[..filler.len() / 2]);
        let steps = read_resource(&gzip(&tar_of("task.yaml", &within))).unwrap();
        assert_eq!(steps["spec"]["steps"][1]["name"], "b");

        // 17 MiB of a non-file entry before the resource: the tar unpacks past its bound.
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Char);
        header.set_size(17 << 20);
        header.set_cksum();
        builder
            .append_data(&mut header, "dev", std::io::repeat(0).take(17 << 20))
            .unwrap();
        let resource = "apiVersion: tekton.dev/v1\nkind: Task\nmetadata: {name: t}\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(resource.len() as u64);
        header.set_cksum();
        builder
            .append_data(&mut header, "task.yaml", resource.as_bytes())
            .unwrap();
        let error = read_resource(&gzip(&builder.into_inner().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("16777216 bytes"), "{error}");
    }

    /// Before: a bundle manifest's layers were read without a bound, each with its whole
    /// annotations map (a 4 MiB manifest of 110,000 layers peaked at ~72 MB per fetch, and a
    /// review fetches up to 64 bundles at once). Tekton reads at most 20 layers
    /// (`MaximumBundleObjects`); a manifest listing more is refused, naming the bound, even
    /// when the resource asked for is among the first.
    #[tokio::test]
    async fn a_bundle_with_more_layers_than_tekton_reads_is_refused() {
        use axum::http::header::CONTENT_TYPE;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let resource = "apiVersion: tekton.dev/v1\nkind: Task\nmetadata: {name: t}\n";
        let blob = gzip(&tar_of("task.yaml", resource));
        let digest = format!(
            "sha256:{}",
            ring::digest::digest(&ring::digest::SHA256, &blob)
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let layer = |name: &str| {
            serde_json::json!({"digest": digest, "size": blob.len(), "annotations": {
                "dev.tekton.image.kind": "task", "dev.tekton.image.name": name,
                "dev.tekton.image.apiVersion": "tekton.dev/v1", "org.example.other": "x"}})
        };
        let manifest = |layers: usize| {
            let layers: Vec<Value> = (0..layers)
                .map(|i| layer(if i == 0 { "t" } else { "other" }))
                .collect();
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "layers": layers
            }))
            .unwrap()
        };
        let (at_bound, past_bound) = (manifest(20), manifest(21));
        let router = axum::Router::new()
            .route(
                "/v2/b/{repository}/manifests/1",
                axum::routing::get(
                    move |axum::extract::Path(repository): axum::extract::Path<String>| {
                        let body = if repository == "past" {
                            past_bound.clone()
                        } else {
                            at_bound.clone()
                        };
                        async move {
                            (
                                [(CONTENT_TYPE, "application/vnd.oci.image.manifest.v1+json")],
                                body,
                            )
                        }
                    },
                ),
            )
            .route(
                &format!("/v2/b/{{repository}}/blobs/{digest}"),
                axum::routing::get(move || std::future::ready(blob.clone())),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let options = crate::resolver::RegistryOptions {
            insecure: vec![host.clone()],
            ..Default::default()
        };
        let resolver = Resolver::new(options, Arc::new(crate::metrics::Metrics::new())).unwrap();
        let fetch = |repository: &str| BundleRef {
            bundle: format!("{host}/b/{repository}:1"),
            kind: "Task".into(),
            name: "t".into(),
        };
        let bundles = Bundles::default();
        let credentials = Credentials::default();
        let read = bundles
            .fetch(&resolver, &credentials, &fetch("at"))
            .await
            .unwrap();
        assert_eq!(read["metadata"]["name"], "t");
        let error = bundles
            .fetch(&resolver, &credentials, &fetch("past"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("more than {MAX_BUNDLE_LAYERS} layers")),
            "{error}"
        );
        server.abort();
    }

    #[test]
    fn reads_plain_and_gzipped_layers() {
        let yaml = "apiVersion: tekton.dev/v1\nkind: Task\nmetadata: {name: build}\nspec:\n  steps: [{name: s, image: alpine}]\n";
        let plain = tar_of("task.yaml", yaml);
        assert_eq!(read_resource(&plain).unwrap()["metadata"]["name"], "build");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &plain).unwrap();
        let gzipped = gz.finish().unwrap();
        assert_eq!(read_resource(&gzipped).unwrap()["kind"], "Task");
    }

    #[test]
    fn bad_layers_are_errors() {
        assert!(read_resource(b"").is_err());
        assert!(read_resource(&[0x1f, 0x8b, 0, 0]).is_err());
        assert!(read_resource(&tar_of("x.yaml", "just: data\n")).is_err());
        assert!(read_resource(&tar_of("x.yaml", ": : :\n- [")).is_err());
    }

    #[test]
    fn layers_are_found_by_kind_and_name() {
        let layer = |kind: &str, name: &str| Layer {
            digest: format!("sha256:{kind}{name}"),
            size: 1,
            annotations: Some(Annotations {
                kind: Some(kind.to_string()),
                name: Some(name.to_string()),
            }),
        };
        let layers = || {
            vec![
                layer("task", "a"),
                layer("pipeline", "a"),
                layer("task", "b"),
            ]
        };
        assert_eq!(
            find_layer(layers(), "Task", "b").unwrap().digest,
            "sha256:taskb"
        );
        assert_eq!(
            find_layer(layers(), "pipeline", "a").unwrap().digest,
            "sha256:pipelinea"
        );
        assert!(find_layer(layers(), "Task", "c").is_none());
    }
}
