//! The identity provider's signing keys: a JWKS document (RFC 7517) read from a URL or a file, its keys
//! picked by `kid`, refreshed without a restart.
//!
//! - Keys: only `RS256` (RSA, at least 2048 bits), `ES256` (EC P-256) and `EdDSA` (OKP Ed25519), each with a
//!   `kid`; a key's `kty`/`crv` (and its `alg`, when it names one) must fit the token header's `alg`, and its
//!   `use`, when given, must be `sig`. Symmetric (`oct`) keys and any other key are skipped: a JWKS key never
//!   checks an HS* token (algorithm confusion).
//! - Refresh: every `refresh_every` (5 min), and when a token names a `kid` the set lacks. That second kind
//!   is what an attacker can trigger, so it is bounded: one fetch at a time (requests that arrive meanwhile
//!   wait for it), at most one per `unknown_kid_cooldown` (30 s); a `kid` still unknown after that is
//!   refused at once. A fetch has a timeout and a size cap; a failed fetch keeps the last good key set.
//! - Transport: `https://` (rustls, the system's trust store), or `http://` only to a loopback host, since a
//!   key set read in clear text could be replaced on the way. No redirects are followed.

use super::token::{AuthError, Claims, decode_checked};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The header `alg`s checked against the JWKS (every other one is refused there).
pub const ACCEPTED_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Longest `kid` looked up, in bytes (longer ones are refused without a lookup).
pub const MAX_KID_BYTES: usize = 256;

/// Where the key set is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// An `https://` URL (or `http://` to a loopback host).
    Url(String),
    /// A file holding the document (re-read at every refresh, so replacing it rotates keys).
    File(PathBuf),
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::Url(url) => f.write_str(url),
            JwksSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How identity-provider tokens are checked.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// Where the keys are.
    pub source: JwksSource,
    /// The `iss` every token must carry, exactly.
    pub issuer: String,
    /// A value every token's `aud` must hold (a string, or one element of an array).
    pub audience: String,
    /// How often the key set is read again even when every `kid` is known.
    pub refresh_every: Duration,
    /// Least time between two refreshes triggered by an unknown `kid`.
    pub unknown_kid_cooldown: Duration,
    /// Longest a fetch may take (connect, headers and body).
    pub fetch_timeout: Duration,
    /// Largest document accepted, in bytes.
    pub max_bytes: usize,
}

impl JwksConfig {
    /// The defaults: refresh every 5 min, unknown-`kid` refresh at most every 30 s, 5 s timeout, 256 KiB.
    pub fn new(source: JwksSource, issuer: String, audience: String) -> Self {
        Self {
            source,
            issuer,
            audience,
            refresh_every: Duration::from_secs(300),
            unknown_kid_cooldown: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
            max_bytes: 256 * 1024,
        }
    }
}

/// Why a key set cannot be had. At start-up any of these stops `serve`; later they are logged and the
/// last good key set stays in use.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The URL does not parse, is not https (nor http to a loopback host); the URL and why.
    #[error("--jwks-url {0}: {1}")]
    BadUrl(String, String),
    /// The system's trust store cannot be read (needed for https).
    #[error("cannot read the system's TLS trust store for the JWKS URL: {0}")]
    TrustStore(String),
    /// The document could not be read: its source and why (connection, status, timeout, size, I/O).
    #[error("cannot read the JWKS from {0}: {1}")]
    Fetch(String, String),
    /// The document is not a JWKS (`{"keys": [...]}`): its source and the parser's message.
    #[error("the JWKS from {0} is not a JWKS document: {1}")]
    Malformed(String, String),
    /// The document holds no key this server can use: its source.
    #[error("the JWKS from {0} holds no usable key (RS256, ES256 or EdDSA, with a kid)")]
    NoUsableKey(String),
}

/// One usable key.
struct Key {
    alg: Algorithm,
    decoding: DecodingKey,
}

