//! Why the membership refresh ends a stream: the `reason` of its `access-revoked` event.

/// Why a stream was ended by the membership refresh (the `reason` of its `access-revoked` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The dispatcher holds none of the stream's groups any more (or no longer exists).
    NoGroups,
    /// The dispatcher was disabled.
    Disabled,
    /// The stream's token (one this server issued) was revoked.
    TokenRevoked,
}

impl Revocation {
    /// The `reason` sent to the client.
    pub fn as_str(self) -> &'static str {
        match self {
            Revocation::NoGroups => "no_groups",
            Revocation::Disabled => "disabled",
            Revocation::TokenRevoked => "token_revoked",
        }
    }

    pub(super) fn code(self) -> u8 {
        match self {
            Revocation::NoGroups => 1,
            Revocation::Disabled => 2,
            Revocation::TokenRevoked => 3,
        }
    }

    pub(super) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Revocation::NoGroups),
            2 => Some(Revocation::Disabled),
            3 => Some(Revocation::TokenRevoked),
            _ => None,
        }
    }

    /// Why a stream of a token of `generation` (`None`: the identity provider's) ends, given the
    /// dispatcher's `standing` and the groups it would now deliver; `None` if it goes on.
    pub(super) fn of(standing: &crate::auth::Standing, generation: Option<i64>, effective: &[String]) -> Option<Self> {
        let origin = match generation {
            Some(generation) => crate::auth::TokenOrigin::Issued { generation },
            None => crate::auth::TokenOrigin::IdentityProvider,
        };
        match standing.access.map(|access| access.admits(origin)) {
            Some(Err(crate::auth::Refusal::TokensRevoked)) => Some(Revocation::TokenRevoked),
            Some(Err(crate::auth::Refusal::Disabled)) => Some(Revocation::Disabled),
            _ if effective.is_empty() => Some(Revocation::NoGroups),
            _ => None,
        }
    }
}
