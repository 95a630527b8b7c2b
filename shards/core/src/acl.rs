//! Authorization: an ACL file in Mosquitto's `acl_file` format, indexed so that checking a
//! message costs the same with ten rules or a hundred thousand.
//!
//! ```text
//! # topic lines before any `user` line apply to anonymous clients
//! topic read public/#
//! user alice
//! topic readwrite alice/#        # access: read, write, readwrite (default) or deny
//! topic deny alice/secret/#
//! pattern write devices/%c/up    # every client; %c: client id, %u: username
//! ```
//!
//! A topic is allowed if a rule that applies to the client grants the access and no `deny`
//! rule that applies matches it. A client id or username containing `+`, `#` or `/` never
//! satisfies a `%c`/`%u` pattern (no wildcard injection, no escaping a level). Rules are
//! topic filters, so `#` does not match topics starting with `$` [MQTT-4.7.2-1].
//!
//! The rules of each user, of anonymous clients and of patterns are tries of levels: a check
//! walks the topic's levels through the trie of the client and the patterns' trie, never the
//! list of rules.

use std::collections::HashMap;
use std::fmt;

const READ: u8 = 1;
const WRITE: u8 = 2;
const DENY: u8 = 4;

/// Who asks: the client id and the username it authenticated with.
#[derive(Clone, Copy, Debug)]
pub struct Who<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

/// A line of an ACL file that cannot be used, with its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Default, Debug)]
struct Node {
    exact: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Levels with `%c`/`%u` (patterns only), compared after substitution.
    templates: Vec<(Box<str>, Node)>,
    /// Rules that end here.
    here: u8,
    /// Rules that end with `#` here: this level and everything below.
    rest: u8,
}

impl Node {
    fn insert(&mut self, filter: &str, bits: u8, pattern: bool) {
        let mut node = self;
        let levels: Vec<&str> = filter.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            if *level == "#" && i == levels.len() - 1 {
                node.rest |= bits;
                return;
            }
            node = if *level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else if pattern && (level.contains("%c") || level.contains("%u")) {
                match node.templates.iter().position(|(t, _)| &**t == *level) {
                    Some(p) => &mut node.templates[p].1,
                    None => {
                        node.templates.push(((*level).into(), Node::default()));
                        &mut node.templates.last_mut().expect("just pushed").1
                    }
                }
            } else {
                node.exact.entry((*level).into()).or_default()
            };
        }
        node.here |= bits;
    }

    /// The bits of every rule matching the topic `levels[i..]`.
    fn topic(&self, levels: &[&str], i: usize, who: &Who, acc: &mut u8) {
        let root_dollar = i == 0 && levels[0].starts_with('$');
        if !root_dollar {
            *acc |= self.rest;
        }
        let Some(level) = levels.get(i) else {
            *acc |= self.here;
            return;
        };
        if let Some(n) = self.exact.get(*level) {
            n.topic(levels, i + 1, who, acc);
        }
        if let Some(n) = self.plus.as_deref().filter(|_| !root_dollar) {
            n.topic(levels, i + 1, who, acc);
        }
        for (t, n) in &self.templates {
            if template_matches(t, level, who) {
                n.topic(levels, i + 1, who, acc);
            }
        }
    }

    /// The bits of every rule that matches every topic the filter `levels[i..]` matches.
    fn covering(&self, levels: &[&str], i: usize, who: &Who, acc: &mut u8) {
        let root_dollar = i == 0 && levels[0].starts_with('$');
        if !root_dollar {
            *acc |= self.rest;
        }
        let Some(level) = levels.get(i) else {
            *acc |= self.here;
            return;
        };
        match *level {
            "#" => {}
            "+" => {
                if let Some(n) = self.plus.as_deref() {
                    n.covering(levels, i + 1, who, acc);
                }
            }
            level => {
                if let Some(n) = self.exact.get(level) {
                    n.covering(levels, i + 1, who, acc);
                }
                if let Some(n) = self.plus.as_deref().filter(|_| !root_dollar) {
                    n.covering(levels, i + 1, who, acc);
                }
                for (t, n) in &self.templates {
                    if template_matches(t, level, who) {
                        n.covering(levels, i + 1, who, acc);
                    }
                }
            }
        }
    }
}