/// The keys of one successful read, by `kid`; `version` counts successful reads.
#[derive(Default)]
struct KeySet {
    version: u64,
    keys: HashMap<String, Arc<Key>>,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

enum Fetcher {
    Http { uri: hyper::Uri, client: Box<HttpClient> },
    File(PathBuf),
}

struct Inner {
    config: JwksConfig,
    fetcher: Fetcher,
    keys: RwLock<Arc<KeySet>>,
    /// Held while a refresh runs (single flight); holds when the last unknown-`kid` refresh began.
    gate: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
}

/// The identity provider's key set, shared by every request. Cheap to clone.
#[derive(Clone)]
pub struct Jwks(Arc<Inner>);

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwks({})", self.0.config.source)
    }
}

/// Whether `host` (of a URL) is this machine: the only place `http://` is accepted for keys.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn fetcher(source: &JwksSource) -> Result<Fetcher, JwksError> {
    let url = match source {
        JwksSource::File(path) => return Ok(Fetcher::File(path.clone())),
        JwksSource::Url(url) => url,
    };
    let bad = |why: &str| JwksError::BadUrl(crate::validate::echo(url), why.to_owned());
    let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => return Err(bad("must be https (http only to a loopback host)")),
        _ => return Err(bad("must be an https:// URL")),
    }
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| JwksError::TrustStore(e.to_string()))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    Ok(Fetcher::Http { uri, client: Box::new(client) })
}

impl Jwks {
    /// Reads the key set once; it must succeed (a server that cannot check any identity-provider token
    /// should not start as if it could). Errors: see [`JwksError`].
    pub async fn load(config: JwksConfig) -> Result<Self, JwksError> {
        let fetcher = fetcher(&config.source)?;
        let jwks = Jwks(Arc::new(Inner {
            config,
            fetcher,
            keys: RwLock::new(Arc::new(KeySet::default())),
            gate: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        }));
        let keys = jwks.fetch("start").await?;
        jwks.install(keys);
        Ok(jwks)
    }

    /// How many times the key set has been read (successfully or not), for tests and metrics.
    pub fn fetches(&self) -> u64 {
        self.0.fetches.load(Ordering::Relaxed)
    }

