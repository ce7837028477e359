//! Tests of the test harness itself: the real registry starts on loopback only, fixtures land
//! with the digests and media types the harness computed, the TLS registry enforces its
//! credentials, and the proxy counts exactly and misbehaves on request.

mod common;

use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use common::images::{ATTESTATION_REFERENCE_TYPE, gzip_stored, tar_with_file};
use common::media_types::{
    ACCEPT_ANY_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use common::{
    CountingProxy, Fault, FaultRule, ImageSpec, PlatformSpec, PushedImage, Registry, RequestKind,
    push_image, push_standard_fixtures, sha256_digest,
};
use reqwest::{Method, StatusCode, header};
use serde_json::Value;

/// A client for the plain registry and the proxy: no environment proxy, no redirects.
fn plain_client() -> reqwest::Client {
    common::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Local addresses of the listening TCP sockets on `port`, read from /proc (IPv4 and IPv6; an
/// IPv6 wildcard is reported as 0.0.0.0 so it fails a loopback assertion too).
fn listening_addresses(port: u16) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (fields[1], fields[3]);
            let (address, port_hex) = local.split_once(':').unwrap();
            // 0A is TCP_LISTEN.
            if state != "0A" || u16::from_str_radix(port_hex, 16).unwrap() != port {
                continue;
            }
            found.push(match address.len() {
                8 => Ipv4Addr::from(u32::from_str_radix(address, 16).unwrap().to_ne_bytes()),
                _ => Ipv4Addr::UNSPECIFIED,
            });
        }
    }
    found
}

fn port_of(host: &str) -> u16 {
    host.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[tokio::test]
async fn plain_registry_listens_on_loopback_only_and_answers_v2() {
    let registry = Registry::start().await;
    assert!(registry.host().starts_with("127.0.0.1:"));

    let addresses = listening_addresses(port_of(registry.host()));
    assert_eq!(
        addresses,
        [Ipv4Addr::LOCALHOST],
        "listening sockets on the port"
    );

    let response = registry.request(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

#[tokio::test]
async fn dropping_the_registry_stops_its_process() {
    let registry = Registry::start().await;
    let host = registry.host().to_owned();
    let pid = registry.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    drop(registry);

    assert!(
        TcpStream::connect(&host).is_err(),
        "{host} still accepts connections"
    );
    // The child was reaped (no zombie left behind under our pid).
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

/// GETs a manifest with an Accept header covering every type the harness pushes.
async fn get_manifest(registry: &Registry, repository: &str, reference: &str) -> reqwest::Response {
    registry
        .request(
            Method::GET,
            &format!("/v2/{repository}/manifests/{reference}"),
        )
        .header(header::ACCEPT, ACCEPT_ANY_MANIFEST)
        .send()
        .await
        .unwrap()
}

/// The tag answers with the media type and digest the harness computed, and so does every child
/// manifest by digest.
async fn assert_served_as_pushed(registry: &Registry, image: &PushedImage) -> Value {
    let response = get_manifest(registry, &image.repository, &image.tag).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", image.reference());
    let headers = response.headers().clone();
    assert_eq!(
        headers[header::CONTENT_TYPE],
        image.media_type,
        "{}",
        image.reference()
    );
    assert_eq!(headers["docker-content-digest"], image.digest.as_str());
    let body = response.bytes().await.unwrap();
    assert_eq!(
        sha256_digest(&body),
        image.digest,
        "body digest of {}",
        image.reference()
    );

    for child in image.manifests.iter().chain(&image.attestations) {
        let response = get_manifest(registry, &image.repository, &child.digest).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], child.media_type);
        assert_eq!(
            response.headers()["docker-content-digest"],
            child.digest.as_str()
        );
    }
    serde_json::from_slice(&body).unwrap()
}

/// The config blob's platform fields, fetched the way a resolver would for a single manifest.
async fn config_platform(
    registry: &Registry,
    image: &PushedImage,
) -> (String, String, Option<String>) {
    let config_digest = &image.manifests[0].config_digest;
    let response = registry
        .request(
            Method::GET,
            &format!("/v2/{}/blobs/{config_digest}", image.repository),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let config: Value = response.json().await.unwrap();
    let field = |name: &str| config[name].as_str().map(str::to_owned);
    (
        field("os").unwrap(),
        field("architecture").unwrap(),
        field("variant"),
    )
}

/// Index entries as `(os/arch[/variant], os.version, is attestation)`.
fn index_entries(index: &Value) -> Vec<(String, Option<String>, bool)> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let platform = &entry["platform"];
            let mut name = format!(
                "{}/{}",
                platform["os"].as_str().unwrap(),
                platform["architecture"].as_str().unwrap()
            );
            if let Some(variant) = platform["variant"].as_str() {
                name = format!("{name}/{variant}");
            }
            let os_version = platform["os.version"].as_str().map(str::to_owned);
            let attestation =
                entry["annotations"][ATTESTATION_REFERENCE_TYPE] == "attestation-manifest";
            (name, os_version, attestation)
        })
        .collect()
}