/// Whether a pattern level, with `%c` and `%u` replaced, is `level`. An identity that is
/// missing or holds `+`, `#` or `/` matches nothing.
fn template_matches(template: &str, level: &str, who: &Who) -> bool {
    let safe = |s: &str| !s.contains(['+', '#', '/']);
    let mut rest = level;
    let mut t = template;
    while !t.is_empty() {
        let (value, skip) = if let Some(after) = t.strip_prefix("%c") {
            (Some(who.client_id), after)
        } else if let Some(after) = t.strip_prefix("%u") {
            (who.username, after)
        } else {
            let next = t[1..].find('%').map_or(t.len(), |p| p + 1);
            let (lit, after) = t.split_at(next);
            match rest.strip_prefix(lit) {
                Some(r) => rest = r,
                None => return false,
            }
            t = after;
            continue;
        };
        let Some(v) = value.filter(|v| safe(v) && !v.is_empty()) else {
            return false;
        };
        match rest.strip_prefix(v) {
            Some(r) => rest = r,
            None => return false,
        }
        t = skip;
    }
    rest.is_empty()
}

/// The rules of an ACL file.
#[derive(Default, Debug)]
pub struct Acl {
    anonymous: Node,
    users: HashMap<Box<str>, Node>,
    patterns: Node,
    rules: usize,
}

