//! CONNECT validation and the CONNACK that answers it (spec 3.1 and 3.2).
//!
//! Pure functions of the CONNECT and the configuration, so every rule is unit-tested
//! without a socket. The connection task applies the outcome.

use std::sync::Arc;

use ferromq_codec::{
    ByteString, ConnAck, ConnAckProperties, Connect, ProtocolVersion, QoS, ReasonCode,
};
use ferromq_config::MqttConfig;

use crate::auth::{Identity, Security, Subject};
use crate::broker::PendingWill;
use crate::message::{Message, SessionId};

/// Everything the connection needs from an accepted CONNECT.
#[derive(Debug)]
pub struct Accepted {
    pub client_id: ByteString,
    /// The broker chose the client id [MQTT-3.1.3-7]; v5 gets it in CONNACK.
    pub assigned_client_id: bool,
    pub clean_start: bool,
    /// Session Expiry Interval in seconds after capping; `u32::MAX` = never.
    pub session_expiry: u32,
    /// The keep alive the broker enforces (seconds, 0 = none).
    pub keep_alive: u16,
    /// Server Keep Alive to announce when it differs from the client's [MQTT-3.2.2-21].
    pub server_keep_alive: Option<u16>,
    /// The client's Receive Maximum: our outbound in-flight window [MQTT-3.3.4-9].
    pub client_receive_maximum: u16,
    /// The client's Maximum Packet Size [MQTT-3.1.2-24].
    pub client_max_packet_size: Option<u32>,
    /// How many topic aliases the client accepts from us.
    pub client_topic_alias_maximum: u16,
    /// Reason String / User Property may be sent on errors [MQTT-3.1.2-29].
    pub request_problem_information: bool,
}

/// Why a CONNECT is refused: the CONNACK code to send (v5 code; mapped for 3.1.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub ReasonCode);

/// Maps a v5 CONNACK reason code to the 3.1.x return code [MQTT-3.2.2-6].
pub fn v3_return_code(code: ReasonCode) -> ReasonCode {
    match code {
        ReasonCode::SUCCESS => ReasonCode::V3_ACCEPTED,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => ReasonCode::V3_UNACCEPTABLE_PROTOCOL_VERSION,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => ReasonCode::V3_IDENTIFIER_REJECTED,
        // Mosquitto answers a failed login with 0x05 on 3.1.1, and clients written
        // against it expect that (the spec's 0x04 would also do).
        ReasonCode::BAD_USER_NAME_OR_PASSWORD => ReasonCode::V3_NOT_AUTHORIZED,
        ReasonCode::NOT_AUTHORIZED => ReasonCode::V3_NOT_AUTHORIZED,
        _ => ReasonCode::V3_SERVER_UNAVAILABLE,
    }
}

/// A fresh client id for an empty one: the configured prefix and 16 random hex digits.
pub fn assign_client_id(prefix: &str) -> ByteString {
    let n: u64 = rand::random();
    ByteString::from(format!("{prefix}{n:016x}"))
}

