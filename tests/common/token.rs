//! A minimal registry token server for the bearer-token flow Docker Hub and most hosted
//! registries use.
//!
//! **A hand-written stand-in.** No real token server can run here: none is packaged in Debian
//! (cesanta's docker_auth, Harbor's core, Quay are not), and nothing may be fetched from the
//! internet. The registry in front of it is the real one (Debian's `docker-registry`, CNCF
//! distribution 2.8, `auth: token`), and it verifies every token this server signs exactly as it
//! would a production token server's. What this server implements of the Docker token spec
//! (distribution's `docs/spec/auth/token.md`, `jwt.md`, `oauth.md`):
//!
//! - `GET <realm>?service=S&scope=repository:NAME:ACTIONS[&scope=...]`, anonymous or with HTTP
//!   Basic credentials, answering `{"token", "access_token", "expires_in", "issued_at"}`. Wrong
//!   Basic credentials get 401; a caller who may not have what it asked for gets a token with
//!   only what it may have (an empty `access` list for an anonymous caller and a private
//!   repository), as Docker Hub does; the registry then refuses with `insufficient_scope`.
//! - `POST <realm>` with an `application/x-www-form-urlencoded` body
//!   `grant_type=refresh_token&refresh_token=T&service=S&scope=...&client_id=C`: the OAuth2 flow
//!   Docker clients use for an `identitytoken` from a docker config. Answers
//!   `{"access_token", "expires_in", "issued_at", "scope"}` when `T` is a configured identity
//!   token; 400 `invalid_grant` otherwise. Identity tokens are accepted only this way: a Basic
//!   password that happens to be an identity token is a wrong password, as the spec has it.
//!   `grant_type=password` is not implemented (400 `unsupported_grant_type`).
//! - Tokens are ES256 JWTs (signed with ring) whose header carries an `x5c` chain: the signing
//!   certificate, issued by a CA that the registry trusts as its `rootcertbundle`. Claims: `iss`,
//!   `sub` (empty for anonymous), `aud` (the service), `exp`, `nbf`, `iat`, `jti` and `access`
//!   (`[{"type": "repository", "name", "actions"}]`).
//! - Rights: anonymous callers may pull the repositories the [`TokenPolicy`] makes public;
//!   readers may pull any repository; admins may pull and push any repository (the harness
//!   pushes fixtures as an admin). `registry:catalog:*` and other resource types are never
//!   granted.
//!
//! Every request is recorded ([`TokenServer::requests`], [`TokenServer::counts`]) so tests can
//! assert which flow a client used and that it reused its tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The path of the token endpoint (the `realm` of the registry's challenge).
const TOKEN_PATH: &str = "/token";
/// The `service` the registry names in its challenge and the `aud` of every token.
pub const SERVICE: &str = "archgate-test-registry";
/// The `iss` of every token; the registry accepts no other.
pub const ISSUER: &str = "archgate-test-token-server";
/// What Docker Hub's token server answers too.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// Who may have which token.
#[derive(Clone)]
pub struct TokenPolicy {
    public: BTreeSet<String>,
    users: BTreeMap<String, User>,
    /// Identity (refresh) token → the user it stands for.
    identity_tokens: BTreeMap<String, String>,
    lifetime: Duration,
    /// Tokens grant nothing ([`TokenServer::set_granting`]).
    withheld: bool,
}

#[derive(Clone)]
struct User {
    password: String,
    role: Role,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User").field("role", &self.role).finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Pull on every repository.
    Reader,
    /// Pull and push on every repository.
    Admin,
}

/// Names and roles only: never a password or an identity token.
impl fmt::Debug for TokenPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPolicy")
            .field("public", &self.public)
            .field("users", &self.users)
            .field("identity_tokens", &self.identity_tokens.len())
            .field("lifetime", &self.lifetime)
            .field("withheld", &self.withheld)
            .finish()
    }
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            public: BTreeSet::new(),
            users: BTreeMap::new(),
            identity_tokens: BTreeMap::new(),
            lifetime: DEFAULT_LIFETIME,
            withheld: false,
        }
    }
}

impl TokenPolicy {
    pub fn new() -> Self {
        Self::default()
    }

    /// Anonymous callers may pull `repository` (e.g. `fixtures/multi`).
    pub fn public(mut self, repository: &str) -> Self {
        self.public.insert(repository.to_owned());
        self
    }

