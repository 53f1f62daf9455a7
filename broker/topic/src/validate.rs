//! Topic name and topic filter syntax (MQTT 5.0 §4.7, §4.8.2), plus the naive
//! reference matcher the trie and the retained tree are property-tested against.
//!
//! Everything here works on `&str`: the codec has already checked that the string is
//! well-formed UTF-8 without U+0000 ([MQTT-1.5.4-1], [MQTT-1.5.4-2], which also covers
//! [MQTT-4.7.3-2]), so these functions only check the topic syntax. Wildcards and the
//! separator are ASCII, so scanning bytes is exact on UTF-8 input. No function here
//! allocates.
//!
//! # Layout
//! - [`TopicError`]: why a name or a filter is refused; the broker maps it to reason
//!   code 0x90 (Topic Name invalid), 0x8F (Topic Filter invalid) or 0x9E (Shared
//!   Subscriptions not supported) as the packet requires.
//! - [`validate_topic_name`] / [`validate_topic_filter`]: the checks for PUBLISH and
//!   SUBSCRIBE / UNSUBSCRIBE.
//! - [`parse_shared`] / [`SharedFilter`]: `$share/{group}/{filter}`.
//! - [`matches()`]: one filter against one topic, the slow obvious way.
//! - [`level_count`], [`MAX_TOPIC_LEN`], [`MAX_LEVELS`].

/// The longest topic name or filter, in bytes: a UTF-8 Encoded String's length is a
/// two-byte integer [MQTT-4.7.3-3].
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The most levels a topic name or topic filter may have.
///
/// The spec sets no limit, but without one a 64 KiB filter of `/` is 65,536 levels:
/// a 65,536-deep chain of trie nodes that recursion (matching, pruning, `Drop`) walks
/// one stack frame per level (Mosquitto CVE-2019-11779). 201 levels is Mosquitto's own
/// bound (`TOPIC_HIERARCHY_LIMIT`: at most 200 separators), so nothing Mosquitto
/// accepts is refused here, and the deepest walk stays a few tens of KiB of stack.
/// The [`crate::TopicTrie`] and [`crate::RetainedTree`] rely on it: only validated
/// filters and names may be inserted.
pub const MAX_LEVELS: usize = 201;

/// Why a topic name or topic filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters are at least one character long [MQTT-4.7.3-1].
    #[error("topic is empty [MQTT-4.7.3-1]")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`] bytes [MQTT-4.7.3-3].
    #[error("topic is longer than 65535 bytes [MQTT-4.7.3-3]")]
    TooLong,
    /// A topic name (PUBLISH, will topic) contains `+` or `#` [MQTT-3.3.2-2].
    #[error("topic name contains a wildcard character [MQTT-3.3.2-2]")]
    WildcardInName,
    /// `#` not alone in the last level [MQTT-4.7.1-1], or `+` not alone in its level
    /// [MQTT-4.7.1-2].
    #[error(
        "wildcard must occupy a whole level, and '#' only the last one [MQTT-4.7.1-1] [MQTT-4.7.1-2]"
    )]
    InvalidWildcard,
    /// `$share/...` without a non-empty group free of `+`, `#`, or without a filter
    /// after it [MQTT-4.8.2-1] [MQTT-4.8.2-2].
    #[error(
        "shared subscription must be $share/{{group}}/{{filter}} with a non-empty group free of '+' and '#' [MQTT-4.8.2-1] [MQTT-4.8.2-2]"
    )]
    InvalidSharedSubscription,
    /// More than [`MAX_LEVELS`] levels (an implementation limit, see there).
    #[error("topic has more than {MAX_LEVELS} levels")]
    TooManyLevels,
}

/// Checks a topic name, as carried by PUBLISH or a will message.
///
/// Non-empty [MQTT-4.7.3-1], at most 65,535 bytes [MQTT-4.7.3-3], no wildcard
/// characters [MQTT-3.3.2-2], at most [`MAX_LEVELS`] levels. A leading `$` is allowed
/// (clients may publish to `$` topics; whether they may is an ACL question).
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_length(name)?;
    let mut separators = 0usize;
    for b in name.bytes() {
        match b {
            b'/' => separators += 1,
            b'+' | b'#' => return Err(TopicError::WildcardInName),
            _ => {}
        }
    }
    check_levels(separators)
}

/// Checks a topic filter, as carried by SUBSCRIBE and UNSUBSCRIBE.
///
/// Non-empty [MQTT-4.7.3-1], at most 65,535 bytes [MQTT-4.7.3-3], `#` only alone in
/// the last level [MQTT-4.7.1-1], `+` only alone in its level [MQTT-4.7.1-2], at most
/// [`MAX_LEVELS`] levels. A filter starting with `$share/` must also be a well-formed
/// shared subscription (see [`parse_shared`]), whatever the protocol version, as
/// Mosquitto and EMQX treat it.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.starts_with(SHARE_PREFIX) {
        return parse_shared(filter).map(|_| ());
    }
    validate_filter_syntax(filter)
}

