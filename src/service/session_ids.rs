//! Session ids and the node they name: `sess_<node>_<32 hex digits>`, so that a load balancer can send every request for a session to the one node that holds it.
//!
//! A session lives in the memory of the node that made it. Naming that node in the id
//! lets a stock proxy route by the id alone (the path, or `session_id` in the body),
//! with no sticky cookie, which API clients do not keep. The 128 random bits after the
//! node tag are what make an id unguessable; the tag is public.

use std::fmt;

/// The longest node tag, in characters.
pub const MAX_NODE_LEN: usize = 32;

/// The tag when nothing better is known (no readable hostname).
const FALLBACK_NODE: &str = "node";

/// What every session id starts with.
const PREFIX: &str = "sess_";

/// Hex digits of the random part: 128 bits.
const RANDOM_HEX: usize = 32;

/// The name of this node in session ids: 1 to 32 of `a-z`, `0-9` and `-`. Lowercase only and
/// no `_` (the separator in the id) or `.`, so the tag is the same token in the id, in a
/// path, in a JSON string, and as a load balancer's backend or server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTag(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeTagError {
    #[error("must be 1 to {MAX_NODE_LEN} characters, got {0}")]
    Length(usize),
    #[error("may hold only a-z, 0-9 and `-`, not {0:?}")]
    Character(char),
}

fn allowed(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

impl NodeTag {
    /// `tag` as given by the operator, refused (not rewritten) if it breaks the rule, so
    /// the tag in the ids is exactly what the load balancer's configuration names.
    pub fn new(tag: &str) -> Result<NodeTag, NodeTagError> {
        let len = tag.chars().count();
        if len == 0 || len > MAX_NODE_LEN {
            return Err(NodeTagError::Length(len));
        }
        if let Some(c) = tag.chars().find(|c| !allowed(*c)) {
            return Err(NodeTagError::Character(c));
        }
        Ok(NodeTag(tag.to_string()))
    }

    /// A tag from a hostname: its first label (`nsbox-0` of `nsbox-0.nsbox.svc`), in
    /// lowercase, other characters as `-`, cut at 32 characters.
    pub fn from_hostname(hostname: &str) -> NodeTag {
        let label = hostname.trim().split('.').next().unwrap_or_default();
        let tag: String = label
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if allowed(c) { c } else { '-' })
            .take(MAX_NODE_LEN)
            .collect();
        if tag.is_empty() {
            NodeTag(FALLBACK_NODE.to_string())
        } else {
            NodeTag(tag)
        }
    }

    /// The tag of this machine: from the kernel's hostname (the container's, in one).
    pub fn of_this_host() -> NodeTag {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        NodeTag::from_hostname(&hostname)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fresh session id on `node`: `sess_<node>_` and 128 bits from the kernel's random
/// source, in lowercase hex.
pub fn new_id(node: &NodeTag) -> String {
    let mut bytes = [0u8; RANDOM_HEX / 2];
    getrandom::getrandom(&mut bytes).expect("the kernel's random source");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{node}_{hex}")
}

/// The node a session id names, if the string has the form of one. Anything else, ids of
/// the older untagged form `sess_<32 hex>` included (no session of a running server has
/// one), names no node, and is simply not found.
pub fn node_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix(PREFIX)?;
    let (node, hex) = rest.rsplit_once('_')?;
    let hex_ok = hex.len() == RANDOM_HEX
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex_ok && NodeTag::new(node).is_ok()).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_node_and_carry_128_random_bits() {
        let node = NodeTag::new("nsbox-2").unwrap();
        let a = new_id(&node);
        let hex = a.strip_prefix("sess_nsbox-2_").expect(&a);
        assert_eq!(hex.len(), 32, "{a}");
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{a}"
        );
        assert_eq!(node_of(&a), Some("nsbox-2"));
        // 100 ids, all different: the random part is not a counter or a clock.
        let many: std::collections::HashSet<String> = (0..100).map(|_| new_id(&node)).collect();
        assert_eq!(many.len(), 100);
    }

    #[test]
    fn only_well_formed_ids_name_a_node() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(node_of(&format!("sess_a_{hex}")), Some("a"));
        assert_eq!(node_of(&format!("sess_web-01_{hex}")), Some("web-01"));
        for id in [
            // The older untagged form, and other shapes.
            format!("sess_{hex}"),
            format!("sess__{hex}"),
            format!("sess_Node_{hex}"),
            format!("sess_a.b_{hex}"),
            format!("sess_a_b_{hex}"),
            format!("sess_a_{}", &hex[1..]),
            format!("sess_a_{hex}0"),
            format!("sess_a_{}", hex.to_uppercase()),
            format!("sess_{}_{hex}", "n".repeat(33)),
            format!("sesn_a_{hex}"),
            "sess_0".into(),
            String::new(),
        ] {
            assert_eq!(node_of(&id), None, "{id}");
        }
    }

    #[test]
    fn configured_tags_are_checked_not_rewritten() {
        assert_eq!(NodeTag::new("nsbox1").unwrap().as_str(), "nsbox1");
        assert_eq!(NodeTag::new("a-b-0").unwrap().as_str(), "a-b-0");
        assert_eq!(NodeTag::new(""), Err(NodeTagError::Length(0)));
        assert_eq!(NodeTag::new(&"x".repeat(33)), Err(NodeTagError::Length(33)));
        assert_eq!(NodeTag::new("Node1"), Err(NodeTagError::Character('N')));
        assert_eq!(NodeTag::new("a_b"), Err(NodeTagError::Character('_')));
        assert_eq!(NodeTag::new("a.b"), Err(NodeTagError::Character('.')));
        assert_eq!(NodeTag::new("a/b"), Err(NodeTagError::Character('/')));
    }

    #[test]
    fn hostnames_become_tags() {
        let tag = |h: &str| NodeTag::from_hostname(h).as_str().to_string();
        assert_eq!(tag("nsbox-0.nsbox.default.svc.cluster.local\n"), "nsbox-0");
        assert_eq!(tag("Build_Host"), "build-host");
        assert_eq!(tag(&"h".repeat(40)), "h".repeat(32));
        assert_eq!(tag(""), "node");
        assert_eq!(tag(".example"), "node");
        // Whatever the hostname, the tag obeys the rule and round-trips through an id.
        for h in ["ünï", "a b", "x", "UPPER.lower"] {
            let t = NodeTag::from_hostname(h);
            assert_eq!(NodeTag::new(t.as_str()).as_ref(), Ok(&t), "{h}");
            assert_eq!(node_of(&new_id(&t)), Some(t.as_str()), "{h}");
        }
    }
}
