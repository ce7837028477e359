//! archgate's resolver against a registry with bearer-token auth, the flow Docker Hub and most
//! hosted registries use (issue 2, item 4): the real registry (Debian's `docker-registry`,
//! distribution 2.8, `auth: token`) answers 401 with a Bearer challenge, the client asks the
//! token server named in it, and presents the token. The token server is the harness's
//! stand-in (tests/common/token.rs, which says why); the registry verifies its tokens itself.
//!
//! Lookups go through the counting proxy so the registry requests are counted; the token server
//! records every token request, so each test can say which flow was used and how often.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use archgate::metrics::Metrics;
use archgate::reference::ImageRef;
use archgate::resolver::{
    Credentials, Digest, RegistryOptions, Resolution, ResolveError, Resolver,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::proxy::EventKind;
use common::{
    Access, BearerChallenge, CountingProxy, Fixtures, ImageSpec, PlatformSpec, Presented,
    PushedImage, Registry, RequestKind, TokenPolicy, push_standard_fixtures,
};
use reqwest::{StatusCode, header};

const ADMIN: (&str, &str) = ("pusher", "push-pw");
const READER: (&str, &str) = ("reader", "read-pw");
const IDENTITY_TOKEN: &str = "idt-robot-0f3c9a";

/// The standard fixtures split into public and private repositories.
fn policy() -> TokenPolicy {
    TokenPolicy::new()
        .admin(ADMIN.0, ADMIN.1)
        .reader(READER.0, READER.1)
        .reader("robot", "robot-pw")
        .identity_token(IDENTITY_TOKEN, "robot")
        // Public: an index, a Docker list, and a single manifest (platform in the config blob).
        .public("fixtures/multi")
        .public("fixtures/dockerlist")
        .public("fixtures/single-arm64")
    // Private: cerebral/ai-base, fixtures/single-amd64, fixtures/windows.
}

struct Setup {
    registry: Registry,
    proxy: CountingProxy,
    fixtures: Fixtures,
}

impl Setup {
    async fn start(policy: TokenPolicy) -> Self {
        common::install_crypto_provider();
        let registry = Registry::start_token_auth(policy).await;
        let fixtures = push_standard_fixtures(&registry).await;
        let proxy = CountingProxy::start(registry.host()).await;
        // The harness's own (admin) push tokens are not what the tests count.
        registry.token_server().reset();
        Self {
            registry,
            proxy,
            fixtures,
        }
    }

    fn resolver(&self) -> Resolver {
        let options = RegistryOptions {
            insecure: vec![self.proxy.host().to_owned()],
            ..RegistryOptions::default()
        };
        Resolver::new(options, Arc::new(Metrics::new())).unwrap()
    }

    /// `127.0.0.1:PROXY/repository:tag`.
    fn tag_ref(&self, image: &PushedImage) -> ImageRef {
        ImageRef::parse(&format!(
            "{}/{}:{}",
            self.proxy.host(),
            image.repository,
            image.tag
        ))
        .unwrap()
    }

    fn unauthorized(&self) -> ResolveError {
        ResolveError::Unauthorized {
            registry: self.proxy.host().to_owned(),
        }
    }

    /// The token server's log, for failure messages.
    fn token_log(&self) -> String {
        format!("{:#?}", self.registry.token_server().requests())
    }
}

fn names(resolution: &Resolution) -> Vec<String> {
    resolution.platforms.iter().map(|p| p.to_string()).collect()
}

fn pull(repository: &str) -> Vec<Access> {
    vec![Access {
        kind: "repository".into(),
        name: repository.into(),
        actions: vec!["pull".into()],
    }]
}

/// A docker `config.json` holding `entry` for `host`.
fn docker_config(dir: &tempfile::TempDir, host: &str, entry: serde_json::Value) -> PathBuf {
    let json = serde_json::json!({ "auths": { host: entry } });
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    path
}

fn basic_entry(user: &str, password: &str) -> serde_json::Value {
    serde_json::json!({ "auth": STANDARD.encode(format!("{user}:{password}")) })
}

/// POSTs `application/x-www-form-urlencoded` `pairs` (reqwest is built without its `form`
/// feature; `Url` encodes the pairs the same way).
async fn post_form(
    client: &reqwest::Client,
    url: &str,
    pairs: &[(&str, &str)],
) -> reqwest::Response {
    let encoded = reqwest::Url::parse_with_params("http://form.invalid/", pairs).unwrap();
    client
        .post(url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(encoded.query().unwrap_or_default().to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn anonymous_lookup_of_a_public_image_follows_the_bearer_challenge() {
    let setup = Setup::start(policy()).await;
    let server = setup.registry.token_server();
    let multi = &setup.fixtures.multi;

    // The registry really demands a token: without one it challenges, naming the token server.
    let path = format!("/v2/{}/manifests/{}", multi.repository, multi.tag);
    let bare = setup
        .registry
        .client()
        .get(setup.registry.url(&path))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
    let challenge = bare.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
    let challenge = BearerChallenge::parse(challenge).expect("a Bearer challenge");
    assert_eq!(challenge.realm, server.realm());
    assert_eq!(challenge.service.as_deref(), Some(server.service()));
    assert_eq!(
        challenge.scope.as_deref(),
        Some("repository:fixtures/multi:pull")
    );
    server.reset();

    let resolver = setup.resolver();
    let anonymous = Credentials::default();
    let resolution = resolver
        .resolve(&setup.tag_ref(multi), &anonymous)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\ntoken requests: {}", setup.token_log()));
    assert_eq!(resolution.digest, Some(Digest::new(&multi.digest)));
    assert_eq!(names(&resolution), ["linux/amd64", "linux/arm64/v8"]);

    // The first GET is the probe: answered 401 with the challenge, then one anonymous token
    // request, then the same GET with the token. No `GET /v2/`.
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let request = &requests[0];
    assert_eq!(request.method, "GET");
    assert_eq!(request.presented, Presented::Anonymous);
    assert_eq!(request.service.as_deref(), Some(server.service()));
    assert_eq!(request.scopes, ["repository:fixtures/multi:pull"]);
    assert_eq!(
        (request.status, &request.granted),
        (200, &pull("fixtures/multi"))
    );
    let counts = setup.proxy.counts();
    assert_eq!(counts.get("GET", RequestKind::Base), 0, "{counts:?}");
    assert_eq!(counts.get("HEAD", RequestKind::Manifest), 0, "{counts:?}");
    assert_eq!(counts.get("GET", RequestKind::Manifest), 2, "{counts:?}");
    assert_eq!(counts.total(), 2, "{counts:?}");

    // A single manifest: the config blob is fetched with the bearer token too.
    let single = &setup.fixtures.single_arm64;
    let resolution = resolver
        .resolve(&setup.tag_ref(single), &anonymous)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\ntoken requests: {}", setup.token_log()));
    assert_eq!(names(&resolution), ["linux/arm64/v8"]);
    let docker_list = &setup.fixtures.docker_list;
    let resolution = resolver
        .resolve(&setup.tag_ref(docker_list), &anonymous)
        .await
        .unwrap();
    assert_eq!(names(&resolution), ["linux/amd64", "linux/arm/v7"]);
    let counts = server.counts();
    assert_eq!(
        (
            counts.anonymous,
            counts.basic,
            counts.refresh,
            counts.denied
        ),
        (3, 0, 0, 0),
        "one anonymous token per repository: {}",
        setup.token_log()
    );
}

/// Issue 14: lookups that reach a token registry at the same moment, before any of them knows
/// its challenge, are not held back by each other (there is no probe to wait for): each is
/// answered 401 at most once, a token is bought once per repository, and lookups after that
/// carry the token at once (no 401, no token request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_lookups_each_see_one_401_at_most_then_one_token_per_repository() {
    let setup = Setup::start(policy()).await;
    let server = setup.registry.token_server();
    let amd64 = || PlatformSpec::new("linux", "amd64");
    // Two tags of one repository, and two more public repositories.
    let multi_v2 = ImageSpec::oci_index("fixtures/multi", "v2", [amd64()])
        .with_revision("2")
        .push(&setup.registry)
        .await;
    let f = &setup.fixtures;
    let images = [&f.multi, &multi_v2, &f.docker_list, &f.single_arm64];
    server.reset();
    let resolver = Arc::new(setup.resolver());
    // Every request waits at the proxy, so all four are sent before the first answer comes.
    setup.proxy.set_latency(Duration::from_millis(100));
    let lookups: Vec<_> = images
        .iter()
        .map(|image| {
            let resolver = resolver.clone();
            let reference = setup.tag_ref(image);
            tokio::spawn(async move { resolver.resolve(&reference, &Credentials::default()).await })
        })
        .collect();
    for (lookup, image) in lookups.into_iter().zip(images) {
        let resolution = lookup.await.unwrap().unwrap();
        assert_eq!(resolution.digest, Some(Digest::new(&image.digest)));
    }
    let counts = setup.proxy.counts();
    let refused = setup
        .proxy
        .timeline()
        .iter()
        .filter(|e| e.what == EventKind::Answered { status: 401 })
        .count() as u64;
    println!("{refused} of 4 first lookups answered 401 before the challenge was known");
    assert!((1..=4).contains(&refused), "401s: {refused}, {counts:?}");
    assert_eq!(counts.get("GET", RequestKind::Base), 0, "{counts:?}");
    // Each lookup's manifest GET (a 401 refused some first), and the single image's config.
    assert_eq!(
        counts.get("GET", RequestKind::Manifest),
        4 + refused,
        "{counts:?}"
    );
    assert_eq!(counts.get("GET", RequestKind::Blob), 1, "{counts:?}");
    assert_eq!(counts.total(), 5 + refused, "{counts:?}");
    let tokens = server.counts();
    assert_eq!(
        (tokens.anonymous, tokens.total()),
        (3, 3),
        "one token per repository: {}",
        setup.token_log()
    );

    // The challenge is known now: a new tag of a repository with a token costs one GET.
    let list_v2 = ImageSpec::docker_list("fixtures/dockerlist", "v2", [amd64()])
        .with_revision("2")
        .push(&setup.registry)
        .await;
    setup.proxy.reset();
    server.reset();
    resolver
        .resolve(&setup.tag_ref(&list_v2), &Credentials::default())
        .await
        .unwrap();
    assert_eq!(
        setup.proxy.counts().total(),
        1,
        "{:?}",
        setup.proxy.counts()
    );
    assert_eq!(server.counts().total(), 0, "{}", setup.token_log());
}

#[tokio::test]
async fn a_private_image_without_credentials_is_unauthorized() {
    let setup = Setup::start(policy()).await;
    let server = setup.registry.token_server();
    let resolver = setup.resolver();
    let private = setup.tag_ref(&setup.fixtures.ai_base_cuda);

    let error = resolver
        .resolve(&private, &Credentials::default())
        .await
        .unwrap_err();
    assert_eq!(error, setup.unauthorized());

    // As Docker Hub does: the anonymous caller gets a token, but one that grants nothing, and
    // the registry refuses it (insufficient_scope).
    let requests = server.requests();
    assert!(!requests.is_empty(), "no token was asked for");
    for request in &requests {
        assert_eq!(request.presented, Presented::Anonymous, "{requests:#?}");
        assert_eq!(request.scopes, ["repository:cerebral/ai-base:pull"]);
        assert_eq!((request.status, request.granted.len()), (200, 0));
    }
    let counts = setup.proxy.counts();
    assert!(
        counts.kind(RequestKind::Manifest) >= 1,
        "the registry was asked and refused: {counts:?}"
    );

    // A public image on the same resolver is unaffected.
    let public = setup.tag_ref(&setup.fixtures.multi);
    resolver
        .resolve(&public, &Credentials::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn basic_credentials_from_a_docker_config_get_a_token_for_a_private_image() {
    let setup = Setup::start(policy()).await;
    let server = setup.registry.token_server();
    let resolver = setup.resolver();
    let dir = tempfile::tempdir().unwrap();
    let config = docker_config(&dir, setup.proxy.host(), basic_entry(READER.0, READER.1));
    let credentials = Credentials::load(Some(&config)).unwrap();

    let ai_base = &setup.fixtures.ai_base_cuda;
    let resolution = resolver
        .resolve(&setup.tag_ref(ai_base), &credentials)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\ntoken requests: {}", setup.token_log()));
    assert_eq!(resolution.digest, Some(Digest::new(&ai_base.digest)));
    assert_eq!(names(&resolution), ["linux/arm64/v8"]);
    // A private single Docker manifest: its config blob needs the token as well.
    let single = &setup.fixtures.single_amd64;
    let resolution = resolver
        .resolve(&setup.tag_ref(single), &credentials)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\ntoken requests: {}", setup.token_log()));
    assert_eq!(names(&resolution), ["linux/amd64"]);

    let requests = server.requests();
    let scopes: Vec<&str> = requests.iter().map(|r| r.scopes[0].as_str()).collect();
    assert_eq!(
        scopes,
        [
            "repository:cerebral/ai-base:pull",
            "repository:fixtures/single-amd64:pull"
        ],
        "{requests:#?}"
    );
    for request in &requests {
        let reader = Presented::Basic {
            user: READER.0.into(),
            password_is_identity_token: false,
        };
        assert_eq!((&request.method[..], &request.presented), ("GET", &reader));
        assert_eq!(request.status, 200);
        assert_eq!(request.granted.len(), 1);
    }

    // The anonymous identity still cannot see what the reader resolved.
    let error = resolver
        .resolve(&setup.tag_ref(ai_base), &Credentials::default())
        .await
        .unwrap_err();
    assert_eq!(error, setup.unauthorized());

    // A wrong password: the token server refuses (401), and so does the registry.
    server.reset();
    let wrong_dir = tempfile::tempdir().unwrap();
    let wrong = docker_config(
        &wrong_dir,
        setup.proxy.host(),
        basic_entry(READER.0, "nope"),
    );
    let wrong = Credentials::load(Some(&wrong)).unwrap();
    let error = resolver
        .resolve(&setup.tag_ref(ai_base), &wrong)
        .await
        .unwrap_err();
    assert_eq!(error, setup.unauthorized());
    let counts = server.counts();
    assert!(
        counts.basic >= 1 && counts.denied == counts.basic,
        "{counts:?}"
    );
}

/// A pod that lists a stale secret before the current one for the same registry (a password
/// rotation): the kubelet's keyring returns both and the pull tries each in turn
/// (`kuberuntime_image.go` `PullImage`), so the pull works. archgate tried the first only, and
/// its refusal was a warning, or a false denial under `--on-registry-error deny`.
#[tokio::test]
async fn a_second_credential_for_the_same_registry_is_tried_after_a_refusal() {
    let setup = Setup::start(policy()).await;
    let server = setup.registry.token_server();
    let resolver = setup.resolver();
    let secret = |password: &str| {
        let json =
            serde_json::json!({ "auths": { setup.proxy.host(): basic_entry(READER.0, password) } });
        Arc::new(Credentials::from_docker_config(json.to_string().as_bytes(), "secret").unwrap())
    };
    let (old, new) = (secret("rotated-away"), secret(READER.1));
    let own = Arc::new(Credentials::default());
    let pod = |names: &[&str]| {
        let lookup = |name: &str| match name {
            "old" => Some(old.clone()),
            "new" => Some(new.clone()),
            _ => None,
        };
        let placement = archgate::workload::Placement {
            pull_secrets: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        };
        archgate::cluster::pull_credentials(&own, "ns", &placement, |_| Vec::new(), lookup)
    };
    let rotated = pod(&["old", "new"]);
    let ai_base = &setup.fixtures.ai_base_cuda;
    let image = setup.tag_ref(ai_base);

    let resolution = resolver
        .resolve(&image, &rotated)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\ntoken requests: {}", setup.token_log()));
    assert_eq!(resolution.digest, Some(Digest::new(&ai_base.digest)));
    assert_eq!(names(&resolution), ["linux/arm64/v8"]);
    // The stale password once (refused), then the current one (granted): nothing else.
    let reader = Presented::Basic {
        user: READER.0.into(),
        password_is_identity_token: false,
    };
    let requests = server.requests();
    let seen: Vec<(&Presented, u16, usize)> = requests
        .iter()
        .map(|r| (&r.presented, r.status, r.granted.len()))
        .collect();
    assert_eq!(
        seen,
        [(&reader, 401, 0), (&reader, 200, 1)],
        "{requests:#?}"
    );

    // Warm: the answer is cached for this list of credentials; nobody is asked again.
    server.reset();
    setup.proxy.reset();
    resolver.resolve(&image, &rotated).await.unwrap();
    assert_eq!(server.counts().total(), 0, "{}", setup.token_log());
    assert_eq!(setup.proxy.counts().total(), 0);

    // A pod with only the stale secret never reads that answer: it is refused, as its pull is.
    let error = resolver.resolve(&image, &pod(&["old"])).await.unwrap_err();
    assert_eq!(error, setup.unauthorized());
}

#[tokio::test]
async fn a_token_is_reused_within_its_lifetime() {
    let setup = Setup::start(policy()).await;
    let server = setup.registry.token_server();
    let resolver = setup.resolver();
    let anonymous = Credentials::default();
    let multi = setup.tag_ref(&setup.fixtures.multi);

    resolver.resolve(&multi, &anonymous).await.unwrap();
    assert_eq!(server.counts().anonymous, 1, "{}", setup.token_log());

    // The tag is asked again (as before a denial): the registry sees a HEAD, the token server
    // nothing.
    setup.proxy.reset();
    resolver.refresh(&multi, &anonymous).await.unwrap();
    assert_eq!(setup.proxy.counts().get("HEAD", RequestKind::Manifest), 1);
    assert_eq!(server.counts().anonymous, 1, "{}", setup.token_log());

    // Another tag of the same repository: new manifests, the same token (scoped to the
    // repository).
    let amd64 = PlatformSpec::new("linux", "amd64");
    let v2 = ImageSpec::oci_index("fixtures/multi", "v2", [amd64])
        .with_revision("2")
        .push(&setup.registry)
        .await;
    server.reset();
    setup.proxy.reset();
    let resolution = resolver
        .resolve(&setup.tag_ref(&v2), &anonymous)
        .await
        .unwrap();
    assert_eq!(names(&resolution), ["linux/amd64"]);
    assert_eq!(
        setup.proxy.counts().kind(RequestKind::Manifest),
        1,
        "one GET reached the registry"
    );
    assert_eq!(server.counts().total(), 0, "{}", setup.token_log());

    // Another repository needs a token of its own: the counter does see new requests.
    resolver
        .resolve(&setup.tag_ref(&setup.fixtures.docker_list), &anonymous)
        .await
        .unwrap();
    assert_eq!(server.counts().anonymous, 1, "{}", setup.token_log());
}

#[tokio::test]
async fn an_expired_token_is_asked_for_again() {
    const LIFETIME: Duration = Duration::from_secs(3);
    let setup = Setup::start(policy().lifetime(LIFETIME)).await;
    let server = setup.registry.token_server();
    let resolver = setup.resolver();
    let anonymous = Credentials::default();
    let multi = setup.tag_ref(&setup.fixtures.multi);

    resolver.resolve(&multi, &anonymous).await.unwrap();
    assert_eq!(server.counts().anonymous, 1, "{}", setup.token_log());
    // `exp` has whole seconds: wait past it by more than one.
    tokio::time::sleep(LIFETIME + Duration::from_millis(1200)).await;
    resolver.refresh(&multi, &anonymous).await.unwrap();
    assert_eq!(server.counts().anonymous, 2, "{}", setup.token_log());
}

/// A token the registry refuses under the very challenge that asked for it (its grant revoked,
/// or its signing key rotated) is bought afresh once, not kept: kept, it failed every lookup of
/// the repository until it expired.
#[tokio::test]
async fn a_token_refused_under_the_same_challenge_is_bought_again() {
    let setup = Setup::start(policy()).await;
    let server = setup.registry.token_server();
    let resolver = setup.resolver();
    let anonymous = Credentials::default();
    let multi = setup.tag_ref(&setup.fixtures.multi);

    // Tokens grant nothing: the registry refuses the one bought, so the lookup fails, and no
    // second token is asked for within one request.
    server.set_granting(false);
    let refused = resolver.resolve(&multi, &anonymous).await.unwrap_err();
    assert_eq!(refused, setup.unauthorized(), "{}", setup.token_log());
    assert_eq!(server.counts().anonymous, 1, "{}", setup.token_log());

    // Grants are back. The token still cached is refused under the same challenge; a new one
    // is asked for once, and the lookup succeeds.
    server.set_granting(true);
    server.reset();
    setup.proxy.reset();
    let resolution = resolver.resolve(&multi, &anonymous).await.unwrap();
    assert_eq!(names(&resolution), ["linux/amd64", "linux/arm64/v8"]);
    assert_eq!(server.counts().anonymous, 1, "{}", setup.token_log());
    // The refused GET and its retry with the new token: two manifest requests, no more.
    assert_eq!(
        setup.proxy.counts().kind(RequestKind::Manifest),
        2,
        "{:?}",
        setup.proxy.counts()
    );
}

/// The harness's stand-in against the spec, with no archgate involved: tokens are ES256 JWTs
/// with an x5c chain that the real registry accepts, and an identity token is exchanged through
/// the OAuth2 refresh-token grant, not as a Basic password.
#[tokio::test]
async fn the_token_server_follows_the_docker_token_spec() {
    let setup = Setup::start(policy()).await;
    let server = setup.registry.token_server();
    let client = setup.registry.client();
    let scope = "repository:cerebral/ai-base:pull";
    let manifest_path = "/v2/cerebral/ai-base/manifests/cuda";
    let get_manifest = |token: String| {
        client
            .get(setup.registry.url(manifest_path))
            .header(header::ACCEPT, common::media_types::ACCEPT_ANY_MANIFEST)
            .bearer_auth(token)
            .send()
    };

    // GET with Basic credentials.
    let answer: serde_json::Value = client
        .get(server.realm())
        .query(&[("service", server.service()), ("scope", scope)])
        .basic_auth(READER.0, Some(READER.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = answer["token"].as_str().unwrap().to_owned();
    assert_eq!(answer["access_token"], answer["token"]);
    assert_eq!(answer["expires_in"], 300);
    assert!(answer["issued_at"].as_str().unwrap().ends_with('Z'));
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let decode = |part: &str| -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    let (head, claims) = (decode(parts[0]), decode(parts[1]));
    assert_eq!(head["alg"], "ES256");
    assert_eq!(head["x5c"].as_array().unwrap().len(), 1);
    assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 64);
    assert_eq!(claims["iss"], server.issuer());
    assert_eq!(claims["aud"], server.service());
    assert_eq!(claims["sub"], READER.0);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    assert_eq!(
        claims["access"],
        serde_json::json!([{ "type": "repository", "name": "cerebral/ai-base", "actions": ["pull"] }])
    );
    let response = get_manifest(token.clone()).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{}",
        setup.registry.log()
    );

    // The registry checks the signature: one flipped signature byte and the token is refused.
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[10] ^= 1;
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(signature)
    );
    assert_eq!(
        get_manifest(forged).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // The OAuth2 refresh-token grant, as Docker clients send it for an identity token.
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", IDENTITY_TOKEN),
        ("service", server.service()),
        ("scope", scope),
        ("client_id", "archgate-test"),
    ];
    let response = post_form(client, &server.realm(), &form).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["scope"], scope);
    let access_token = answer["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        decode(access_token.split('.').nth(1).unwrap())["sub"],
        "robot"
    );
    let response = get_manifest(access_token).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // An unknown refresh token is an invalid grant; an identity token as a Basic password is a
    // wrong password.
    let mut bad = form;
    bad[1].1 = "not-a-token";
    let response = post_form(client, &server.realm(), &bad).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = client
        .get(server.realm())
        .query(&[("service", server.service()), ("scope", scope)])
        .basic_auth("<token>", Some(IDENTITY_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let last = server.requests().pop().unwrap();
    assert_eq!(
        last.presented,
        Presented::Basic {
            user: "<token>".into(),
            password_is_identity_token: true
        }
    );
}