    /// `user` (HTTP Basic `user:password`) may pull every repository.
    pub fn reader(mut self, user: &str, password: &str) -> Self {
        self.add_user(user, password, Role::Reader);
        self
    }

    /// `user` may pull and push every repository; the harness pushes fixtures as the first admin.
    pub fn admin(mut self, user: &str, password: &str) -> Self {
        self.add_user(user, password, Role::Admin);
        self
    }

    /// `token` is an identity (OAuth2 refresh) token of `user`, who must already be configured:
    /// a `grant_type=refresh_token` request presenting it gets `user`'s rights.
    #[track_caller]
    pub fn identity_token(mut self, token: &str, user: &str) -> Self {
        assert!(
            self.users.contains_key(user),
            "identity token for unknown user {user}: add it with reader() or admin() first"
        );
        self.identity_tokens
            .insert(token.to_owned(), user.to_owned());
        self
    }

    /// How long tokens are valid (`exp - iat` and `expires_in`); 300 s unless set.
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The first admin's `(user, password)`, used by the harness to push.
    pub fn admin_credentials(&self) -> Option<(&str, &str)> {
        self.users
            .iter()
            .find(|(_, u)| u.role == Role::Admin)
            .map(|(name, u)| (name.as_str(), u.password.as_str()))
    }

    fn add_user(&mut self, user: &str, password: &str, role: Role) {
        let user_entry = User {
            password: password.to_owned(),
            role,
        };
        self.users.insert(user.to_owned(), user_entry);
    }

    /// Whether `who` (None: anonymous) may do `action` on `kind:name`.
    fn allows(&self, who: Option<Role>, kind: &str, name: &str, action: &str) -> bool {
        if kind != "repository" {
            return false;
        }
        match action {
            "pull" => who.is_some() || self.public.contains(name),
            "push" => who == Some(Role::Admin),
            _ => false,
        }
    }

    /// The part of `requested` that `who` may have, one entry per requested resource that keeps
    /// at least one action (the spec's "intersection" of asked and allowed).
    fn grant(&self, who: Option<Role>, requested: &[Scope]) -> Vec<Access> {
        let mut granted: Vec<Access> = Vec::new();
        for scope in requested {
            let actions: Vec<String> = scope
                .actions
                .iter()
                .filter(|a| self.allows(who, &scope.kind, &scope.name, a))
                .cloned()
                .collect();
            if actions.is_empty() {
                continue;
            }
            match granted
                .iter_mut()
                .find(|g| g.kind == scope.kind && g.name == scope.name)
            {
                Some(existing) => {
                    for action in actions {
                        if !existing.actions.contains(&action) {
                            existing.actions.push(action);
                        }
                    }
                }
                None => granted.push(Access {
                    kind: scope.kind.clone(),
                    name: scope.name.clone(),
                    actions,
                }),
            }
        }
        granted
    }
}

/// One requested scope, `TYPE:NAME:ACTION[,ACTION...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Scope {
    kind: String,
    name: String,
    actions: Vec<String>,
}

impl Scope {
    /// The type ends at the first `:`, the actions start after the last one (a name may hold
    /// a `:` only in exotic resource types, never in repositories, but this is what the spec says).
    fn parse(text: &str) -> Option<Self> {
        let (kind, rest) = text.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        Some(Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions: actions.split(',').map(str::to_owned).collect(),
        })
    }
}

/// What a token grants: one resource and the actions on it, as the JWT's `access` claim says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// `repository`.
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    fn to_json(&self) -> Value {
        json!({ "type": self.kind, "name": self.name, "actions": self.actions })
    }

    /// `repository:NAME:pull,push`, the scope syntax.
    pub fn scope(&self) -> String {
        format!("{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// The credential a token request presented. Secrets are never kept: only who, and whether a
/// Basic password was one of the configured identity tokens (the telltale of a client sending an
/// identity token where the spec wants a refresh-token grant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presented {
    /// No `Authorization` header (GET).
    Anonymous,
    /// HTTP Basic (GET).
    Basic {
        user: String,
        password_is_identity_token: bool,
    },
    /// `grant_type=refresh_token` (POST); `known` if the token is a configured identity token.
    RefreshToken { known: bool },
    /// Anything else: another grant type, another `Authorization` scheme, a bad header.
    Other(String),
}

/// One request the token server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    pub presented: Presented,
    pub service: Option<String>,
    /// The scopes asked for, as sent.
    pub scopes: Vec<String>,
    /// `client_id` of a POST (or a GET that sent one).
    pub client_id: Option<String>,
    pub status: u16,
    /// What the issued token grants; empty when refused or when nothing was allowed.
    pub granted: Vec<Access>,
}

