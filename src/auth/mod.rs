//! Who is asking: dispatcher tokens (this server's HS256 JWTs with `sub`, `iat`, `exp`, `gen`, and the
//! identity provider's RS256/ES256/EdDSA JWTs checked against its JWKS), group membership and access
//! (disabled, token generation), which live in the database so that a change reaches open streams without
//! a new token.

mod access;
mod admission;
mod dispatchers;
pub mod jwks;
mod token;
mod verifier;

pub use access::{
    Standing, current_access, disable_dispatcher, enable_dispatcher, remove_dispatcher, revoke_tokens, token_generation,
};
pub use admission::{Access, Refusal, TokenOrigin};
pub use dispatchers::{
    Dispatcher, DispatcherError, DispatcherRecord, add_dispatcher, dispatcher, dispatcher_lookup, dispatchers_by_id,
    list_dispatchers, set_groups,
};
pub use jwks::{Jwks, JwksConfig, JwksError, JwksSource};
pub use token::{AuthError, AuthSecret, Claims, MIN_SECRET_BYTES};
pub use verifier::{TokenVerifier, Verified};