const SHARE_PREFIX: &str = "$share/";

/// A shared subscription `$share/{group}/{filter}`, borrowed from the original string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharedFilter<'a> {
    /// The ShareName: non-empty, without `/`, `+` or `#` [MQTT-4.8.2-1] [MQTT-4.8.2-2].
    pub group: &'a str,
    /// The topic filter after the group, valid and non-empty [MQTT-4.8.2-2]. This is
    /// what goes into the [`crate::TopicTrie`].
    pub filter: &'a str,
}

/// Splits a shared subscription `$share/{group}/{filter}`.
///
/// Returns `Ok(None)` when `filter` does not start with `$share/` (an ordinary
/// filter, not validated here). Otherwise the whole string must be well-formed: a
/// non-empty group [MQTT-4.8.2-1] without `+` or `#`, followed by `/` and a non-empty
/// filter [MQTT-4.8.2-2] (else [`TopicError::InvalidSharedSubscription`]); the inner
/// filter must pass the ordinary filter checks (their error is returned as is). The
/// inner filter is checked as an ordinary filter: `$share/a/$share/b/c` is group `a`
/// with the literal filter `$share/b/c`, never nested.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    if filter.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    // The group ends at the first '/', so it cannot contain one [MQTT-4.8.2-2].
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError::InvalidSharedSubscription);
    };
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(TopicError::InvalidSharedSubscription);
    }
    validate_filter_syntax(inner)?;
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