/// Token requests so far, by the credential presented (any outcome), and how many were refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub anonymous: u64,
    pub basic: u64,
    pub refresh: u64,
    pub other: u64,
    /// Requests answered with anything but 200.
    pub denied: u64,
}

impl TokenCounts {
    pub fn total(&self) -> u64 {
        self.anonymous + self.basic + self.refresh + self.other
    }
}

/// The token signer: an ES256 key and the certificate chain the registry verifies it with.
struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// `x5c`: standard base64 of the DER signing certificate (the CA is not included: the
    /// registry has it in its root bundle).
    x5c: Vec<String>,
    root_pem: String,
}

impl Signer {
    /// A fresh CA (the registry's `rootcertbundle`) and an ECDSA P-256 signing certificate it
    /// issued.
    fn generate() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };

        let ca_key = KeyPair::generate().expect("generate token CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "archgate test token CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign token CA");
        let issuer = Issuer::new(ca_params, ca_key);

        // rcgen's default key is ECDSA P-256, which ES256 needs.
        let signing_key = KeyPair::generate().expect("generate token signing key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("signer params");
        params
            .distinguished_name
            .push(DnType::CommonName, "archgate test token signer");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let signing_cert = params
            .signed_by(&signing_key, &issuer)
            .expect("sign token signing certificate");

        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &signing_key.serialize_der(),
            &rng,
        )
        .expect("ring reads rcgen's PKCS#8 P-256 key");
        Self {
            key,
            rng,
            x5c: vec![STANDARD.encode(signing_cert.der())],
            root_pem: ca_cert.pem(),
        }
    }

    /// `base64url(header).base64url(claims).base64url(r || s)`.
    fn sign(&self, claims: &Value) -> String {
        let header = json!({ "typ": "JWT", "alg": "ES256", "x5c": self.x5c });
        let encode = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("JSON"));
        let signing_input = format!("{}.{}", encode(&header), encode(claims));
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("ES256 signature");
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }

    fn jti(&self) -> String {
        let mut bytes = [0u8; 16];
        self.rng.fill(&mut bytes).expect("random jti");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

struct Shared {
    policy: Mutex<TokenPolicy>,
    signer: Signer,
    log: Mutex<Vec<TokenRequest>>,
}

/// A token server on `127.0.0.1:0`, plain HTTP. Stops on drop.
pub struct TokenServer {
    shared: Arc<Shared>,
    host: String,
    accept: JoinHandle<()>,
}

impl TokenServer {
    /// Generates the signing CA and key and starts listening.
    pub async fn start(policy: TokenPolicy) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind token server on 127.0.0.1:0");
        let host = listener
            .local_addr()
            .expect("token server address")
            .to_string();
        let shared = Arc::new(Shared {
            policy: Mutex::new(policy),
            signer: Signer::generate(),
            log: Mutex::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Self {
            shared,
            host,
            accept,
        }
    }

    /// The URL registries send clients to (`realm` of the challenge).
    pub fn realm(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.host)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn service(&self) -> &'static str {
        SERVICE
    }

    pub fn issuer(&self) -> &'static str {
        ISSUER
    }

    /// PEM of the CA that issued the signing certificate: the registry's `rootcertbundle`.
    pub fn root_pem(&self) -> &str {
        &self.shared.signer.root_pem
    }

    /// A copy of the policy in force.
    pub fn policy(&self) -> TokenPolicy {
        self.shared.policy.lock().unwrap().clone()
    }

    /// Changes how long tokens issued from now on are valid.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.shared.policy.lock().unwrap().lifetime = lifetime;
    }

    /// Whether tokens issued from now on grant what the policy allows (`true`, the default) or
    /// nothing, as after a grant was revoked: the registry refuses such a token under the same
    /// challenge that asked for it.
    pub fn set_granting(&self, granting: bool) {
        self.shared.policy.lock().unwrap().withheld = !granting;
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    /// [`TokenServer::requests`], counted by credential.
    pub fn counts(&self) -> TokenCounts {
        let mut counts = TokenCounts::default();
        for request in self.shared.log.lock().unwrap().iter() {
            match request.presented {
                Presented::Anonymous => counts.anonymous += 1,
                Presented::Basic { .. } => counts.basic += 1,
                Presented::RefreshToken { .. } => counts.refresh += 1,
                Presented::Other(_) => counts.other += 1,
            }
            if request.status != 200 {
                counts.denied += 1;
            }
        }
        counts
    }

    /// Forgets the recorded requests, e.g. after the harness pushed fixtures.
    pub fn reset(&self) {
        self.shared.log.lock().unwrap().clear();
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        // The accept task owns every connection task, so this stops them all.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, hyper::Error>(handle(&shared, request).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// The parsed parameters of a token request, GET query or POST form alike.
#[derive(Default)]
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(encoded: &str) -> Self {
        Self(
            encoded
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (form_decode(k), form_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type TokenResponse = Response<Full<Bytes>>;

async fn handle(shared: &Shared, request: Request<Incoming>) -> TokenResponse {
    if request.uri().path() != TOKEN_PATH {
        return json_response(StatusCode::NOT_FOUND, &json!({ "error": "not_found" }));
    }
    let method = request.method().clone();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let query = Params::parse(request.uri().query().unwrap_or_default());
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            let error = json!({ "error": "invalid_request", "error_description": e.to_string() });
            return json_response(StatusCode::BAD_REQUEST, &error);
        }
    };
    let policy = shared.policy.lock().unwrap().clone();
    let (record, response) = match method {
        Method::GET => get_token(shared, &policy, authorization.as_deref(), &query),
        Method::POST => post_token(
            shared,
            &policy,
            &Params::parse(&String::from_utf8_lossy(&body)),
        ),
        other => {
            let record = TokenRequest {
                method: other.to_string(),
                presented: Presented::Other(format!("method {other}")),
                service: None,
                scopes: Vec::new(),
                client_id: None,
                status: 405,
                granted: Vec::new(),
            };
            let error = json!({ "error": "invalid_request" });
            (
                record,
                json_response(StatusCode::METHOD_NOT_ALLOWED, &error),
            )
        }
    };
    shared.log.lock().unwrap().push(record);
    response
}

/// `GET realm?service&scope`, anonymous or with Basic credentials.
fn get_token(
    shared: &Shared,
    policy: &TokenPolicy,
    authorization: Option<&str>,
    query: &Params,
) -> (TokenRequest, TokenResponse) {
    let scopes: Vec<String> = query.all("scope").map(str::to_owned).collect();
    let mut record = TokenRequest {
        method: "GET".to_owned(),
        presented: Presented::Anonymous,
        service: query.get("service").map(str::to_owned),
        scopes: scopes.clone(),
        client_id: query.get("client_id").map(str::to_owned),
        status: 200,
        granted: Vec::new(),
    };
    let who = match authorization {
        None => None,
        Some(value) => match decode_basic(value) {
            Some((user, password)) => {
                record.presented = Presented::Basic {
                    user: user.clone(),
                    password_is_identity_token: policy.identity_tokens.contains_key(&password),
                };
                match policy.users.get(&user) {
                    Some(u) if u.password == password => Some(u.role),
                    _ => return unauthorized(record, "invalid username or password"),
                }
            }
            None => {
                let scheme = value.split(' ').next().unwrap_or_default().to_owned();
                record.presented = Presented::Other(format!("Authorization: {scheme}"));
                return unauthorized(record, "only Basic credentials are accepted here");
            }
        },
    };
    if let Some(refused) = check_service(&mut record) {
        return refused;
    }
    let Some(requested) = parse_scopes(scopes.iter().map(String::as_str)) else {
        return invalid_scope(record);
    };
    let user = match &record.presented {
        Presented::Basic { user, .. } => user.clone(),
        _ => String::new(),
    };
    let granted = policy.grant(who, &requested);
    let (token, expires_in, issued_at) = issue(shared, policy, &user, &granted);
    record.granted = granted;
    let body = json!({
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": issued_at,
    });
    (record, json_response(StatusCode::OK, &body))
}

/// `POST realm` with an OAuth2 form; only `grant_type=refresh_token` is implemented.
fn post_token(
    shared: &Shared,
    policy: &TokenPolicy,
    form: &Params,
) -> (TokenRequest, TokenResponse) {
    let mut record = TokenRequest {
        method: "POST".to_owned(),
        presented: Presented::Other(format!(
            "grant_type={}",
            form.get("grant_type").unwrap_or_default()
        )),
        service: form.get("service").map(str::to_owned),
        // Space-separated in the OAuth2 form.
        scopes: form
            .get("scope")
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        client_id: form.get("client_id").map(str::to_owned),
        status: 200,
        granted: Vec::new(),
    };
    if form.get("grant_type") != Some("refresh_token") {
        return oauth_error(record, "unsupported_grant_type");
    }
    let refresh_token = form.get("refresh_token").unwrap_or_default();
    let user = policy.identity_tokens.get(refresh_token).cloned();
    record.presented = Presented::RefreshToken {
        known: user.is_some(),
    };
    if record.client_id.as_deref().is_none_or(str::is_empty) {
        return oauth_error(record, "invalid_request");
    }
    let Some(user) = user else {
        return oauth_error(record, "invalid_grant");
    };
    if let Some(refused) = check_service(&mut record) {
        return refused;
    }
    let Some(requested) = parse_scopes(record.scopes.iter().map(String::as_str)) else {
        return invalid_scope(record);
    };
    let role = policy.users.get(&user).map(|u| u.role);
    let granted = policy.grant(role, &requested);
    let (token, expires_in, issued_at) = issue(shared, policy, &user, &granted);
    let scope: Vec<String> = granted.iter().map(Access::scope).collect();
    record.granted = granted;
    let body = json!({
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": issued_at,
        "scope": scope.join(" "),
    });
    (record, json_response(StatusCode::OK, &body))
}

/// Signs a token for `subject` granting `granted`; returns it with `expires_in` and `issued_at`.
fn issue(
    shared: &Shared,
    policy: &TokenPolicy,
    subject: &str,
    granted: &[Access],
) -> (String, u64, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let lifetime = policy.lifetime.as_secs().max(1);
    let granted = if policy.withheld { &[] } else { granted };
    let claims = json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + lifetime,
        "nbf": now,
        "iat": now,
        "jti": shared.signer.jti(),
        "access": granted.iter().map(Access::to_json).collect::<Vec<_>>(),
    });
    (shared.signer.sign(&claims), lifetime, rfc3339(now))
}

/// The service must be the registry's (a token for another audience would be refused there).
fn check_service(record: &mut TokenRequest) -> Option<(TokenRequest, TokenResponse)> {
    if record.service.as_deref() == Some(SERVICE) {
        return None;
    }
    record.status = 400;
    let error = json!({ "error": "invalid_request", "error_description": "unknown service" });
    Some((
        record.clone(),
        json_response(StatusCode::BAD_REQUEST, &error),
    ))
}

fn parse_scopes<'a>(scopes: impl Iterator<Item = &'a str>) -> Option<Vec<Scope>> {
    scopes.map(Scope::parse).collect()
}

