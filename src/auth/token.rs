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
}

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

    /// A token for `dispatcher_id`, valid for `ttl`. Refuses what [`AuthSecret::verify`] would refuse: an
    /// id that is not a dispatcher id, a lifetime under a second or one that ends after 9999-12-31.
    pub fn issue(&self, dispatcher_id: &str, ttl: Duration) -> Result<String, AuthError> {
        validate::dispatcher_id("dispatcher", dispatcher_id).map_err(|e| AuthError::Signing(e.to_string()))?;
        let now = chrono::Utc::now().timestamp();
        let exp = i64::try_from(ttl.as_secs()).ok().and_then(|ttl| now.checked_add(ttl));
        let exp = exp.filter(|exp| validate::unix_seconds("exp", *exp).is_ok()).ok_or(AuthError::BadTtl(ttl))?;
        let claims = Claims { sub: dispatcher_id.to_owned(), iat: now, exp };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }

    /// The claims of a token signed with this secret, unexpired, whose claims are in their domains: `sub`
    /// is a dispatcher id (it is used in a query) and `exp` a time before 9999-12-31 (it becomes the
    /// stream's end). A signed token can still carry anything, so the claims are checked like any input.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0; // expiry is exact: the stream ends at exp with auth-expired
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        let in_domain =
            validate::dispatcher_id("sub", &claims.sub).is_ok() && validate::unix_seconds("exp", claims.exp).is_ok();
        if in_domain { Ok(claims) } else { Err(AuthError::Invalid) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_names_its_dispatcher() {
        let secret = AuthSecret::new(&[7u8; 32]).unwrap();
        let token = secret.issue("alice", Duration::from_secs(60)).unwrap();
        let claims = secret.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.exp - claims.iat, 60);
    }

    #[test]
    fn a_token_from_another_secret_is_invalid() {
        let token = AuthSecret::new(&[1u8; 32]).unwrap().issue("alice", Duration::from_secs(60)).unwrap();
        assert_eq!(AuthSecret::new(&[2u8; 32]).unwrap().verify(&token), Err(AuthError::Invalid));
        assert_eq!(AuthSecret::new(&[2u8; 32]).unwrap().verify("garbage"), Err(AuthError::Invalid));
    }

    #[test]
    fn an_expired_token_says_so() {
        let secret = AuthSecret::new(&[3u8; 40]).unwrap();
        let token = secret.issue("bob", Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(1100)); // exp is in whole seconds
        assert_eq!(secret.verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn signed_tokens_whose_claims_are_outside_their_domains_are_invalid() {
        let secret = AuthSecret::new(&[4u8; 32]).unwrap();
        let forge = |sub: &str, exp: i64| {
            let claims = Claims { sub: sub.to_owned(), iat: 0, exp };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &secret.encoding).unwrap()
        };
        let in_an_hour = chrono::Utc::now().timestamp() + 3600;
        assert!(secret.verify(&forge("alice", in_an_hour)).is_ok());
        assert_eq!(secret.verify(&forge("al\0ice", in_an_hour)), Err(AuthError::Invalid));
        assert_eq!(secret.verify(&forge("", in_an_hour)), Err(AuthError::Invalid));
        assert_eq!(secret.verify(&forge("alice", i64::MAX)), Err(AuthError::Invalid));
    }

    #[test]
    fn tokens_are_issued_only_for_lifetimes_that_a_verify_accepts() {
        let secret = AuthSecret::new(&[5u8; 32]).unwrap();
        let ten_thousand_years = Duration::from_secs(10_000 * 366 * 86_400);
        assert!(matches!(secret.issue("alice", ten_thousand_years), Err(AuthError::BadTtl(_))));
        assert!(matches!(secret.issue("alice", Duration::MAX), Err(AuthError::BadTtl(_))));
        assert!(secret.issue("not an id", Duration::from_secs(60)).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(AuthSecret::new(b"short").unwrap_err(), AuthError::ShortSecret(5));
    }
}