/// Whether `filter` matches `topic`: the reference semantics, written for obviousness
/// rather than speed.
///
/// - `+` matches exactly one level, which may be empty (`a/+/b` matches `a//b`);
/// - `#` matches the rest, including nothing at all: `sport/#` matches `sport`
///   (§4.7.1.2) and `#` matches everything;
/// - a topic starting with `$` is not matched by a filter whose first level is `+` or
///   `#` [MQTT-4.7.2-1] (`$SYS/#` does match `$SYS/uptime`);
/// - no normalization of either string [MQTT-4.7.3-4].
///
/// Both arguments are assumed valid; `filter` is an ordinary filter (for a shared
/// subscription pass [`SharedFilter::filter`]).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match topic_levels.next() {
            None => return false,
            Some(t) => {
                if f != "+" && f != t {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// The number of levels of a topic name or filter: separators plus one, so `""` and
/// `"a"` have one level and `"/"` has two.
pub fn level_count(s: &str) -> usize {
    s.bytes().filter(|&b| b == b'/').count() + 1
}

fn check_length(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        Err(TopicError::Empty)
    } else if s.len() > MAX_TOPIC_LEN {
        Err(TopicError::TooLong)
    } else {
        Ok(())
    }
}

fn check_levels(separators: usize) -> Result<(), TopicError> {
    if separators >= MAX_LEVELS {
        Err(TopicError::TooManyLevels)
    } else {
        Ok(())
    }
}

/// The ordinary filter checks, without the `$share/` interpretation.
fn validate_filter_syntax(filter: &str) -> Result<(), TopicError> {
    check_length(filter)?;
    let bytes = filter.as_bytes();
    let mut separators = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        let starts_level = i == 0 || bytes[i - 1] == b'/';
        let ends_level = i + 1 == bytes.len() || bytes[i + 1] == b'/';
        match b {
            b'/' => separators += 1,
            // Alone in its level [MQTT-4.7.1-2].
            b'+' if !(starts_level && ends_level) => return Err(TopicError::InvalidWildcard),
            // Alone in its level and the last character [MQTT-4.7.1-1].
            b'#' if !(starts_level && i + 1 == bytes.len()) => {
                return Err(TopicError::InvalidWildcard);
            }
            _ => {}
        }
    }
    check_levels(separators)
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- topic names -------------------------------------------------------------

    #[test]
    fn name_must_not_be_empty_mqtt_4_7_3_1() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
    }

    #[test]
    fn name_must_not_exceed_65535_bytes_mqtt_4_7_3_3() {
        let max = "a".repeat(MAX_TOPIC_LEN);
        assert_eq!(validate_topic_name(&max), Ok(()));
        let over = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(validate_topic_name(&over), Err(TopicError::TooLong));
        // Bytes, not chars: 'é' is two bytes.
        let wide = "é".repeat(MAX_TOPIC_LEN / 2 + 1);
        assert_eq!(validate_topic_name(&wide), Err(TopicError::TooLong));
    }

    #[test]
    fn name_must_not_contain_wildcards_mqtt_3_3_2_2() {
        for name in [
            "+",
            "#",
            "a/+",
            "a/#",
            "a+",
            "sport/tennis#",
            "+/a",
            "a/+/b",
        ] {
            assert_eq!(
                validate_topic_name(name),
                Err(TopicError::WildcardInName),
                "{name}"
            );
        }
    }

    #[test]
    fn name_accepts_spec_shapes_4_7_3() {
        // Empty levels are legal, and so are leading/trailing separators and '$'.
        for name in [
            "/",
            "//",
            "/finance",
            "sport/",
            "a//b",
            "$SYS/broker/uptime",
            "$",
            " ",
            "ACCOUNTS",
            "Accounts payable",
            "sport/tennis/player1",
            "日本/語",
        ] {
            assert_eq!(validate_topic_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn name_level_limit() {
        let at_limit = "a/".repeat(MAX_LEVELS - 1) + "a";
        assert_eq!(level_count(&at_limit), MAX_LEVELS);
        assert_eq!(validate_topic_name(&at_limit), Ok(()));
        let over = "/".repeat(MAX_LEVELS);
        assert_eq!(level_count(&over), MAX_LEVELS + 1);
        assert_eq!(validate_topic_name(&over), Err(TopicError::TooManyLevels));
        // The CVE-2019-11779 shape: a maximal string of separators.
        let flood = "/".repeat(MAX_TOPIC_LEN);
        assert_eq!(validate_topic_name(&flood), Err(TopicError::TooManyLevels));
        assert_eq!(
            validate_topic_filter(&flood),
            Err(TopicError::TooManyLevels)
        );
    }

    // ---- topic filters -----------------------------------------------------------

    #[test]
    fn filter_must_not_be_empty_mqtt_4_7_3_1() {
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn filter_must_not_exceed_65535_bytes_mqtt_4_7_3_3() {
        let over = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(validate_topic_filter(&over), Err(TopicError::TooLong));
        let max = "a".repeat(MAX_TOPIC_LEN - 2) + "/#";
        assert_eq!(validate_topic_filter(&max), Ok(()));
    }

    #[test]
    fn multi_level_wildcard_alone_and_last_mqtt_4_7_1_1() {
        // Valid per §4.7.1.2.
        for f in [
            "#",
            "sport/#",
            "sport/tennis/#",
            "sport/tennis/player1/#",
            "/#",
            "+/#",
        ] {
            assert_eq!(validate_topic_filter(f), Ok(()), "{f}");
        }
        // "sport/tennis#" and "sport/tennis/#/ranking" are the spec's invalid examples.
        for f in [
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "#/",
            "##",
            "a#",
            "#a",
            "a/#b",
            "#/a",
        ] {
            assert_eq!(
                validate_topic_filter(f),
                Err(TopicError::InvalidWildcard),
                "{f}"
            );
        }
    }

    #[test]
    fn single_level_wildcard_occupies_whole_level_mqtt_4_7_1_2() {
        // Valid per §4.7.1.3.
        for f in [
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "sport/+",
            "+/+",
            "/+",
            "+/",
            "a/+/+/b",
            "+//+",
        ] {
            assert_eq!(validate_topic_filter(f), Ok(()), "{f}");
        }
        // "sport+" is the spec's invalid example.
        for f in ["sport+", "+sport", "a/b+/c", "++", "a/++", "+a/b"] {
            assert_eq!(
                validate_topic_filter(f),
                Err(TopicError::InvalidWildcard),
                "{f}"
            );
        }
    }

    #[test]
    fn filter_level_limit() {
        let at_limit = "+/".repeat(MAX_LEVELS - 1) + "#";
        assert_eq!(validate_topic_filter(&at_limit), Ok(()));
        let over = "+/".repeat(MAX_LEVELS) + "#";
        assert_eq!(validate_topic_filter(&over), Err(TopicError::TooManyLevels));
    }

    // ---- shared subscriptions ----------------------------------------------------

    #[test]
    fn shared_subscription_parses_group_and_filter_mqtt_4_8_2() {
        assert_eq!(
            parse_shared("$share/consumer1/sport/tennis/+"),
            Ok(Some(SharedFilter {
                group: "consumer1",
                filter: "sport/tennis/+"
            }))
        );
        assert_eq!(
            parse_shared("$share/g/#"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "#"
            }))
        );
        // The filter may itself start with '/' or '$'.
        assert_eq!(
            parse_shared("$share/g//a"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "/a"
            }))
        );
        assert_eq!(
            parse_shared("$share/g/$share/h/x"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "$share/h/x"
            }))
        );
        assert_eq!(
            validate_topic_filter("$share/consumer1/sport/tennis/+"),
            Ok(())
        );
    }

    #[test]
    fn not_shared_is_none() {
        for f in [
            "sport/#",
            "$SYS/#",
            "$share",
            "$sharex/g/a",
            "$SHARE/g/a",
            "a/$share/g/b",
        ] {
            assert_eq!(parse_shared(f), Ok(None), "{f}");
        }
        // "$share" alone is an ordinary filter.
        assert_eq!(validate_topic_filter("$share"), Ok(()));
    }

    #[test]
    fn share_name_non_empty_mqtt_4_8_2_1() {
        for f in ["$share//a", "$share//"] {
            assert_eq!(
                parse_shared(f),
                Err(TopicError::InvalidSharedSubscription),
                "{f}"
            );
            assert_eq!(
                validate_topic_filter(f),
                Err(TopicError::InvalidSharedSubscription),
                "{f}"
            );
        }
    }

    #[test]
    fn share_name_without_wildcards_followed_by_filter_mqtt_4_8_2_2() {
        for f in [
            "$share/",
            "$share/g",
            "$share/g/",
            "$share/g+/a",
            "$share/+/a",
            "$share/#/a",
            "$share/#",
            "$share/a#b/c",
        ] {
            assert_eq!(
                parse_shared(f),
                Err(TopicError::InvalidSharedSubscription),
                "{f}"
            );
            assert_eq!(
                validate_topic_filter(f),
                Err(TopicError::InvalidSharedSubscription),
                "{f}"
            );
        }
    }

    #[test]
    fn shared_inner_filter_follows_filter_rules() {
        assert_eq!(
            parse_shared("$share/g/a/#/b"),
            Err(TopicError::InvalidWildcard)
        );
        assert_eq!(
            validate_topic_filter("$share/g/sport+"),
            Err(TopicError::InvalidWildcard)
        );
        let long = format!("$share/g/{}", "a".repeat(MAX_TOPIC_LEN));
        assert_eq!(parse_shared(&long), Err(TopicError::TooLong));
        let deep = format!("$share/g/{}", "/".repeat(MAX_LEVELS));
        assert_eq!(parse_shared(&deep), Err(TopicError::TooManyLevels));
    }

    // ---- matching: the examples of §4.7 -------------------------------------------

    #[test]
    fn multi_level_wildcard_examples_4_7_1_2() {
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!matches(f, "sport/tennis/player2"));
        assert!(!matches(f, "sport/tennis"));
        // "sport/#" also matches the singular "sport", '#' including the parent level.
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/#", "sport/"));
        assert!(!matches("sport/#", "sports"));
        assert!(matches("#", "sport/tennis/player1"));
        assert!(matches("#", "/"));
    }

    #[test]
    fn single_level_wildcard_examples_4_7_1_3() {
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        // "sport/+" does not match "sport" but does match "sport/".
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        // "+/+" and "/+" match "/finance"; "+" does not.
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+", "finance"));
        // An empty level is a level.
        assert!(matches("a/+/b", "a//b"));
        assert!(matches("+", ""));
        assert!(matches("+/tennis/#", "sport/tennis/player1"));
        assert!(matches("sport/+/player1", "sport/tennis/player1"));
    }

    #[test]
    fn dollar_topics_not_matched_by_leading_wildcard_mqtt_4_7_2_1() {
        // The four examples of §4.7.2.
        assert!(!matches("#", "$SYS/broker/clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$"));
        assert!(!matches("+/#", "$SYS"));
        // Only the first level counts.
        assert!(matches("a/+", "a/$b"));
        assert!(matches("a/#", "a/$b/c"));
        assert!(matches("#", "a$/b"));
    }

    #[test]
    fn no_normalization_mqtt_4_7_3_4() {
        // Case-sensitive, spaces significant, separators not collapsed.
        assert!(!matches("ACCOUNTS", "Accounts"));
        assert!(!matches("accounts payable", "accounts  payable"));
        assert!(!matches("a/b", "a//b"));
        assert!(!matches("a/b", "a/b/"));
        assert!(!matches("a/b/", "a/b"));
        assert!(matches("a/b/", "a/b/"));
    }

    #[test]
    fn error_messages_cite_the_spec() {
        assert_eq!(
            TopicError::Empty.to_string(),
            "topic is empty [MQTT-4.7.3-1]"
        );
        assert_eq!(
            TopicError::TooManyLevels.to_string(),
            "topic has more than 201 levels"
        );
        assert!(
            TopicError::InvalidSharedSubscription
                .to_string()
                .contains("$share/{group}/{filter}")
        );
    }

    #[test]
    fn level_count_counts_separators() {
        assert_eq!(level_count(""), 1);
        assert_eq!(level_count("a"), 1);
        assert_eq!(level_count("/"), 2);
        assert_eq!(level_count("a/b/c"), 3);
        assert_eq!(level_count("$share/g/a/#"), 4);
    }
}
