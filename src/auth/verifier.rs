//! Which key checks a token: the token's header `alg` picks the mode, and each mode accepts only its own
//! algorithms, so that no token is checked with a key of another kind (algorithm confusion).
//!
//! - `HS256`: this server's tokens (`smartscheduler token`, the demo login), with `SMARTSCHEDULER_AUTH_SECRET`.
//! - `RS256`, `ES256`, `EdDSA`: the identity provider's tokens, with the keys of its JWKS document
//!   ([`super::jwks`]), their `iss` and `aud` checked.
//!
//! Both modes may be configured at once; a token of a mode that is not configured, or of any other `alg`
//! (`none` included), is invalid.

use super::admission::TokenOrigin;
use super::jwks::Jwks;
use super::token::{AuthError, AuthSecret, Claims};
use jsonwebtoken::Algorithm;

/// A token that passed its checks: what it says, and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Its claims (`sub` is a dispatcher id; times in their domains and in force).
    pub claims: Claims,
    /// This server's (with its generation) or the identity provider's.
    pub origin: TokenOrigin,
}

/// Checks tokens of the configured modes. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct TokenVerifier {
    secret: Option<AuthSecret>,
    jwks: Option<Jwks>,
}

impl From<AuthSecret> for TokenVerifier {
    fn from(secret: AuthSecret) -> Self {
        Self { secret: Some(secret), jwks: None }
    }
}

impl TokenVerifier {
    /// A verifier of HS256 tokens with `secret` (if any) and identity-provider tokens with `jwks` (if any).
    pub fn new(secret: Option<AuthSecret>, jwks: Option<Jwks>) -> Self {
        Self { secret, jwks }
    }

    /// The HS256 secret, to issue tokens with (`None`: this server issues none).
    pub fn secret(&self) -> Option<&AuthSecret> {
        self.secret.as_ref()
    }

    /// The identity provider's key set, if configured.
    pub fn jwks(&self) -> Option<&Jwks> {
        self.jwks.as_ref()
    }

    /// The claims and origin of `token`. Errors: [`AuthError::Expired`] past `exp`, [`AuthError::Invalid`]
    /// for anything else (malformed, an `alg` of no configured mode, a bad signature, claims out of their
    /// domains or not yet in force, a foreign `iss` or `aud`, an unknown `kid`).
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        match header.alg {
            Algorithm::HS256 => {
                let secret = self.secret.as_ref().ok_or(AuthError::Invalid)?;
                let claims = secret.verify(token)?;
                let generation = claims.generation.unwrap_or(0);
                Ok(Verified { claims, origin: TokenOrigin::Issued { generation } })
            }
            alg if super::jwks::ACCEPTED_ALGORITHMS.contains(&alg) => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::Invalid)?;
                let mut claims = jwks.verify(token, &header).await?;
                claims.generation = None; // a generation is ours to give, not the provider's
                Ok(Verified { claims, origin: TokenOrigin::IdentityProvider })
            }
            _ => Err(AuthError::Invalid),
        }
    }
}
