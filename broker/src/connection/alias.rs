//! Topic aliases, both directions (MQTT 5, 3.3.2.3.4).
//!
//! Aliases belong to one network connection and start empty on each new one
//! [MQTT-3.3.2-7].

use ferromq_codec::ByteString;
use std::collections::HashMap;

/// Aliases the client assigns in its PUBLISHes, up to our Topic Alias Maximum.
#[derive(Debug)]
pub struct InboundAliases {
    /// The Topic Alias Maximum we announced.
    maximum: u16,
    /// Index = alias; slot 0 unused (alias 0 is not permitted [MQTT-3.3.2-8]).
    /// Allocated on the first alias a client sets: most clients never use aliases
    /// and an idle connection should not carry the table.
    slots: Vec<Option<ByteString>>,
}

/// Why an inbound alias could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasError {
    /// 0 or above the maximum: DISCONNECT 0x94 [MQTT-3.3.2-8] [MQTT-3.3.2-9].
    Invalid,
    /// An empty topic with an alias that was never set: protocol error 0x82.
    Unknown,
    /// An empty topic without an alias: protocol error 0x82.
    MissingTopic,
}

impl InboundAliases {
    pub fn new(maximum: u16) -> Self {
        InboundAliases {
            maximum,
            slots: Vec::new(),
        }
    }

    /// Resolves the topic of an incoming PUBLISH without a Topic Alias (no table needed).
    pub fn plain(topic: &ByteString) -> Result<ByteString, AliasError> {
        if topic.is_empty() {
            Err(AliasError::MissingTopic)
        } else {
            Ok(topic.clone())
        }
    }

    /// Resolves the topic of an incoming PUBLISH.
    pub fn resolve(
        &mut self,
        topic: &ByteString,
        alias: Option<u16>,
    ) -> Result<ByteString, AliasError> {
        match alias {
            None => Self::plain(topic),
            Some(a) => {
                let slot = usize::from(a);
                if a == 0 || a > self.maximum {
                    return Err(AliasError::Invalid);
                }
                if topic.is_empty() {
                    self.slots
                        .get(slot)
                        .cloned()
                        .flatten()
                        .ok_or(AliasError::Unknown)
                } else {
                    if self.slots.is_empty() {
                        self.slots = vec![None; usize::from(self.maximum) + 1];
                    }
                    self.slots[slot] = Some(topic.clone());
                    Ok(topic.clone())
                }
            }
        }
    }
}

/// Aliases the broker assigns when the client allows them (its Topic Alias Maximum).
/// Policy: the first `maximum` distinct topics get an alias for the lifetime of the
/// connection; later topics are sent in full. Stable aliases keep the client's map
/// simple and cost nothing per message.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    maximum: u16,
    assigned: HashMap<ByteString, u16>,
}

/// How to send a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundTopic {
    /// No alias.
    Plain,
    /// First use: send the topic and the new alias.
    Assign(u16),
    /// Known: send an empty topic with the alias.
    Reuse(u16),
}

impl OutboundAliases {
    pub fn new(maximum: u16) -> Self {
        OutboundAliases {
            maximum,
            assigned: HashMap::new(),
        }
    }

    pub fn lookup(&mut self, topic: &ByteString) -> OutboundTopic {
        if self.maximum == 0 {
            return OutboundTopic::Plain;
        }
        if let Some(&a) = self.assigned.get(topic) {
            return OutboundTopic::Reuse(a);
        }
        if self.assigned.len() < usize::from(self.maximum) {
            let a = self.assigned.len() as u16 + 1;
            self.assigned.insert(topic.clone(), a);
            return OutboundTopic::Assign(a);
        }
        OutboundTopic::Plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_alias_rules() {
        let mut a = InboundAliases::new(2);
        let t = ByteString::from("a/b");
        let empty = ByteString::new();
        // [MQTT-3.3.2-8] alias 0 is invalid; above maximum too [MQTT-3.3.2-9].
        assert_eq!(a.resolve(&t, Some(0)), Err(AliasError::Invalid));
        assert_eq!(a.resolve(&t, Some(3)), Err(AliasError::Invalid));
        assert_eq!(a.resolve(&empty, Some(1)), Err(AliasError::Unknown));
        assert_eq!(a.resolve(&empty, None), Err(AliasError::MissingTopic));
        assert_eq!(a.resolve(&t, Some(1)), Ok(t.clone()));
        assert_eq!(a.resolve(&empty, Some(1)), Ok(t));
    }

    #[test]
    fn outbound_assigns_up_to_maximum() {
        let mut a = OutboundAliases::new(1);
        let x = ByteString::from("x");
        let y = ByteString::from("y");
        assert_eq!(a.lookup(&x), OutboundTopic::Assign(1));
        assert_eq!(a.lookup(&x), OutboundTopic::Reuse(1));
        assert_eq!(a.lookup(&y), OutboundTopic::Plain);
        assert_eq!(OutboundAliases::new(0).lookup(&x), OutboundTopic::Plain);
    }
}