    /// Reads the key set every `refresh_every` until `shutdown`; a failure is logged and the keys stay.
    pub async fn refresh_periodically(self, shutdown: CancellationToken) {
        let every = self.0.config.refresh_every;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let _flight = self.0.gate.lock().await;
            self.refresh_locked("periodic").await;
        }
    }

    fn current(&self) -> Arc<KeySet> {
        self.0.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn install(&self, keys: HashMap<String, Arc<Key>>) {
        let mut slot = self.0.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let version = slot.version + 1;
        *slot = Arc::new(KeySet { version, keys });
    }

    /// Fetches and installs; on failure keeps the keys there are. The caller holds the gate; `trigger`
    /// labels the metric.
    async fn refresh_locked(&self, trigger: &'static str) {
        match self.fetch(trigger).await {
            Ok(keys) => {
                tracing::info!(source = %self.0.config.source, keys = keys.len(), "identity provider keys read");
                self.install(keys);
            }
            Err(error) => {
                tracing::warn!(%error, "could not refresh the identity provider's keys; keeping the last ones")
            }
        }
    }

    /// The key named `kid`: from the set there is, else from a refresh if one may run now (see the module).
    async fn key(&self, kid: &str) -> Option<Arc<Key>> {
        let seen = self.current();
        if let Some(key) = seen.keys.get(kid) {
            return Some(key.clone());
        }
        // Single flight: wait for a refresh in flight, if any, then look again.
        let mut last_on_demand = self.0.gate.lock().await;
        let now = self.current();
        if let Some(key) = now.keys.get(kid) {
            return Some(key.clone());
        }
        if now.version != seen.version {
            return None; // a refresh completed after we looked, and the kid is not in it
        }
        if last_on_demand.is_some_and(|at| at.elapsed() < self.0.config.unknown_kid_cooldown) {
            return None;
        }
        *last_on_demand = Some(Instant::now());
        self.refresh_locked("unknown_kid").await;
        self.current().keys.get(kid).cloned()
    }

    /// The claims of an identity-provider token whose header is `header`: its `kid` names a key of the
    /// set whose algorithm is the header's, the signature is that key's, `iss` and `aud` are the configured
    /// ones, and the claims are in their domains and in force. Errors: `Expired`, else `Invalid`.
    pub(super) async fn verify(&self, token: &str, header: &Header) -> Result<Claims, AuthError> {
        let kid = header.kid.as_deref().filter(|kid| !kid.is_empty() && kid.len() <= MAX_KID_BYTES);
        let key = self.key(kid.ok_or(AuthError::Invalid)?).await.ok_or(AuthError::Invalid)?;
        if key.alg != header.alg {
            return Err(AuthError::Invalid);
        }
        let mut validation = Validation::new(key.alg);
        validation.leeway = 0; // expiry is exact, as for our own tokens
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.set_issuer(&[&self.0.config.issuer]);
        validation.set_audience(&[&self.0.config.audience]);
        decode_checked(token, &key.decoding, &validation)
    }

    /// Reads and parses the document. Counts the attempt (`trigger` and the outcome label the metric).
    async fn fetch(&self, trigger: &'static str) -> Result<HashMap<String, Arc<Key>>, JwksError> {
        self.0.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.read_and_parse().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::metrics::JWKS_FETCHES, "trigger" => trigger, "outcome" => outcome).increment(1);
        result
    }

    async fn read_and_parse(&self) -> Result<HashMap<String, Arc<Key>>, JwksError> {
        let source = self.0.config.source.to_string();
        let failed = |why: String| JwksError::Fetch(source.clone(), why);
        let max = self.0.config.max_bytes;
        let read = async {
            match &self.0.fetcher {
                Fetcher::File(path) => {
                    let bytes = tokio::fs::read(path).await.map_err(|e| failed(e.to_string()))?;
                    if bytes.len() > max {
                        return Err(failed(format!("larger than {max} bytes")));
                    }
                    Ok(bytes)
                }
                Fetcher::Http { uri, client } => {
                    let response = client.get(uri.clone()).await.map_err(|e| failed(e.to_string()))?;
                    if response.status() != hyper::StatusCode::OK {
                        return Err(failed(format!("status {}", response.status())));
                    }
                    let body = Limited::new(response.into_body(), max).collect().await;
                    let body = body.map_err(|e| failed(format!("{e} (at most {max} bytes)")))?;
                    Ok(body.to_bytes().to_vec())
                }
            }
        };
        let bytes = tokio::time::timeout(self.0.config.fetch_timeout, read)
            .await
            .map_err(|_| failed(format!("no answer within {:?}", self.0.config.fetch_timeout)))??;
        parse_key_set(&bytes).map_err(|e| match e {
            ParseError::Malformed(why) => JwksError::Malformed(source.clone(), why),
            ParseError::NoUsableKey => JwksError::NoUsableKey(source.clone()),
        })
    }
}

enum ParseError {
    Malformed(String),
    NoUsableKey,
}

/// The usable keys of a JWKS document, by `kid`. Keys this server cannot use are skipped (an identity
/// provider may publish encryption keys or algorithms we do not accept next to its signing keys); a
/// repeated `kid` keeps its first key.
fn parse_key_set(bytes: &[u8]) -> Result<HashMap<String, Arc<Key>>, ParseError> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(bytes).map_err(|e| ParseError::Malformed(e.to_string()))?;
    let mut keys = HashMap::new();
    for value in document.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else { continue };
        let Some(kid) = jwk.common.key_id.clone().filter(|kid| !kid.is_empty() && kid.len() <= MAX_KID_BYTES) else {
            continue;
        };
        if let Some(key) = usable_key(&jwk) {
            keys.entry(kid).or_insert_with(|| Arc::new(key));
        }
    }
    if keys.is_empty() { Err(ParseError::NoUsableKey) } else { Ok(keys) }
}

/// Shortest RSA modulus accepted, in base64url characters: 2048 bits.
const MIN_RSA_MODULUS_CHARS: usize = 342;

