//! Key and channel names of the Redis backend. The layout, its hash tags and how expiry works
//! are documented in the crate documentation (*Key layout*); keep both in sync.

/// Builds key and channel names for one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The base of an application's keys (passed to scripts as `KEYS[1]`).
    pub(crate) fn app(&self, app: &str) -> String {
        format!("{}:{{app:{app}}}", self.prefix)
    }

    pub(crate) fn peer_record(&self, app: &str, peer: &str) -> String {
        format!("{}:peer:{peer}", self.app(app))
    }

    pub(crate) fn route(&self, app: &str, peer: &str) -> String {
        format!("{}:route:{peer}", self.app(app))
    }

    /// The base of the application registry keys.
    pub(crate) fn apps(&self) -> String {
        format!("{}:{{apps}}", self.prefix)
    }

    pub(crate) fn counter(&self, name: &str) -> String {
        format!("{}:{{ctr:{name}}}", self.prefix)
    }

    pub(crate) fn counter_map(&self, name: &str) -> String {
        format!("{}:{{ctrmap:{name}}}", self.prefix)
    }

    pub(crate) fn ephemeral(&self, key: &str) -> String {
        format!("{}:{{eph:{key}}}", self.prefix)
    }

    /// The base of a role's replica registry keys.
    pub(crate) fn replicas(&self, role: &str) -> String {
        format!("{}:{{replicas:{role}}}", self.prefix)
    }

    pub(crate) fn delivery_channel(&self, gateway: &str) -> String {
        format!("{}:{{gw:{gateway}}}:delivery", self.prefix)
    }

    pub(crate) fn event_channel(&self, channel: &str) -> String {
        format!("{}:{{ev:{channel}}}:events", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster hashes: the text between the first `{` and the next `}`.
    fn tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        &key[open + 1..close]
    }

    #[test]
    fn app_keys_share_one_tag() {
        let k = Keys::new("qp");
        assert_eq!(k.app("a1"), "qp:{app:a1}");
        assert_eq!(tag(&k.peer_record("a1", "p{x")), "app:a1");
        assert_eq!(tag(&k.route("a1", "p")), "app:a1");
        assert_eq!(tag(&format!("{}:idx:k}}", k.app("a1"))), "app:a1");
        assert_eq!(tag(&k.delivery_channel("g")), "gw:g");
    }
}