fn decode_basic(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn unauthorized(mut record: TokenRequest, message: &str) -> (TokenRequest, TokenResponse) {
    record.status = 401;
    let mut response = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({ "errors": [{ "code": "UNAUTHORIZED", "message": message }] }),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"archgate test token server\""),
    );
    (record, response)
}

fn invalid_scope(mut record: TokenRequest) -> (TokenRequest, TokenResponse) {
    record.status = 400;
    let error = json!({ "error": "invalid_scope" });
    (record, json_response(StatusCode::BAD_REQUEST, &error))
}

/// An RFC 6749 §5.2 error: 400 with `{"error": code}`.
fn oauth_error(mut record: TokenRequest, code: &str) -> (TokenRequest, TokenResponse) {
    record.status = 400;
    (
        record,
        json_response(StatusCode::BAD_REQUEST, &json!({ "error": code })),
    )
}

fn json_response(status: StatusCode, body: &Value) -> TokenResponse {
    let bytes = serde_json::to_vec(body).expect("serialize token response");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (Howard Hinnant's civil-from-days).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A `WWW-Authenticate: Bearer realm="..",service="..",scope=".."` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

impl BearerChallenge {
    /// Parses a Bearer challenge; `None` for any other scheme. Quoted values may hold commas
    /// (`scope="repository:a:pull,push"`).
    pub fn parse(header: &str) -> Option<Self> {
        let (scheme, rest) = header.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut params = BTreeMap::new();
        let mut rest = rest.trim_start();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let (value, after) = match after.strip_prefix('"') {
                Some(quoted) => {
                    let end = quoted.find('"')?;
                    (&quoted[..end], &quoted[end + 1..])
                }
                None => after.split_once(',').unwrap_or((after, "")),
            };
            params.insert(key.trim().to_ascii_lowercase(), value.to_owned());
            rest = after.trim_start_matches([',', ' ']);
        }
        Some(Self {
            realm: params.remove("realm")?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        })
    }
}