/// The key a JWK describes, if it is a signing key of an accepted algorithm whose declared `alg` (if any)
/// agrees with its type and curve.
fn usable_key(jwk: &Jwk) -> Option<Key> {
    if jwk.common.public_key_use.as_ref().is_some_and(|usage| *usage != PublicKeyUse::Signature) {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) if rsa.n.trim_end_matches('=').len() >= MIN_RSA_MODULUS_CHARS => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        _ => return None, // oct (HMAC) keys above all: a JWKS key never checks an HS* token
    };
    let declared_fits = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => alg == Algorithm::EdDSA,
        Some(_) => false,
    };
    if !declared_fits {
        return None;
    }
    DecodingKey::from_jwk(jwk).ok().map(|decoding| Key { alg, decoding })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ec_key(kid: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut key = json!({
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
        });
        if let (Some(key), Some(extra)) = (key.as_object_mut(), extra.as_object()) {
            key.extend(extra.clone());
        }
        key
    }

    fn parse(doc: serde_json::Value) -> Result<Vec<String>, &'static str> {
        match parse_key_set(doc.to_string().as_bytes()) {
            Ok(keys) => {
                let mut kids: Vec<String> = keys.into_keys().collect();
                kids.sort();
                Ok(kids)
            }
            Err(ParseError::Malformed(_)) => Err("malformed"),
            Err(ParseError::NoUsableKey) => Err("no usable key"),
        }
    }

    #[test]
    fn only_signing_keys_of_accepted_algorithms_with_a_kid_are_kept() {
        let doc = json!({"keys": [
            ec_key("good", json!({})),
            ec_key("declared", json!({"alg": "ES256", "use": "sig"})),
            ec_key("wrong-alg", json!({"alg": "RS256"})),
            ec_key("for-encryption", json!({"use": "enc"})),
            ec_key("", json!({})),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
            {"kty": "RSA", "kid": "short-rsa", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1Wl", "e": "AQAB"},
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"},
            {"kty": "whatever", "kid": "odd"},
        ]});
        assert_eq!(parse(doc), Ok(vec!["declared".to_owned(), "good".to_owned()]));
        assert_eq!(parse(json!({"keys": [{"kty": "oct", "kid": "hmac", "k": "AAAA"}]})), Err("no usable key"));
        assert_eq!(parse(json!({"nokeys": []})), Err("malformed"));
    }

    #[tokio::test]
    async fn a_document_over_the_size_cap_or_a_server_that_does_not_answer_is_a_failed_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({"keys": [ec_key("k", json!({}))]}).to_string()).unwrap();
        let config = |source| JwksConfig::new(source, "iss".into(), "aud".into());
        assert!(Jwks::load(config(JwksSource::File(path.clone()))).await.is_ok());
        let small = JwksConfig { max_bytes: 64, ..config(JwksSource::File(path)) };
        let error = Jwks::load(small).await.unwrap_err().to_string();
        assert!(error.contains("larger than 64 bytes"), "{error}");

        // Accepts the connection, never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", silent.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((connection, _)) = silent.accept().await {
                open.push(connection);
            }
        });
        let quick = JwksConfig { fetch_timeout: Duration::from_millis(200), ..config(JwksSource::Url(url)) };
        let started = Instant::now();
        let error = Jwks::load(quick).await.unwrap_err().to_string();
        assert!(error.contains("no answer within"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();

        // Answers with a body over the cap.
        let big = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", big.local_addr().unwrap());
        let served = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if let Ok((mut connection, _)) = big.accept().await {
                let mut request = [0u8; 1024];
                let _ = connection.read(&mut request).await;
                let body = format!("{{\"keys\": [], \"padding\": \"{}\"}}", "x".repeat(10_000));
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                let _ = connection.write_all(format!("{head}{body}").as_bytes()).await;
            }
        });
        let capped = JwksConfig { max_bytes: 1024, ..config(JwksSource::Url(url)) };
        let error = Jwks::load(capped).await.unwrap_err().to_string();
        assert!(error.contains("at most 1024 bytes"), "{error}");
        served.abort();
    }

    #[test]
    fn key_urls_must_be_https_except_to_this_machine() {
        let url = |u: &str| fetcher(&JwksSource::Url(u.to_owned())).err().map(|e| e.to_string());
        assert!(url("http://idp.example.com/jwks").is_some_and(|e| e.contains("must be https")));
        assert!(url("ftp://idp.example.com/jwks").is_some());
        assert!(url("not a url").is_some());
        assert_eq!(url("http://127.0.0.1:9/jwks"), None);
        assert_eq!(url("http://[::1]:9/jwks"), None);
        assert_eq!(url("http://localhost/jwks"), None);
    }
}
