//! Signed dispatcher tokens.

use crate::validate;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Shortest secret accepted for HS256 (the contract asks for at least 32 bytes).
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a secret cannot be had, a token issued, or a request authenticated. HTTP answers `MissingToken`,
/// `Expired` and `Invalid` with 401.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    /// `SMARTSCHEDULER_AUTH_SECRET` is not set (or empty).
    #[error("SMARTSCHEDULER_AUTH_SECRET is not set (serve --dev generates an ephemeral one)")]
    MissingSecret,
    /// The secret is shorter than [`MIN_SECRET_BYTES`]; its length in bytes.
    #[error("SMARTSCHEDULER_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes, got {0}")]
    ShortSecret(usize),
    /// The request carries no token (no bearer header, no session cookie).
    #[error("no token: send Authorization: Bearer <token> or the ss_session cookie")]
    MissingToken,
    /// The token's `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// Not a token this secret signed, or malformed.
    #[error("the token is not valid")]
    Invalid,
    /// Signing failed; the signer's message.
    #[error("cannot sign the token: {0}")]
    Signing(String),
    /// The lifetime would expire after year 9999; the lifetime asked for.
    #[error("a token must expire by 9999-12-31T23:59:59Z; a lifetime of {0:?} does not")]
    BadTtl(Duration),
}

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The dispatcher id.
    pub sub: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expires at (seconds since the epoch).
    pub exp: i64,
    /// Not valid before (seconds since the epoch), when the issuer set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// The dispatcher's token generation when this server issued the token (`dispatchers.token_generation`;
    /// see [`super::TokenOrigin`]). Absent in tokens issued before generations existed (they count as 0),
    /// and ignored in identity-provider tokens.
    #[serde(rename = "gen", default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// How far in the future a token's `nbf` and `iat` may lie, in seconds: the issuer's clock may run a
/// little ahead of ours. `exp` gets no leeway: a stream ends at `exp` exactly, with `auth-expired`.
pub const CLOCK_LEEWAY_SECS: i64 = 60;

/// The HMAC secret tokens are signed with.
#[derive(Clone)]
pub struct AuthSecret {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthSecret(..)")
    }
}

impl AuthSecret {
    /// The secret `secret` (raw bytes). Errors: [`AuthError::ShortSecret`] below [`MIN_SECRET_BYTES`].
    pub fn new(secret: &[u8]) -> Result<Self, AuthError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthError::ShortSecret(secret.len()));
        }
        Ok(Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret) })
    }

    /// Reads `SMARTSCHEDULER_AUTH_SECRET`. Errors: `MissingSecret`, `ShortSecret`.
    pub fn from_env() -> Result<Self, AuthError> {
        match std::env::var("SMARTSCHEDULER_AUTH_SECRET") {
            Ok(s) if !s.is_empty() => Self::new(s.as_bytes()),
            _ => Err(AuthError::MissingSecret),
        }
    }

    /// A random secret for development: tokens die with the process.
    pub fn ephemeral() -> Self {
        let mut bytes = [0u8; 48];
        rand::rng().fill_bytes(&mut bytes);
        Self { encoding: EncodingKey::from_secret(&bytes), decoding: DecodingKey::from_secret(&bytes) }
    }

    /// A token for `dispatcher_id` at their token generation `generation` (see [`super::token_generation`]),
    /// valid for `ttl`. Refuses what [`AuthSecret::verify`] would refuse: an id that is not a dispatcher id,
    /// a negative generation, a lifetime that ends after 9999-12-31.
    pub fn issue(&self, dispatcher_id: &str, generation: i64, ttl: Duration) -> Result<String, AuthError> {
        validate::dispatcher_id("dispatcher", dispatcher_id).map_err(|e| AuthError::Signing(e.to_string()))?;
        if generation < 0 {
            return Err(AuthError::Signing(format!("a token generation is at least 0, not {generation}")));
        }
        let now = chrono::Utc::now().timestamp();
        let exp = i64::try_from(ttl.as_secs()).ok().and_then(|ttl| now.checked_add(ttl));
        let exp = exp.filter(|exp| validate::unix_seconds("exp", *exp).is_ok()).ok_or(AuthError::BadTtl(ttl))?;
        let claims = Claims { sub: dispatcher_id.to_owned(), iat: now, exp, nbf: None, generation: Some(generation) };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }

    /// The claims of a token signed with this secret, unexpired, whose claims are in their domains: `sub`
    /// is a dispatcher id (it is used in a query) and `exp` a time before 9999-12-31 (it becomes the
    /// stream's end). A signed token can still carry anything, so the claims are checked like any input,
    /// and every registered claim it carries is honoured: `nbf` and `iat` no later than
    /// [`CLOCK_LEEWAY_SECS`] ahead, an `aud` only when one is expected (never here, so a token meant for
    /// another audience is refused).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0; // expiry is exact: the stream ends at exp with auth-expired
        validation.set_required_spec_claims(&["exp", "sub"]);
        decode_checked(token, &self.decoding, &validation)
    }
}

