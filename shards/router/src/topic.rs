//! Topic name / topic filter validation and the reference matcher (MQTT 5 section 4.7, 4.8.2).

use std::fmt;

/// Longest topic or filter: it is a UTF-8 string with a 16-bit length prefix [MQTT-1.5.4-1].
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name, topic filter or shared-subscription filter was rejected.
///
/// The broker maps these to reason codes (0x90 Topic Name invalid, 0x8F Topic Filter invalid,
/// 0x9E Shared Subscriptions not supported) or to a protocol-error disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicError {
    /// Zero-length topic name or filter [MQTT-4.7.3-1].
    Empty,
    /// Longer than 65,535 bytes.
    TooLong,
    /// A topic name (PUBLISH) contains '+' or '#' [MQTT-3.3.2-2].
    Wildcard,
    /// A filter uses '+' or '#' not as a whole level, or '#' not last [MQTT-4.7.1-1] [MQTT-4.7.1-2].
    InvalidWildcard,
    /// Contains U+0000 [MQTT-4.7.3-2].
    NullChar,
    /// More levels than the broker's configured maximum.
    TooManyLevels,
    /// `$share/...` with an empty or wildcard ShareName, or no filter [MQTT-4.8.2-1] [MQTT-4.8.2-2].
    InvalidShare,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "topic is empty",
            TopicError::TooLong => "topic is longer than 65535 bytes",
            TopicError::Wildcard => "topic name contains a wildcard",
            TopicError::InvalidWildcard => {
                "wildcard does not occupy a whole level, or '#' is not last"
            }
            TopicError::NullChar => "topic contains U+0000",
            TopicError::TooManyLevels => "topic has too many levels",
            TopicError::InvalidShare => "invalid shared subscription",
        })
    }
}

impl std::error::Error for TopicError {}

/// Validates a topic name (PUBLISH, Will topic): non-empty, no '+' or '#' [MQTT-3.3.2-2]
/// [MQTT-4.7.3-1], no U+0000 [MQTT-4.7.3-2], at most 65,535 bytes and `max_levels` levels.
///
/// One pass over the bytes; '/', '+', '#' and NUL are ASCII so byte scanning is UTF-8 safe.
pub fn validate_topic_name(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    check_len(topic)?;
    let mut levels = 1usize;
    for &b in topic.as_bytes() {
        match b {
            b'/' => {
                levels += 1;
                if levels > max_levels {
                    return Err(TopicError::TooManyLevels);
                }
            }
            b'+' | b'#' => return Err(TopicError::Wildcard),
            0 => return Err(TopicError::NullChar),
            _ => {}
        }
    }
    if levels > max_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

/// Validates a topic filter (SUBSCRIBE, UNSUBSCRIBE): non-empty [MQTT-4.7.3-1]; '#' only as
/// the whole last level [MQTT-4.7.1-1]; '+' only as a whole level [MQTT-4.7.1-2]; no U+0000
/// [MQTT-4.7.3-2]; at most 65,535 bytes and `max_levels` levels. Empty levels are allowed.
pub fn validate_topic_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    check_len(filter)?;
    let b = filter.as_bytes();
    let mut levels = 1usize;
    let mut level_start = 0usize;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'/' => {
                levels += 1;
                if levels > max_levels {
                    return Err(TopicError::TooManyLevels);
                }
                level_start = i + 1;
            }
            b'+' if i != level_start || b.get(i + 1).is_some_and(|&n| n != b'/') => {
                return Err(TopicError::InvalidWildcard);
            }
            b'#' if i != level_start || i + 1 != b.len() => {
                return Err(TopicError::InvalidWildcard);
            }
            0 => return Err(TopicError::NullChar),
            _ => {}
        }
    }
    if levels > max_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

fn check_len(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        Err(TopicError::Empty)
    } else if s.len() > MAX_TOPIC_LEN {
        Err(TopicError::TooLong)
    } else {
        Ok(())
    }
}

/// A parsed `$share/{ShareName}/{filter}` (MQTT 5 section 4.8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharedFilter<'a> {
    /// The ShareName: non-empty, no '/', '+' or '#'.
    pub group: &'a str,
    /// The topic filter that messages are matched against (validated).
    pub filter: &'a str,
}

const SHARE_PREFIX: &str = "$share/";

/// Splits a shared-subscription filter. `Ok(None)` if `filter` does not start with `$share/`
/// (it is then an ordinary filter, not validated here).
///
/// The ShareName must be at least one character [MQTT-4.8.2-1] and must not contain '/', '+'
/// or '#' [MQTT-4.8.2-2]; the ShareName ends at the first '/', and the rest must be a valid
/// filter (its own errors are returned, e.g. `Empty` for `$share/g/`).
pub fn parse_shared(
    filter: &str,
    max_levels: usize,
) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    if filter.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError::InvalidShare);
    };
    if group.is_empty() || group.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::InvalidShare);
    }
    if group.contains('\0') {
        return Err(TopicError::NullChar);
    }
    validate_topic_filter(inner, max_levels)?;
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

/// True if the filter contains '+' or '#' (i.e. needs the trie rather than the exact map).
#[inline]
pub fn has_wildcards(filter: &str) -> bool {
    filter.bytes().any(|b| b == b'+' || b == b'#')
}

/// Reference matcher: does `filter` match the topic name `topic`? Both are assumed valid.
///
/// This is the executable statement of MQTT 5 section 4.7; the indexed structures are tested
/// against it.
/// - '#' matches the parent level and any number of child levels: `sport/#` matches `sport`
///   [MQTT-4.7.1-1].
/// - '+' matches exactly one level, which may be empty: `+/+` matches `/finance` [MQTT-4.7.1-2].
/// - A topic starting with '$' is not matched by a filter whose first level is '+' or '#'
///   [MQTT-4.7.2-1].
/// - Matching is byte-wise and case-sensitive; no normalisation.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    if topic.starts_with('$') && matches!(filter.split('/').next(), Some("+" | "#")) {
        return false;
    }
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Iterates the byte ranges of the levels of `s` without allocating: returns the level that
/// starts at `off` and the offset of the next level (`> s.len()` once past the last level).
#[inline]
pub(crate) fn level_at(s: &str, off: usize) -> (&str, usize) {
    let end = s.as_bytes()[off..]
        .iter()
        .position(|&b| b == b'/')
        .map_or(s.len(), |p| off + p);
    (&s[off..end], end + 1)
}
