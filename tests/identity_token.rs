//! An `identitytoken` from a docker `config.json` (issue 2, item 4: "credentials from a docker
//! config.json: basic, identity tokens, ..."), against a registry with bearer-token auth.
//!
//! An identity token is an OAuth2 refresh token (what `docker login` stores when the registry's
//! token server hands one out). Docker's spec (distribution `docs/spec/auth/oauth.md`) and the
//! Docker client exchange it at the token endpoint with
//! `POST grant_type=refresh_token&refresh_token=T&service=S&scope=...&client_id=C`; it is not a
//! password. The harness's token server (tests/common/token.rs) follows that spec, and
//! `token_auth::the_token_server_follows_the_docker_token_spec` checks it does, so a failure here
//! is about what archgate sends.
//! archgate does that exchange itself (src/resolver/oauth.rs), one access token per repository.

mod common;

use std::sync::Arc;

use archgate::metrics::Metrics;
use archgate::reference::ImageRef;
use archgate::resolver::{Credentials, Digest, RegistryOptions, Resolver};
use base64::Engine;
use common::{CountingProxy, ImageSpec, PlatformSpec, Presented, Registry, TokenPolicy};

const IDENTITY_TOKEN: &str = "idt-robot-5d1e77";

#[tokio::test]
async fn an_identity_token_from_a_docker_config_is_exchanged_for_a_registry_token() {
    common::install_crypto_provider();
    let policy = TokenPolicy::new()
        .admin("pusher", "push-pw")
        // The robot's password is not in the docker config: only its identity token is.
        .reader("robot", "robot-password-never-shared")
        .identity_token(IDENTITY_TOKEN, "robot");
    let registry = Registry::start_token_auth(policy).await;
    let arm64 = PlatformSpec::new("linux", "arm64").variant("v8");
    let image = ImageSpec::oci_index("private/app", "v1", [arm64])
        .push(&registry)
        .await;
    // A second repository: access tokens are scoped to one repository, so a client that turns
    // the identity token into a single bearer token for the whole registry fails here.
    let amd64 = PlatformSpec::new("linux", "amd64");
    let tool = ImageSpec::docker_manifest("private/tool", "v2", amd64)
        .push(&registry)
        .await;
    let proxy = CountingProxy::start(registry.host()).await;
    let server = registry.token_server();
    server.reset();

    // What `docker login` writes when the registry issues an identity token: the user name with
    // an empty password in `auth`, and the token beside it.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let entry = serde_json::json!({
        "auth": base64::engine::general_purpose::STANDARD.encode("robot:"),
        "identitytoken": IDENTITY_TOKEN,
    });
    let json = serde_json::json!({ "auths": { proxy.host(): entry } });
    std::fs::write(&config, serde_json::to_vec(&json).unwrap()).unwrap();
    let credentials = Credentials::load(Some(&config)).unwrap();

    let options = RegistryOptions {
        insecure: vec![proxy.host().to_owned()],
        ..RegistryOptions::default()
    };
    let resolver = Resolver::new(options, Arc::new(Metrics::new())).unwrap();
    let reference = ImageRef::parse(&format!("{}/private/app:v1", proxy.host())).unwrap();
    let result = resolver.resolve(&reference, &credentials).await;
    let tool_reference = ImageRef::parse(&format!("{}/private/tool:v2", proxy.host())).unwrap();
    let tool_result = resolver.resolve(&tool_reference, &credentials).await;

    let requests = server.requests();
    let sent: Vec<String> = requests.iter().map(describe).collect();
    let resolution = result.unwrap_or_else(|error| {
        panic!(
            "resolving with an identity token failed: {error}\n\
             token requests archgate made:\n  {}\n\
             expected: POST {} with grant_type=refresh_token, refresh_token=<the identity token>, \
             service, scope=repository:private/app:pull and a client_id (Docker's OAuth2 flow)",
            sent.join("\n  "),
            server.realm(),
        )
    });
    assert_eq!(resolution.digest, Some(Digest::new(&image.digest)));
    let platforms: Vec<String> = resolution.platforms.iter().map(|p| p.to_string()).collect();
    assert_eq!(platforms, ["linux/arm64/v8"]);
    let tool_resolution = tool_result.unwrap_or_else(|error| {
        panic!(
            "the second repository failed: {error}\ntoken requests:\n  {}",
            sent.join("\n  ")
        )
    });
    assert_eq!(tool_resolution.digest, Some(Digest::new(&tool.digest)));

    let refresh: Vec<_> = requests
        .iter()
        .filter(|r| r.presented == Presented::RefreshToken { known: true })
        .collect();
    let mut asked: Vec<String> = refresh.iter().map(|r| r.scopes.join(" ")).collect();
    asked.dedup();
    assert_eq!(
        asked,
        [
            "repository:private/app:pull",
            "repository:private/tool:pull"
        ],
        "a refresh-token grant for each repository, in lookup order: {sent:?}"
    );
    for request in refresh {
        assert_eq!(request.method, "POST");
        assert!(request.client_id.as_deref().is_some_and(|c| !c.is_empty()));
        assert_eq!(request.status, 200);
    }
    assert_eq!(server.counts().denied, 0, "{sent:?}");
}

/// One token request as a line: method, credential, scope, answer.
fn describe(request: &common::TokenRequest) -> String {
    let presented = match &request.presented {
        Presented::Anonymous => "no credentials".to_owned(),
        Presented::Basic {
            user,
            password_is_identity_token,
        } => format!(
            "HTTP Basic, user {user:?}, password {}",
            if *password_is_identity_token {
                "= the identity token"
            } else {
                "not the identity token"
            }
        ),
        Presented::RefreshToken { known } => {
            format!("grant_type=refresh_token (known token: {known})")
        }
        Presented::Other(what) => what.clone(),
    };
    format!(
        "{} scope={:?} client_id={:?} with {presented} -> HTTP {}",
        request.method, request.scopes, request.client_id, request.status
    )
}
