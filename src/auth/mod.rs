//! Who is asking: dispatcher tokens (HS256 JWT with `sub`, `iat`, `exp`) and group membership, which lives
//! in the database so that a change reaches open streams without a new token.

mod dispatchers;
mod token;

pub use dispatchers::{
    Dispatcher, DispatcherError, add_dispatcher, current_groups, dispatcher, dispatcher_lookup, dispatchers_by_id,
    list_dispatchers, set_groups,
};
pub use token::{AuthError, AuthSecret, Claims, MIN_SECRET_BYTES};