/// Decodes and checks a token with `key` under `validation` (whose leeway must be 0), then checks that its
/// claims are in their domains and in force ([`claims_in_force`]). Errors: `Expired` past `exp`, `Invalid`
/// for anything else.
pub(super) fn decode_checked(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, AuthError> {
    let claims =
        jsonwebtoken::decode::<Claims>(token, key, validation).map(|data| data.claims).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
    if claims_in_force(&claims, chrono::Utc::now().timestamp()) { Ok(claims) } else { Err(AuthError::Invalid) }
}

/// Whether verified `claims` are in their domains and in force at `now` (seconds since the epoch); `exp`
/// has been checked by the decoder.
fn claims_in_force(claims: &Claims, now: i64) -> bool {
    let time_ok = |field: &str, seconds: i64| validate::unix_seconds(field, seconds).is_ok();
    let not_ahead = |seconds: i64| seconds <= now.saturating_add(CLOCK_LEEWAY_SECS);
    validate::dispatcher_id("sub", &claims.sub).is_ok()
        && time_ok("exp", claims.exp)
        && time_ok("iat", claims.iat)
        && not_ahead(claims.iat)
        && claims.nbf.is_none_or(|nbf| time_ok("nbf", nbf) && not_ahead(nbf))
        && claims.generation.is_none_or(|generation| generation >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_names_its_dispatcher() {
        let secret = AuthSecret::new(&[7u8; 32]).unwrap();
        let token = secret.issue("alice", 1, Duration::from_secs(60)).unwrap();
        let claims = secret.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.exp - claims.iat, 60);
        assert_eq!(claims.generation, Some(1));
    }

    #[test]
    fn a_token_from_another_secret_is_invalid() {
        let token = AuthSecret::new(&[1u8; 32]).unwrap().issue("alice", 1, Duration::from_secs(60)).unwrap();
        assert_eq!(AuthSecret::new(&[2u8; 32]).unwrap().verify(&token), Err(AuthError::Invalid));
        assert_eq!(AuthSecret::new(&[2u8; 32]).unwrap().verify("garbage"), Err(AuthError::Invalid));
    }

    #[test]
    fn an_expired_token_says_so() {
        let secret = AuthSecret::new(&[3u8; 40]).unwrap();
        let token = secret.issue("bob", 1, Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(1100)); // exp is in whole seconds
        assert_eq!(secret.verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn signed_tokens_whose_claims_are_outside_their_domains_are_invalid() {
        let secret = AuthSecret::new(&[4u8; 32]).unwrap();
        let forge = |sub: &str, exp: i64| {
            let claims = Claims { sub: sub.to_owned(), iat: 0, exp, nbf: None, generation: None };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &secret.encoding).unwrap()
        };
        let in_an_hour = chrono::Utc::now().timestamp() + 3600;
        assert!(secret.verify(&forge("alice", in_an_hour)).is_ok());
        assert_eq!(secret.verify(&forge("al\0ice", in_an_hour)), Err(AuthError::Invalid));
        assert_eq!(secret.verify(&forge("", in_an_hour)), Err(AuthError::Invalid));
        assert_eq!(secret.verify(&forge("alice", i64::MAX)), Err(AuthError::Invalid));
    }

    #[test]
    fn a_token_not_yet_valid_or_issued_in_the_future_is_invalid() {
        let secret = AuthSecret::new(&[6u8; 32]).unwrap();
        let now = chrono::Utc::now().timestamp();
        let forge = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &secret.encoding).unwrap()
        };
        let exp = now + 7200;
        let hour = 3600;
        assert_eq!(
            secret.verify(&forge(serde_json::json!({"sub": "a", "iat": now, "exp": exp, "nbf": now + hour}))),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            secret.verify(&forge(serde_json::json!({"sub": "a", "iat": now + hour, "exp": exp}))),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            secret.verify(&forge(serde_json::json!({"sub": "a", "iat": now, "exp": exp, "nbf": "soon"}))),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            secret.verify(&forge(serde_json::json!({"sub": "a", "iat": now, "exp": exp, "aud": "other-app"}))),
            Err(AuthError::Invalid)
        );
        // Within the leeway, and in the past: accepted.
        assert!(
            secret.verify(&forge(serde_json::json!({"sub": "a", "iat": now + 5, "exp": exp, "nbf": now + 10}))).is_ok()
        );
        assert!(
            secret
                .verify(&forge(serde_json::json!({"sub": "a", "iat": now - hour, "exp": exp, "nbf": now - hour})))
                .is_ok()
        );
    }

    #[test]
    fn tokens_are_issued_only_for_lifetimes_that_a_verify_accepts() {
        let secret = AuthSecret::new(&[5u8; 32]).unwrap();
        let ten_thousand_years = Duration::from_secs(10_000 * 366 * 86_400);
        assert!(matches!(secret.issue("alice", 1, ten_thousand_years), Err(AuthError::BadTtl(_))));
        assert!(matches!(secret.issue("alice", 1, Duration::MAX), Err(AuthError::BadTtl(_))));
        assert!(secret.issue("not an id", 1, Duration::from_secs(60)).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(AuthSecret::new(b"short").unwrap_err(), AuthError::ShortSecret(5));
    }
}