/// Applies the CONNECT rules of the spec and the configuration, for a client that
/// logged in as `identity` ([`crate::auth::Security::login`] decides that, before
/// this). `security` checks that the will may be published: a will topic the ACL does
/// not let this client write is refused with Not authorized at CONNECT, rather than
/// silently dropped when the will fires.
pub fn accept(
    connect: &Connect,
    cfg: &MqttConfig,
    identity: &Identity,
    security: &Security,
) -> Result<Accepted, Refused> {
    let v5 = connect.protocol.is_v5();
    let props = &connect.properties;

    // Enhanced authentication is not offered: a method we do not support is refused
    // with Bad Authentication Method [MQTT-4.12.0-1].
    if props.authentication_method.is_some() {
        return Err(Refused(ReasonCode::BAD_AUTHENTICATION_METHOD));
    }

    let (client_id, assigned) = if connect.client_id.is_empty() {
        // 3.1.1: an empty id needs Clean Session 1 [MQTT-3.1.3-8]; 3.1 has no empty
        // ids; 5.0 gets an assigned id whatever Clean Start says [MQTT-3.1.3-6].
        let allowed = match connect.protocol {
            ProtocolVersion::V5 => true,
            ProtocolVersion::V3_1_1 => connect.clean_start,
            ProtocolVersion::V3_1 => false,
        };
        if !allowed || !cfg.allow_zero_length_clientid {
            return Err(Refused(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID));
        }
        (assign_client_id(&cfg.auto_id_prefix), true)
    } else {
        (connect.client_id.clone(), false)
    };

    if let Some(will) = &connect.will {
        if ferromq_topic::validate_topic_name(&will.topic).is_err() {
            return Err(Refused(ReasonCode::TOPIC_NAME_INVALID));
        }
        if will.qos as u8 > cfg.max_qos {
            return Err(Refused(ReasonCode::QOS_NOT_SUPPORTED));
        }
        if will.retain && !cfg.retain_available {
            return Err(Refused(ReasonCode::RETAIN_NOT_SUPPORTED));
        }
        if will.topic.len() > cfg.max_topic_length
            || ferromq_topic::level_count(&will.topic) > cfg.max_topic_levels
        {
            return Err(Refused(ReasonCode::TOPIC_NAME_INVALID));
        }
        let subject = Subject {
            username: identity.username.as_deref(),
            client_id: &client_id,
        };
        if !security.can_publish(subject, &will.topic) {
            return Err(Refused(ReasonCode::NOT_AUTHORIZED));
        }
    }

    let session_expiry = if v5 {
        props.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    }
    .min(cfg.max_session_expiry_interval);

    // A v5 client asking for more than max_keepalive (or for none while a maximum
    // exists) is told the Server Keep Alive it must use [MQTT-3.2.2-21]. 3.1.x clients
    // cannot be told, so their own value is enforced.
    let (keep_alive, server_keep_alive) = if v5
        && cfg.max_keepalive < u16::MAX
        && (connect.keep_alive == 0 || connect.keep_alive > cfg.max_keepalive)
    {
        (cfg.max_keepalive, Some(cfg.max_keepalive))
    } else {
        (connect.keep_alive, None)
    };

    Ok(Accepted {
        client_id,
        assigned_client_id: assigned,
        clean_start: connect.clean_start,
        session_expiry,
        keep_alive,
        server_keep_alive,
        client_receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
        client_max_packet_size: props.maximum_packet_size,
        client_topic_alias_maximum: if v5 {
            props.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        },
        request_problem_information: props.request_problem_information.unwrap_or(1) == 1,
    })
}

/// The will of a CONNECT as a message, ready to publish when the time comes.
pub fn pending_will(connect: &Connect, origin: SessionId) -> Option<PendingWill> {
    let will = connect.will.as_ref()?;
    let mut properties = ferromq_codec::PublishProperties {
        payload_format_indicator: will.properties.payload_format_indicator,
        message_expiry_interval: will.properties.message_expiry_interval,
        response_topic: will.properties.response_topic.clone(),
        correlation_data: will.properties.correlation_data.clone(),
        user_properties: will.properties.user_properties.clone(),
        content_type: will.properties.content_type.clone(),
        ..Default::default()
    };
    properties.topic_alias = None;
    Some(PendingWill {
        message: Message::new(
            will.topic.clone(),
            will.payload.clone(),
            will.qos,
            will.retain,
            properties,
            Some(origin),
        ),
        delay: will.properties.will_delay_interval.unwrap_or(0),
    })
}

/// The CONNACK for an accepted CONNECT.
pub fn connack(
    accepted: &Accepted,
    connect: &Connect,
    cfg: &MqttConfig,
    session_present: bool,
) -> ConnAck {
    let mut properties = ConnAckProperties::default();
    if connect.protocol.is_v5() {
        let requested = connect.properties.session_expiry_interval.unwrap_or(0);
        if requested != accepted.session_expiry {
            properties.session_expiry_interval = Some(accepted.session_expiry);
        }
        properties.receive_maximum = Some(cfg.receive_maximum);
        if cfg.max_qos < 2 {
            properties.maximum_qos = Some(cfg.max_qos);
        }
        if !cfg.retain_available {
            properties.retain_available = Some(0);
        }
        properties.maximum_packet_size = Some(cfg.max_packet_size);
        if accepted.assigned_client_id {
            properties.assigned_client_identifier = Some(accepted.client_id.clone());
        }
        properties.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        properties.server_keep_alive = accepted.server_keep_alive;
    }
    ConnAck {
        session_present,
        reason_code: ReasonCode::SUCCESS,
        properties,
    }
}

/// The CONNACK refusing a CONNECT of `protocol`: session present 0 [MQTT-3.2.2-6].
pub fn refusal(protocol: ProtocolVersion, Refused(code): Refused) -> ConnAck {
    ConnAck {
        session_present: false,
        reason_code: if protocol.is_v5() {
            code
        } else {
            v3_return_code(code)
        },
        properties: ConnAckProperties::default(),
    }
}

