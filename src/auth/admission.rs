//! Whether a verified token is honoured for its dispatcher: the token's origin (and generation) against
//! the dispatcher's access (disabled, current generation). See [`super::access`] for how access is
//! withdrawn.

/// Where a verified token comes from, and so what binds it to its dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOrigin {
    /// Signed by this server (`smartscheduler token`, the demo login) with the dispatcher's generation at
    /// the time (0 for a token without `gen`, issued before generations existed).
    Issued {
        /// The token's `gen`.
        generation: i64,
    },
    /// Signed by the identity provider (a JWKS key): no generation, bound only by `disabled`.
    IdentityProvider,
}

impl TokenOrigin {
    /// The generation the token is bound to, if it is one of ours.
    pub fn generation(&self) -> Option<i64> {
        match self {
            TokenOrigin::Issued { generation } => Some(*generation),
            TokenOrigin::IdentityProvider => None,
        }
    }
}

/// What decides whether a dispatcher's tokens are honoured; read in the same query as their groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// `dispatcher disable` was run (and no `enable` since).
    pub disabled: bool,
    /// The generation tokens issued by this server must carry (`dispatchers.token_generation`).
    pub token_generation: i64,
}

/// Why a dispatcher that exists, with a valid token, is refused. HTTP: `TokensRevoked` is 401
/// `token_revoked` (get a new token), `Disabled` is 403 `dispatcher_disabled` (a new token will not help).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The token's generation is not the dispatcher's (revoked, or issued for a removed dispatcher of the
    /// same id).
    #[error("the token has been revoked: get a new one")]
    TokensRevoked,
    /// The dispatcher is disabled.
    #[error("this dispatcher is disabled")]
    Disabled,
}

impl Access {
    /// Whether a token of `origin` is honoured. Revocation is checked first: a revoked token is not told
    /// more than that it is revoked.
    pub fn admits(&self, origin: TokenOrigin) -> Result<(), Refusal> {
        if origin.generation().is_some_and(|generation| generation != self.token_generation) {
            return Err(Refusal::TokensRevoked);
        }
        if self.disabled {
            return Err(Refusal::Disabled);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_honoured_only_at_its_generation_and_while_enabled() {
        let access = Access { disabled: false, token_generation: 7 };
        assert_eq!(access.admits(TokenOrigin::Issued { generation: 7 }), Ok(()));
        assert_eq!(access.admits(TokenOrigin::Issued { generation: 6 }), Err(Refusal::TokensRevoked));
        assert_eq!(access.admits(TokenOrigin::Issued { generation: 8 }), Err(Refusal::TokensRevoked));
        assert_eq!(access.admits(TokenOrigin::IdentityProvider), Ok(()));
        let disabled = Access { disabled: true, ..access };
        assert_eq!(disabled.admits(TokenOrigin::Issued { generation: 7 }), Err(Refusal::Disabled));
        assert_eq!(disabled.admits(TokenOrigin::IdentityProvider), Err(Refusal::Disabled));
        assert_eq!(disabled.admits(TokenOrigin::Issued { generation: 1 }), Err(Refusal::TokensRevoked));
    }
}
