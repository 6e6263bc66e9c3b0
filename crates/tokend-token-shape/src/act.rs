//! The `act` (actor) claim of a token issued by token exchange (RFC 8693 §4.1;
//! `docs/token_exchange.md`): who is acting on behalf of the token's subject. The outermost
//! `act` is the current actor; an `act` inside it names the one before, and so on (RFC 8693
//! §4.1: a chain of delegation, which says nothing about access control beyond the outermost
//! actor). tokend writes `sub` and `client_id` (RFC 8693 §4.3) and the nested `act`; a claim
//! with other members still reads.

/// One actor of a delegation chain (RFC 8693 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Actor {
    /// The acting party: the acting client's id, or the subject of the actor token.
    pub sub: String,
    /// The client that acted (RFC 8693 §4.3).
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub client_id: Option<String>,
    /// The actor before this one, when the subject token was itself a delegation.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// An actor with nothing before it.
    pub fn new(sub: impl Into<String>, client_id: Option<String>) -> Actor {
        Actor {
            sub: sub.into(),
            client_id,
            act: None,
        }
    }

    /// This actor, acting after `prior` (the subject token's own `act`, if any).
    pub fn after(mut self, prior: Option<Actor>) -> Actor {
        self.act = prior.map(Box::new);
        self
    }

    /// The chain from the current actor back to the first.
    pub fn chain(&self) -> impl Iterator<Item = &Actor> {
        std::iter::successors(Some(self), |a| a.act.as_deref())
    }

    /// How many actors the chain holds (1 for a single delegation).
    pub fn depth(&self) -> usize {
        self.chain().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_runs_from_the_current_actor_back_to_the_first() {
        let first = Actor::new("svc-a", Some("svc-a".into()));
        let second = Actor::new("svc-b", Some("svc-b".into())).after(Some(first.clone()));
        let third = Actor::new("svc-c", None).after(Some(second.clone()));
        let subs: Vec<&str> = third.chain().map(|a| a.sub.as_str()).collect();
        assert_eq!(subs, ["svc-c", "svc-b", "svc-a"]);
        assert_eq!(third.depth(), 3);
        assert_eq!(first.depth(), 1);
        assert_eq!(second.act.as_deref(), Some(&first));
    }
}
