//! Tokens from the identity provider: RS256, ES256 and EdDSA keys generated here, published in a JWKS
//! document by a small HTTP server of the test that counts its fetches.

use crate::app::*;
use crate::helpers::*;
use axum::routing::get;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use smartscheduler::auth::{JwksConfig, JwksSource};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const ISSUER: &str = "https://idp.example.com/";
const AUDIENCE: &str = "smartscheduler";

/// A signing key of the identity provider.
#[derive(Clone)]
struct IdpKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
    /// For RSA keys: the public key in PEM (what an algorithm-confusion attack signs HS256 tokens with).
    public_pem: Option<String>,
}

impl IdpKey {
    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey, public_pem: Option<String>) -> Self {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("a JWK of the key");
        jwk.common.key_id = Some(kid.to_owned());
        Self { kid: kid.to_owned(), alg, encoding, jwk, public_pem }
    }

    /// A 2048-bit RSA key; generated once per test run (key generation is slow without optimisation).
    fn rsa(kid: &str) -> Self {
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::EncodePublicKey;
        let key = KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap());
        let der = key.to_pkcs1_der().unwrap();
        let pem = key.to_public_key().to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        Self::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(der.as_bytes()), Some(pem))
    }

    fn p256(kid: &str) -> Self {
        use p256::pkcs8::EncodePrivateKey;
        let key = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        Self::new(kid, Algorithm::ES256, EncodingKey::from_ec_der(key.to_pkcs8_der().unwrap().as_bytes()), None)
    }

    fn ed25519(kid: &str) -> Self {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let key = ed25519_dalek::SigningKey::generate(&mut rsa::rand_core::OsRng);
        // PKCS#8 v1 (without the public key), the form jsonwebtoken derives a JWK from.
        let bytes = ed25519_dalek::pkcs8::KeypairBytes { secret_key: key.to_bytes(), public_key: None };
        Self::new(kid, Algorithm::EdDSA, EncodingKey::from_ed_der(bytes.to_pkcs8_der().unwrap().as_bytes()), None)
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// Claims the provider would sign for `sub`, valid for an hour.
fn claims(sub: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": sub, "iss": ISSUER, "aud": [AUDIENCE, "other-app"], "iat": now, "exp": now + 3600})
}

/// The provider's JWKS endpoint: serves `keys`, counts fetches, answers 500 while `failing`.
#[derive(Clone)]
struct Idp {
    url: String,
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<AtomicUsize>,
    /// The number of fetches so far, to await.
    fetched: Arc<tokio::sync::watch::Sender<usize>>,
    failing: Arc<AtomicBool>,
}

impl Idp {
    async fn start(keys: &[&IdpKey]) -> Self {
        let idp = Idp {
            url: String::new(),
            keys: Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect())),
            fetches: Arc::new(AtomicUsize::new(0)),
            fetched: Arc::new(tokio::sync::watch::channel(0).0),
            failing: Arc::new(AtomicBool::new(false)),
        };
        let served = idp.clone();
        let app = axum::Router::new().route(
            "/jwks",
            get(move || {
                let idp = served.clone();
                async move {
                    let n = idp.fetches.fetch_add(1, Ordering::SeqCst) + 1;
                    let answer = if idp.failing.load(Ordering::SeqCst) {
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down".to_owned())
                    } else {
                        let set = JwkSet { keys: idp.keys.lock().unwrap().clone() };
                        (axum::http::StatusCode::OK, serde_json::to_string(&set).unwrap())
                    };
                    idp.fetched.send_replace(n); // once the answer is decided
                    answer
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Idp { url, ..idp }
    }

    fn publish(&self, key: &IdpKey) {
        self.keys.lock().unwrap().push(key.jwk.clone());
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn config(&self) -> JwksConfig {
        JwksConfig::new(JwksSource::Url(self.url.clone()), ISSUER.to_owned(), AUDIENCE.to_owned())
    }
}

/// `GET /api/me` with `token`: (status, error code if any).
async fn me(app: &TestApp, token: &str) -> (u16, Option<String>) {
    let response = http().get(app.url("/api/me")).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error"]["code"].as_str().map(str::to_owned))
}

fn invalid() -> (u16, Option<String>) {
    (401, Some("invalid_token".to_owned()))
}

#[tokio::test]
async fn tokens_signed_with_rs256_es256_and_eddsa_keys_of_the_jwks_are_accepted_next_to_hs256_ones() {
    let db = TestDb::new().await;
    let hs256 = dispatcher_token(&db, "carol", &["region:north"]).await;
    let (rsa, ec, ed) = (IdpKey::rsa("rsa-1"), IdpKey::p256("ec-1"), IdpKey::ed25519("ed-1"));
    let idp = Idp::start(&[&rsa, &ec, &ed]).await;
    let config = idp.config();
    let app = TestApp::spawn_with(&db, |c| c.jwks = Some(config)).await;

    for key in [&rsa, &ec, &ed] {
        assert_eq!(me(&app, &key.sign(&claims("carol"))).await, (200, None), "{:?}", key.alg);
    }
    assert_eq!(me(&app, &hs256).await, (200, None), "HS256 tokens keep working");
    let body: Value = http()
        .get(app.url("/api/me"))
        .bearer_auth(ec.sign(&claims("carol")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["dispatcherId"], "carol");
    assert_eq!(me(&app, &ec.sign(&claims("nobody"))).await, (401, Some("unknown_dispatcher".to_owned())));
    assert_eq!(me(&app, &ec.sign(&claims("not an id"))).await, invalid());

    // A session cookie from an identity-provider token, and a stream.
    let session = http().post(app.url("/api/session")).json(&json!({"token": ed.sign(&claims("carol"))})).send();
    assert_eq!(session.await.unwrap().status(), 200);
    let token = rsa.sign(&claims("carol"));
    let mut stream = Connect::new(&token).open(&app.base).await;
    write_event(&db.pool, &["region:north"], json!({"n": 1})).await;
    assert_eq!(data_json(&stream.next_data(Duration::from_secs(10)).await)["n"], 1);

    // Disabling is what withdraws identity-provider tokens, on requests and on open streams.
    smartscheduler::auth::disable_dispatcher(&db.pool, "carol").await.unwrap();
    assert_eq!(me(&app, &ec.sign(&claims("carol"))).await, (403, Some("dispatcher_disabled".to_owned())));
    let revoked = loop {
        let event = stream.next(Duration::from_secs(5)).await;
        if event.event == "access-revoked" {
            break event;
        }
    };
    assert_eq!(data_json(&revoked)["reason"], "disabled");
    assert_eq!(idp.fetches(), 1, "every kid was known: no fetch after the first");
}

#[tokio::test]
async fn a_foreign_issuer_or_audience_a_mismatched_key_and_algorithm_confusion_are_invalid_tokens() {
    let db = TestDb::new().await;
    dispatcher_token(&db, "carol", &["region:north"]).await;
    let (rsa, ec, ed) = (IdpKey::rsa("rsa-1"), IdpKey::p256("ec-1"), IdpKey::ed25519("ed-1"));
    let idp = Idp::start(&[&rsa, &ec, &ed]).await;
    let config = idp.config();
    let app = TestApp::spawn_with(&db, |c| c.jwks = Some(config)).await;
    let with = |change: Value| {
        let mut c = claims("carol");
        c.as_object_mut().unwrap().extend(change.as_object().unwrap().clone());
        c
    };

    assert_eq!(me(&app, &ec.sign(&with(json!({"iss": "https://evil.example.com/"})))).await, invalid());
    assert_eq!(me(&app, &ec.sign(&with(json!({"aud": "other-app"})))).await, invalid());
    let mut no_aud = claims("carol");
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(me(&app, &ec.sign(&no_aud)).await, invalid());
    let mut no_iss = claims("carol");
    no_iss.as_object_mut().unwrap().remove("iss");
    assert_eq!(me(&app, &ec.sign(&no_iss)).await, invalid());
    let now = chrono::Utc::now().timestamp();
    assert_eq!(me(&app, &ec.sign(&with(json!({"nbf": now + 3600})))).await, invalid(), "not yet valid");
    assert_eq!(
        me(&app, &ec.sign(&with(json!({"iat": now - 7200, "exp": now - 1})))).await,
        (401, Some("token_expired".to_owned()))
    );

    // A token naming one key's kid but signed by another key, or with another algorithm.
    let mut impostor = IdpKey::p256("ec-1");
    impostor.jwk = ec.jwk.clone();
    assert_eq!(me(&app, &impostor.sign(&claims("carol"))).await, invalid(), "signature of another key");
    let mut ed_as_rsa = ed.clone();
    ed_as_rsa.kid = "rsa-1".to_owned();
    assert_eq!(me(&app, &ed_as_rsa.sign(&claims("carol"))).await, invalid(), "EdDSA token naming an RSA key");

    // Algorithm confusion: HS256 signed with the RSA public key as the HMAC secret, naming its kid.
    let pem = rsa.public_pem.clone().unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".to_owned());
    let confused = jsonwebtoken::encode(&header, &claims("carol"), &EncodingKey::from_secret(pem.as_bytes())).unwrap();
    assert_eq!(me(&app, &confused).await, invalid());

    // alg none, unsigned.
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "kid": "rsa-1"})), b64(&claims("carol")));
    assert_eq!(me(&app, &unsigned).await, invalid());
    // No kid at all.
    let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims("carol"), &ec.encoding).unwrap();
    assert_eq!(me(&app, &no_kid).await, invalid());
}