async fn check_standard_fixtures(registry: &Registry) {
    let fixtures = push_standard_fixtures(registry).await;
    let f = &fixtures;

    let expected_types = [
        (&f.multi, OCI_INDEX),
        (&f.ai_base_cuda, OCI_INDEX),
        (&f.docker_list, DOCKER_LIST),
        (&f.single_amd64, DOCKER_MANIFEST),
        (&f.single_arm64, OCI_MANIFEST),
        (&f.windows, OCI_INDEX),
    ];
    for (image, media_type) in expected_types {
        assert_eq!(image.media_type, media_type, "{}", image.reference());
        assert_served_as_pushed(registry, image).await;
    }

    let multi = assert_served_as_pushed(registry, &f.multi).await;
    let own = |p: &str| (p.to_owned(), None, false);
    let attestation = ("unknown/unknown".to_owned(), None, true);
    assert_eq!(
        index_entries(&multi),
        [
            own("linux/amd64"),
            own("linux/arm64/v8"),
            attestation.clone(),
            attestation.clone()
        ]
    );
    let ai_base = assert_served_as_pushed(registry, &f.ai_base_cuda).await;
    assert_eq!(
        index_entries(&ai_base),
        [own("linux/arm64/v8"), attestation]
    );

    let list = assert_served_as_pushed(registry, &f.docker_list).await;
    assert_eq!(
        index_entries(&list),
        [own("linux/amd64"), own("linux/arm/v7")]
    );
    assert!(
        list["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["mediaType"] == DOCKER_MANIFEST)
    );

    let windows = assert_served_as_pushed(registry, &f.windows).await;
    assert_eq!(
        index_entries(&windows),
        [(
            "windows/amd64".to_owned(),
            Some("10.0.17763.5329".to_owned()),
            false
        )]
    );

    // Single manifests carry their platform only in the config.
    let single = assert_served_as_pushed(registry, &f.single_arm64).await;
    assert!(single.get("platform").is_none());
    assert_eq!(
        config_platform(registry, &f.single_arm64).await,
        ("linux".into(), "arm64".into(), Some("v8".into()))
    );
    assert_eq!(
        config_platform(registry, &f.single_amd64).await,
        ("linux".into(), "amd64".into(), None)
    );

    // Distinct configs per platform and per image: no two platform manifests share a digest.
    let mut digests: Vec<&str> = f
        .all()
        .iter()
        .flat_map(|i| i.manifests.iter().map(|m| m.digest.as_str()))
        .collect();
    let count = digests.len();
    digests.sort_unstable();
    digests.dedup();
    assert_eq!(digests.len(), count);
}

#[tokio::test]
async fn standard_fixtures_on_plain_registry_are_served_as_pushed() {
    let registry = Registry::start().await;
    check_standard_fixtures(&registry).await;
}

#[tokio::test]
async fn standard_fixtures_on_tls_auth_registry_are_served_as_pushed() {
    let registry = Registry::start_tls_auth("archgate", "s3cret-pass").await;
    check_standard_fixtures(&registry).await;
}

#[tokio::test]
async fn a_new_revision_moves_the_tag_to_new_digests() {
    let registry = Registry::start().await;
    let first = push_image(&registry, "team/app", "v1", &[("linux", "amd64", None)]).await;
    let second = ImageSpec::oci_index("team/app", "v1", [PlatformSpec::new("linux", "amd64")])
        .with_revision("2")
        .push(&registry)
        .await;
    assert_ne!(first.digest, second.digest);
    assert_ne!(first.manifests[0].digest, second.manifests[0].digest);
    assert_served_as_pushed(&registry, &second).await;
}

#[tokio::test]
async fn tls_registry_requires_its_credentials_and_its_ca() {
    let registry = Registry::start_tls_auth("archgate", "s3cret-pass").await;
    assert!(registry.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        std::fs::read_to_string(registry.ca_path()).unwrap(),
        registry.ca_pem()
    );
    let url = registry.url("/v2/");
    assert!(url.starts_with("https://127.0.0.1:"));

    let anonymous = registry.client().get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let challenge = anonymous.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap();
    assert!(challenge.starts_with("Basic "), "{challenge}");

    let wrong = registry
        .client()
        .get(&url)
        .basic_auth("archgate", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let authorized = registry.request(Method::GET, "/v2/").send().await.unwrap();
    assert_eq!(authorized.status(), StatusCode::OK);

    // A client that does not trust the harness CA cannot even complete the handshake.
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
        .unwrap();
    assert!(untrusting.get(&url).send().await.is_err());
}

#[test]
fn layers_are_valid_gzipped_tar_archives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.tar.gz");
    std::fs::write(
        &path,
        gzip_stored(&tar_with_file("etc/archgate-fixture", b"hello\n")),
    )
    .unwrap();

    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    assert_eq!(
        String::from_utf8(listing.stdout).unwrap(),
        "etc/archgate-fixture\n"
    );

    let contents = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(contents.stdout, b"hello\n");
}

/// A registry with one pushed image and a proxy in front of it, counts reset.
async fn proxied() -> (Registry, PushedImage, CountingProxy) {
    let registry = Registry::start().await;
    let image = push_image(
        &registry,
        "team/app",
        "v1",
        &[("linux", "amd64", None), ("linux", "arm64", Some("v8"))],
    )
    .await;
    let proxy = CountingProxy::start(registry.host()).await;
    (registry, image, proxy)
}

fn manifest_url(proxy: &CountingProxy, image: &PushedImage) -> String {
    format!(
        "http://{}/v2/{}/manifests/{}",
        proxy.host(),
        image.repository,
        image.tag
    )
}

#[tokio::test]
async fn proxy_counts_exactly_the_requests_sent_through_it() {
    let (registry, image, proxy) = proxied().await;
    let client = plain_client();
    assert_eq!(
        proxy.counts().total(),
        0,
        "pushing went to the registry directly"
    );

    let base = client
        .get(format!("http://{}/v2/", proxy.host()))
        .send()
        .await
        .unwrap();
    assert_eq!(base.status(), StatusCode::OK);
    let url = manifest_url(&proxy, &image);
    let head = client
        .head(&url)
        .header(header::ACCEPT, ACCEPT_ANY_MANIFEST)
        .send()
        .await
        .unwrap();
    let get = client
        .get(&url)
        .header(header::ACCEPT, ACCEPT_ANY_MANIFEST)
        .send()
        .await
        .unwrap();
    let config = &image.manifests[0].config_digest;
    let blob = client
        .get(format!(
            "http://{}/v2/{}/blobs/{config}",
            proxy.host(),
            image.repository
        ))
        .send()
        .await
        .unwrap();

    // Status, headers and body pass through unchanged, HEAD's Content-Length included.
    let direct = get_manifest(&registry, &image.repository, &image.tag).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["docker-content-digest"],
        image.digest.as_str()
    );
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        direct.headers()[header::CONTENT_LENGTH]
    );
    assert_eq!(get.headers()[header::CONTENT_TYPE], OCI_INDEX);
    assert_eq!(get.bytes().await.unwrap(), direct.bytes().await.unwrap());
    assert_eq!(sha256_digest(&blob.bytes().await.unwrap()), *config);

    let counts = proxy.counts();
    assert_eq!(counts.total(), 4);
    assert_eq!(counts.get("GET", RequestKind::Base), 1);
    assert_eq!(counts.get("HEAD", RequestKind::Manifest), 1);
    assert_eq!(counts.get("GET", RequestKind::Manifest), 1);
    assert_eq!(counts.get("GET", RequestKind::Blob), 1);
    assert_eq!(counts.kind(RequestKind::Manifest), 2);
    assert_eq!(counts.method("GET"), 3);

    proxy.reset();
    assert_eq!(proxy.counts().total(), 0);
}

