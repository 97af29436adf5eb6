//! Which protocol versions a UDP port accepts (`auth.policy`, `auth.ports`):
//! a default and a few exceptions, looked up per datagram by a linear scan
//! of at most [`MAX_PORT_POLICIES`] entries (no hashing, no allocation).

/// What a port accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Protocol v1 only (v2 datagrams are refused).
    V1,
    /// Authenticated v2 only.
    V2,
    /// v1 and v2; v2 that claims authentication must verify.
    #[default]
    Both,
}

impl Policy {
    /// Whether a datagram of `version`, authenticated or not, is taken.
    #[inline]
    pub fn admits(self, version: u8, authenticated: bool) -> bool {
        match self {
            Policy::V1 => version == 1,
            Policy::V2 => version == 2 && authenticated,
            Policy::Both => true,
        }
    }
}

/// Most ports that may have their own policy.
pub const MAX_PORT_POLICIES: usize = 16;

/// The policy of every port: a default and up to [`MAX_PORT_POLICIES`]
/// exceptions (a linear scan of a few entries per packet, no hashing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortPolicies {
    default: Policy,
    ports: [(u16, Policy); MAX_PORT_POLICIES],
    n: usize,
}

impl PortPolicies {
    /// `default` for every port but those in `ports` (at most
    /// [`MAX_PORT_POLICIES`]; the configuration checks it).
    pub fn new(default: Policy, ports: &[(u16, Policy)]) -> Self {
        let mut p = PortPolicies {
            default,
            ports: [(0, Policy::Both); MAX_PORT_POLICIES],
            n: ports.len().min(MAX_PORT_POLICIES),
        };
        p.ports[..p.n].copy_from_slice(&ports[..p.n]);
        p
    }

    /// The policy of `port`.
    #[inline]
    pub fn of(&self, port: u16) -> Policy {
        self.ports[..self.n]
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(self.default, |(_, pol)| *pol)
    }
}