impl Acl {
    /// Parses a file's text (see the module documentation).
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut user: Option<Box<str>> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let err = |message: String| AclError {
                line: i + 1,
                message,
            };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match word {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a username".into()));
                    }
                    acl.users.entry(rest.into()).or_default();
                    user = Some(rest.into());
                }
                "topic" | "pattern" => {
                    let (bits, filter) = access(rest).map_err(err)?;
                    check_filter(filter).map_err(err)?;
                    let pattern = word == "pattern";
                    let node = match (pattern, &user) {
                        (true, _) => &mut acl.patterns,
                        (false, Some(u)) => acl.users.get_mut(u).expect("inserted at `user`"),
                        (false, None) => &mut acl.anonymous,
                    };
                    node.insert(filter, bits, pattern);
                    acl.rules += 1;
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword {other:?} (expected user, topic or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// Rules in the file.
    pub fn rules(&self) -> usize {
        self.rules
    }

    fn tries(&self, who: &Who) -> [Option<&Node>; 2] {
        let own = match who.username {
            Some(u) => self.users.get(u),
            None => Some(&self.anonymous),
        };
        [own, Some(&self.patterns)]
    }

    fn topic_bits(&self, who: &Who, topic: &str) -> u8 {
        let levels: smallvec_levels::Levels = smallvec_levels::split(topic);
        let mut acc = 0;
        for n in self.tries(who).into_iter().flatten() {
            n.topic(levels.as_slice(), 0, who, &mut acc);
        }
        acc
    }

    /// Whether `who` may publish to `topic`.
    pub fn can_write(&self, who: &Who, topic: &str) -> bool {
        let b = self.topic_bits(who, topic);
        b & WRITE != 0 && b & DENY == 0
    }

    /// Whether `who` may receive a message published to `topic`.
    pub fn can_read(&self, who: &Who, topic: &str) -> bool {
        let b = self.topic_bits(who, topic);
        b & READ != 0 && b & DENY == 0
    }

    /// Whether `who` may subscribe to `filter`: a `read` rule covers every topic it matches,
    /// and no `deny` rule does. (A deny rule covering part of it is applied per message.)
    pub fn can_subscribe(&self, who: &Who, filter: &str) -> bool {
        let levels = smallvec_levels::split(filter);
        let mut acc = 0;
        for n in self.tries(who).into_iter().flatten() {
            n.covering(levels.as_slice(), 0, who, &mut acc);
        }
        acc & READ != 0 && acc & DENY == 0
    }
}

/// The topic levels of a check, on the stack for topics of up to 16 levels.
mod smallvec_levels {
    // Large on purpose: it lives on the stack for the length of one check.
    #[allow(clippy::large_enum_variant)]
    pub enum Levels<'a> {
        Stack([&'a str; 16], usize),
        Heap(Vec<&'a str>),
    }

    impl<'a> Levels<'a> {
        pub fn as_slice(&self) -> &[&'a str] {
            match self {
                Levels::Stack(a, n) => &a[..*n],
                Levels::Heap(v) => v,
            }
        }
    }

    pub fn split(topic: &str) -> Levels<'_> {
        let mut a = [""; 16];
        for (n, level) in topic.split('/').enumerate() {
            if n == 16 {
                return Levels::Heap(topic.split('/').collect());
            }
            a[n] = level;
        }
        Levels::Stack(a, topic.split('/').count())
    }
}

/// `[read|write|readwrite|deny] FILTER` → the rule's bits and the filter.
fn access(rest: &str) -> Result<(u8, &str), String> {
    let (first, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let bits = match first {
        "read" => Some(READ),
        "write" => Some(WRITE),
        "readwrite" => Some(READ | WRITE),
        "deny" => Some(DENY),
        _ => None,
    };
    match bits {
        Some(b) if !after.trim().is_empty() => Ok((b, after.trim())),
        Some(_) => Err(format!("`{first}` needs a topic filter")),
        None if !rest.is_empty() => Ok((READ | WRITE, rest)),
        None => Err("needs a topic filter".into()),
    }
}

fn check_filter(f: &str) -> Result<(), String> {
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        let bad = (l.contains('#') && (*l != "#" || i != levels.len() - 1))
            || (l.contains('+') && *l != "+");
        if bad {
            return Err(format!(
                "{f:?} is not a topic filter ('#' only as the last level, '+' only alone)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous
topic read public/#
topic read $SYS/broker/uptime

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic write shared/in
topic read shared/+/out

user bob
topic bob/#

pattern write devices/%c/up
pattern read devices/%c/down/#
pattern readwrite users/%u/#
pattern read fleet/id-%c-x/#
";

    fn who<'a>(c: &'a str, u: Option<&'a str>) -> Who<'a> {
        Who {
            client_id: c,
            username: u,
        }
    }

    #[test]
    fn every_rule_kind_grants_what_it_says() {
        let acl = Acl::parse(FILE).unwrap();
        assert_eq!(acl.rules(), 11);
        let alice = who("a1", Some("alice"));
        let anon = who("x", None);
        let bob = who("b1", Some("bob"));
        // topic read / readwrite / write / deny
        assert!(acl.can_read(&anon, "public/news") && !acl.can_write(&anon, "public/news"));
        assert!(acl.can_read(&anon, "public") && acl.can_read(&anon, "$SYS/broker/uptime"));
        assert!(acl.can_read(&alice, "alice/x") && acl.can_write(&alice, "alice/x/y"));
        assert!(!acl.can_read(&alice, "alice/secret/k") && !acl.can_write(&alice, "alice/secret"));
        assert!(acl.can_write(&alice, "shared/in") && !acl.can_read(&alice, "shared/in"));
        assert!(acl.can_read(&alice, "shared/7/out") && !acl.can_read(&alice, "shared/7/8/out"));
        // Anonymous rules are not a user's; a user's are not another's.
        assert!(!acl.can_read(&alice, "public/news"));
        assert!(!acl.can_read(&anon, "alice/x") && !acl.can_read(&bob, "alice/x"));
        assert!(acl.can_write(&bob, "bob/1") && acl.can_read(&bob, "bob"));
        // An unknown user has the patterns only.
        let eve = who("e1", Some("eve"));
        assert!(!acl.can_read(&eve, "bob/1") && acl.can_write(&eve, "devices/e1/up"));
    }

    #[test]
    fn patterns_substitute_the_client_id_and_username() {
        let acl = Acl::parse(FILE).unwrap();
        let d = who("dev7", Some("carol"));
        assert!(acl.can_write(&d, "devices/dev7/up") && !acl.can_write(&d, "devices/dev8/up"));
        assert!(acl.can_read(&d, "devices/dev7/down/cfg") && !acl.can_read(&d, "devices/dev7/up"));
        assert!(acl.can_read(&d, "users/carol/a") && !acl.can_read(&d, "users/dave/a"));
        assert!(acl.can_read(&d, "fleet/id-dev7-x/1") && !acl.can_read(&d, "fleet/id-dev7/1"));
        // %u without a username matches nothing.
        assert!(!acl.can_read(&who("u", None), "users//a"));
    }

    #[test]
    fn identities_with_wildcards_or_slashes_never_satisfy_a_pattern() {
        let acl = Acl::parse(FILE).unwrap();
        for id in ["+", "#", "a/b", "dev+", "x#"] {
            let w = who(id, Some(id));
            assert!(!acl.can_write(&w, &format!("devices/{id}/up")), "{id}");
            assert!(
                !acl.can_subscribe(&w, &format!("devices/{id}/down/#")),
                "{id}"
            );
            assert!(!acl.can_read(&w, &format!("users/{id}/x")), "{id}");
        }
        // Subscribing with a wildcard where the pattern has the client id is not covered.
        assert!(!acl.can_subscribe(&who("d", None), "devices/+/down/#"));
        assert!(acl.can_subscribe(&who("d", None), "devices/d/down/#"));
    }

    #[test]
    fn a_subscription_needs_a_read_rule_covering_all_of_it() {
        let acl = Acl::parse(FILE).unwrap();
        let alice = who("a1", Some("alice"));
        assert!(acl.can_subscribe(&alice, "alice/#"));
        assert!(acl.can_subscribe(&alice, "alice/+/t"));
        assert!(acl.can_subscribe(&alice, "shared/+/out"));
        assert!(!acl.can_subscribe(&alice, "shared/#"));
        assert!(!acl.can_subscribe(&alice, "#"));
        assert!(!acl.can_subscribe(&alice, "+/x"));
        // Entirely denied.
        assert!(!acl.can_subscribe(&alice, "alice/secret/#"));
        // `#` never covers `$` topics, and `public/#` does not cover `$SYS`.
        let all = Acl::parse("topic read #\n").unwrap();
        let anon = who("x", None);
        assert!(all.can_subscribe(&anon, "#") && all.can_read(&anon, "a/b"));
        assert!(!all.can_read(&anon, "$SYS/x") && !all.can_subscribe(&anon, "$SYS/#"));
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        for (text, line) in [
            ("topic read a/#/b\n", 1),
            ("\nuser\n", 2),
            ("topic read\n", 1),
            ("grant a\n", 1),
            ("topic a+\n", 1),
        ] {
            assert_eq!(Acl::parse(text).unwrap_err().line, line, "{text:?}");
        }
    }

    /// The cost of a check follows the topic's levels, not the number of rules: with 100,000
    /// users of 3 rules each, a check visits the same nodes as with one user.
    #[test]
    fn checks_do_not_walk_the_rules() {
        let mut text = String::new();
        for u in 0..100_000 {
            text.push_str(&format!(
                "user u{u}\ntopic u{u}/#\ntopic read in/{u}\ntopic deny u{u}/x\n"
            ));
        }
        let acl = Acl::parse(&text).unwrap();
        assert_eq!(acl.rules(), 300_000);
        let w = who("c", Some("u99999"));
        assert!(acl.can_write(&w, "u99999/a") && acl.can_read(&w, "in/99999"));
        assert!(!acl.can_read(&w, "in/5") && !acl.can_read(&w, "u99999/x"));
        let start = std::time::Instant::now(); // lint: test-only clock
        for _ in 0..100_000 {
            assert!(acl.can_write(&w, "u99999/a/b"));
        }
        // Generous: a walk of the rules would take seconds.
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    proptest::proptest! {
        /// `topic read F` alone allows reading exactly the topics F matches.
        #[test]
        fn a_single_read_rule_agrees_with_topic_matching(
            f in "(a|b|\\+|\\$s)(/(a|b|\\+)){0,3}(/#)?",
            t in "(a|b|\\$s)(/(a|b)){0,4}",
        ) {
            let acl = Acl::parse(&format!("topic read {f}\n")).unwrap();
            let w = who("c", None);
            proptest::prop_assert_eq!(acl.can_read(&w, &t), matches(&f, &t));
        }
    }

    /// The reference: MQTT topic matching, level by level.
    fn matches(filter: &str, topic: &str) -> bool {
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        if t[0].starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        for (i, l) in f.iter().enumerate() {
            if *l == "#" {
                return true;
            }
            match t.get(i) {
                Some(tl) if *l == "+" || l == tl => {}
                _ => return false,
            }
        }
        f.len() == t.len()
    }
}