/// QoS a subscription is granted: at most the server's Maximum QoS.
pub fn granted_qos(requested: QoS, max_qos: u8) -> QoS {
    QoS::from_u8((requested as u8).min(max_qos)).unwrap_or(QoS::AtMostOnce)
}

/// Convenience for the tests and the connection: the will as an `Arc<Message>`.
pub fn will_message(will: &PendingWill) -> Arc<Message> {
    will.message.clone()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn open() -> Security {
        Security::load(&ferromq_config::Config::default()).unwrap()
    }

    fn accept(connect: &Connect, cfg: &MqttConfig, _anonymous: bool) -> Result<Accepted, Refused> {
        super::accept(connect, cfg, &Identity::default(), &open())
    }

    fn connect(protocol: ProtocolVersion, id: &str, clean: bool) -> Connect {
        Connect {
            protocol,
            clean_start: clean,
            keep_alive: 30,
            client_id: ByteString::from(id),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        }
    }

    #[test]
    fn empty_client_id_rules() {
        let cfg = MqttConfig::default();
        // [MQTT-3.1.3-8] 3.1.1 empty id with clean session 0 is rejected with 0x02.
        let r = accept(&connect(ProtocolVersion::V3_1_1, "", false), &cfg, true).unwrap_err();
        assert_eq!(v3_return_code(r.0), ReasonCode::V3_IDENTIFIER_REJECTED);
        // [MQTT-3.1.3-6] with clean session 1 an id is assigned.
        let a = accept(&connect(ProtocolVersion::V3_1_1, "", true), &cfg, true).unwrap();
        assert!(a.assigned_client_id && a.client_id.starts_with("auto-"));
        // v5 always gets an assigned id, returned in CONNACK [MQTT-3.2.2-16].
        let c = connect(ProtocolVersion::V5, "", false);
        let a = accept(&c, &cfg, true).unwrap();
        let ack = connack(&a, &c, &cfg, false);
        assert_eq!(ack.properties.assigned_client_identifier, Some(a.client_id));
    }

    #[test]
    fn server_keep_alive_caps_v5_clients() {
        let cfg = MqttConfig {
            max_keepalive: 60,
            ..MqttConfig::default()
        };
        let mut c = connect(ProtocolVersion::V5, "k", true);
        c.keep_alive = 120;
        let a = accept(&c, &cfg, true).unwrap();
        assert_eq!((a.keep_alive, a.server_keep_alive), (60, Some(60)));
        let mut c3 = connect(ProtocolVersion::V3_1_1, "k", true);
        c3.keep_alive = 120;
        assert_eq!(accept(&c3, &cfg, true).unwrap().keep_alive, 120);
    }

    #[test]
    fn session_expiry_by_version() {
        let cfg = MqttConfig::default();
        assert_eq!(
            accept(&connect(ProtocolVersion::V3_1_1, "a", false), &cfg, true)
                .unwrap()
                .session_expiry,
            u32::MAX
        );
        assert_eq!(
            accept(&connect(ProtocolVersion::V3_1_1, "a", true), &cfg, true)
                .unwrap()
                .session_expiry,
            0
        );
        let mut c = connect(ProtocolVersion::V5, "a", false);
        c.properties.session_expiry_interval = Some(30);
        assert_eq!(accept(&c, &cfg, true).unwrap().session_expiry, 30);
    }

    #[test]
    fn anonymous_refused_when_disallowed() {
        // Login decides this now (`Security::login`); the refusal maps to 0x05.
        let e = open().authenticate(None, None, false).unwrap_err();
        assert_eq!(
            v3_return_code(e.reason_code()),
            ReasonCode::V3_NOT_AUTHORIZED
        );
        assert_eq!(e.v3_return_code(), ReasonCode::V3_NOT_AUTHORIZED);
    }

    #[test]
    fn will_topic_needs_write_access() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl");
        std::fs::write(&path, "pattern write wills/%c\n").unwrap();
        let mut config = ferromq_config::Config::default();
        config.auth.acl_file = Some(path);
        let security = Security::load(&config).unwrap();
        let cfg = MqttConfig::default();
        let mut c = connect(ProtocolVersion::V5, "dev1", true);
        c.will = Some(ferromq_codec::LastWill {
            topic: ByteString::from("wills/dev1"),
            payload: Default::default(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        });
        assert!(super::accept(&c, &cfg, &Identity::default(), &security).is_ok());
        c.client_id = ByteString::from("dev2");
        let r = super::accept(&c, &cfg, &Identity::default(), &security).unwrap_err();
        assert_eq!(r.0, ReasonCode::NOT_AUTHORIZED);
    }
}