#[tokio::test]
async fn a_key_published_after_start_is_accepted_without_a_restart() {
    let db = TestDb::new().await;
    dispatcher_token(&db, "carol", &["region:north"]).await;
    let old = IdpKey::p256("2026-01");
    let idp = Idp::start(&[&old]).await;
    let config = idp.config();
    let app = TestApp::spawn_with(&db, |c| c.jwks = Some(config)).await;
    assert_eq!(me(&app, &old.sign(&claims("carol"))).await, (200, None));
    assert_eq!(idp.fetches(), 1);

    let new = IdpKey::rsa("2026-02");
    idp.publish(&new);
    assert_eq!(me(&app, &new.sign(&claims("carol"))).await, (200, None), "the new kid is fetched and accepted");
    assert_eq!(idp.fetches(), 2, "one fetch for the unknown kid");
    assert_eq!(me(&app, &new.sign(&claims("carol"))).await, (200, None));
    assert_eq!(me(&app, &old.sign(&claims("carol"))).await, (200, None), "the old key is still published");
    assert_eq!(idp.fetches(), 2, "known kids need no fetch");
}

#[tokio::test]
async fn the_key_set_is_read_again_periodically_without_any_token_asking() {
    let db = TestDb::new().await;
    dispatcher_token(&db, "carol", &["region:north"]).await;
    let (old, new) = (IdpKey::p256("old"), IdpKey::ed25519("new"));
    let idp = Idp::start(&[&old]).await;
    let config = JwksConfig { refresh_every: Duration::from_millis(300), ..idp.config() };
    let mut fetched = idp.fetched.subscribe();
    let app = TestApp::spawn_with(&db, |c| c.jwks = Some(config)).await;
    idp.publish(&new);
    let refreshed = tokio::time::timeout(Duration::from_secs(5), fetched.wait_for(|n| *n >= 2)).await;
    assert!(refreshed.is_ok(), "no periodic refresh within 5 s");
    // From now on every read fails: the new key can only be known from the periodic read that was answered.
    idp.failing.store(true, Ordering::SeqCst);
    assert_eq!(me(&app, &new.sign(&claims("carol"))).await, (200, None), "known from the periodic read");
    assert_eq!(me(&app, &old.sign(&claims("carol"))).await, (200, None));
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_the_key_set_at_most_once() {
    let db = TestDb::new().await;
    dispatcher_token(&db, "carol", &["region:north"]).await;
    let key = IdpKey::p256("real");
    let idp = Idp::start(&[&key]).await;
    let config = idp.config();
    let app = TestApp::spawn_with(&db, |c| c.jwks = Some(config)).await;

    let requests = (0..200).map(|i| {
        let mut forged = key.clone();
        forged.kid = format!("random-{i}-{}", uuid::Uuid::new_v4());
        let token = forged.sign(&claims("carol"));
        let app = &app;
        async move { me(app, &token).await }
    });
    let answers = futures::future::join_all(requests).await;
    assert!(answers.iter().all(|a| *a == invalid()), "{:?}", answers.iter().find(|a| **a != invalid()));
    assert!(idp.fetches() <= 2, "{} fetches for one flood (one at start, at most one for the flood)", idp.fetches());

    // Within the cool-down even a real new key waits: the flood bought no further fetch.
    let fetches = idp.fetches();
    let late = IdpKey::ed25519("late");
    idp.publish(&late);
    assert_eq!(me(&app, &late.sign(&claims("carol"))).await, invalid());
    assert_eq!(idp.fetches(), fetches);
    assert_eq!(me(&app, &key.sign(&claims("carol"))).await, (200, None), "known keys are unaffected");
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_good_keys() {
    let db = TestDb::new().await;
    dispatcher_token(&db, "carol", &["region:north"]).await;
    let key = IdpKey::ed25519("ed-1");
    let idp = Idp::start(&[&key]).await;
    let config = idp.config();
    let app = TestApp::spawn_with(&db, |c| c.jwks = Some(config)).await;
    idp.failing.store(true, Ordering::SeqCst);
    let unknown = IdpKey::ed25519("unknown");
    assert_eq!(me(&app, &unknown.sign(&claims("carol"))).await, invalid());
    assert_eq!(idp.fetches(), 2, "the unknown kid was looked for, and the fetch failed");
    assert_eq!(me(&app, &key.sign(&claims("carol"))).await, (200, None), "the last good keys stay");
}

#[tokio::test]
async fn keys_from_a_file_are_read_at_start_and_again_for_an_unknown_kid() {
    let db = TestDb::new().await;
    dispatcher_token(&db, "carol", &["region:north"]).await;
    let (first, second) = (IdpKey::p256("file-1"), IdpKey::ed25519("file-2"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let write = |keys: Vec<Jwk>| std::fs::write(&path, serde_json::to_string(&JwkSet { keys }).unwrap()).unwrap();
    write(vec![first.jwk.clone()]);
    let config = JwksConfig::new(JwksSource::File(path.clone()), ISSUER.to_owned(), AUDIENCE.to_owned());
    let app = TestApp::spawn_with(&db, |c| c.jwks = Some(config)).await;
    assert_eq!(me(&app, &first.sign(&claims("carol"))).await, (200, None));
    write(vec![first.jwk.clone(), second.jwk.clone()]);
    assert_eq!(me(&app, &second.sign(&claims("carol"))).await, (200, None), "rotated by replacing the file");
}

#[tokio::test]
async fn serve_refuses_a_jwks_without_issuer_and_audience_and_one_it_cannot_read() {
    let db = TestDb::new().await;
    let serve = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_smartscheduler"))
            .arg("serve")
            .args(args)
            .args(["--addr", "127.0.0.1:0"])
            .env("DATABASE_URL", &db.url)
            .env_remove("SMARTSCHEDULER_AUTH_SECRET")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let no_audience = serve(&["--jwks-url", "http://127.0.0.1:9/jwks", "--token-issuer", ISSUER]);
    assert_eq!(no_audience.status.code(), Some(2), "{}", String::from_utf8_lossy(&no_audience.stderr));
    assert!(String::from_utf8_lossy(&no_audience.stderr).contains("--token-audience"));
    let plain_http =
        serve(&["--jwks-url", "http://idp.example.com/jwks", "--token-issuer", ISSUER, "--token-audience", AUDIENCE]);
    assert_eq!(plain_http.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&plain_http.stderr).contains("must be https"));
    let missing =
        serve(&["--jwks-file", "/nonexistent/jwks.json", "--token-issuer", ISSUER, "--token-audience", AUDIENCE]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read the JWKS"));
}