#[tokio::test]
async fn uploads_through_the_proxy_stay_behind_the_proxy() {
    let (_registry, image, proxy) = proxied().await;
    let client = plain_client();
    let start = client
        .post(format!(
            "http://{}/v2/{}/blobs/uploads/",
            proxy.host(),
            image.repository
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    let location = start.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        location.starts_with(&format!("http://{}/", proxy.host())),
        "{location}"
    );

    let bytes = b"uploaded through the proxy".to_vec();
    let digest = sha256_digest(&bytes);
    let put = client
        .put(format!("{location}&digest={digest}"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    assert_eq!(put.headers()["docker-content-digest"], digest.as_str());

    assert_eq!(proxy.counts().get("POST", RequestKind::Blob), 1);
    assert_eq!(proxy.counts().get("PUT", RequestKind::Blob), 1);
    assert_eq!(proxy.counts().total(), 2);
}

#[tokio::test]
async fn delay_fault_slows_requests_down() {
    let (_registry, image, proxy) = proxied().await;
    let client = plain_client();
    proxy.set_fault(Fault::Delay(Duration::from_millis(400)));

    let started = Instant::now();
    let response = client
        .get(manifest_url(&proxy, &image))
        .header(header::ACCEPT, ACCEPT_ANY_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(400));

    proxy.clear_fault();
    let started = Instant::now();
    client
        .get(format!("http://{}/v2/", proxy.host()))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn status_fault_answers_429_once_then_recovers() {
    let (_registry, image, proxy) = proxied().await;
    let client = plain_client();
    let rule = FaultRule::new(Fault::Status {
        status: 429,
        retry_after: Some(2),
    })
    .only(RequestKind::Manifest)
    .times(1);
    proxy.set_fault(rule);
    let url = manifest_url(&proxy, &image);

    // Other kinds are untouched by a manifest-only rule, and do not use it up.
    let base = client
        .get(format!("http://{}/v2/", proxy.host()))
        .send()
        .await
        .unwrap();
    assert_eq!(base.status(), StatusCode::OK);

    let limited = client
        .get(&url)
        .header(header::ACCEPT, ACCEPT_ANY_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()[header::RETRY_AFTER], "2");
    let error: Value = limited.json().await.unwrap();
    assert_eq!(error["errors"][0]["code"], "TOOMANYREQUESTS");

    let recovered = client
        .get(&url)
        .header(header::ACCEPT, ACCEPT_ANY_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(recovered.status(), StatusCode::OK);
    assert_eq!(
        proxy.counts().kind(RequestKind::Manifest),
        2,
        "faulted requests are counted"
    );
}

#[tokio::test]
async fn status_fault_answers_500_until_cleared() {
    let (_registry, image, proxy) = proxied().await;
    let client = plain_client();
    proxy.set_fault(Fault::Status {
        status: 500,
        retry_after: None,
    });
    let url = manifest_url(&proxy, &image);
    for _ in 0..2 {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
    proxy.clear_fault();
    let response = client
        .get(&url)
        .header(header::ACCEPT, ACCEPT_ANY_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn reset_fault_closes_the_connection_without_an_answer() {
    let (_registry, image, proxy) = proxied().await;
    let client = plain_client();
    proxy.set_fault(FaultRule::new(Fault::Reset).times(1));

    let error = client
        .get(manifest_url(&proxy, &image))
        .send()
        .await
        .unwrap_err();
    assert!(error.status().is_none(), "got an HTTP answer: {error}");

    let response = client
        .get(manifest_url(&proxy, &image))
        .header(header::ACCEPT, ACCEPT_ANY_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn truncate_fault_cuts_the_body_short_of_its_content_length() {
    let (_registry, image, proxy) = proxied().await;
    let client = plain_client();
    proxy.set_fault(FaultRule::new(Fault::Truncate).only(RequestKind::Manifest));

    let response = client
        .get(manifest_url(&proxy, &image))
        .header(header::ACCEPT, ACCEPT_ANY_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["docker-content-digest"],
        image.digest.as_str()
    );
    let announced: usize = response.headers()[header::CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(announced > 0);
    assert!(
        response.bytes().await.is_err(),
        "a truncated body must not read as complete"
    );
}
