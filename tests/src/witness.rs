//! [`Witness`]: two healthy clients that prove the broker still routes messages.
//!
//! A malformed packet must close only the connection that sent it. The witness
//! connects before the bad input (a 5.0 publisher and a 3.1.1 subscriber, so
//! routing is checked across connections and protocol versions) and after each
//! case does a QoS 1 round-trip: PUBLISH, PUBACK to the publisher, delivery to
//! the subscriber.

use std::net::SocketAddr;

use crate::mqtt::{self, Ack, Props, Publish, Suback, kind, reason};
use crate::raw::{REPLY_TIMEOUT, RawClient};

/// A connected publisher/subscriber pair on one topic.
#[derive(Debug)]
pub struct Witness {
    publisher: RawClient,
    subscriber: RawClient,
    topic: String,
    next_id: u16,
}

impl Witness {
    /// Connects both clients (ids `<name>-pub` and `<name>-sub`) and subscribes
    /// the subscriber at QoS 1 to `witness/<name>`.
    pub async fn connect(addr: SocketAddr, name: &str) -> Witness {
        let topic = format!("witness/{name}");
        let (publisher, _) = RawClient::connect_v5(addr, &format!("{name}-pub"), &Props::new())
            .await
            .expect("witness publisher connects");
        let mut subscriber = RawClient::connect_v311(addr, &format!("{name}-sub"), 60)
            .await
            .expect("witness subscriber connects");
        subscriber
            .send(&mqtt::subscribe_v311(1, &[(&topic, 1)]))
            .await
            .expect("witness SUBSCRIBE");
        let p = subscriber.expect_packet(REPLY_TIMEOUT).await;
        let suback = Suback::parse(&p, false).unwrap_or_else(|e| panic!("witness SUBACK {p}: {e}"));
        assert_eq!(suback.packet_id, 1, "witness SUBACK packet id");
        assert_eq!(suback.codes, [1], "witness granted QoS");
        Witness {
            publisher,
            subscriber,
            topic,
            next_id: 1,
        }
    }

    /// Publishes one QoS 1 message and asserts the PUBACK and the delivery.
    /// `context` names the case just run, for the failure message.
    pub async fn round_trip(&mut self, context: &str) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let payload = format!("round-trip {id} after {context}");
        self.publisher
            .send(&mqtt::publish_v5(
                &self.topic,
                1,
                id,
                &Props::new(),
                payload.as_bytes(),
            ))
            .await
            .unwrap_or_else(|e| panic!("witness publish after {context}: {e}"));

        let p = self.publisher.expect_packet(REPLY_TIMEOUT).await;
        let ack = Ack::parse(&p, true)
            .unwrap_or_else(|e| panic!("witness PUBACK after {context}: {p}: {e}"));
        assert_eq!(
            (ack.kind, ack.packet_id, ack.reason),
            (kind::PUBACK, id, reason::SUCCESS),
            "witness PUBACK after {context}"
        );

        let p = self.subscriber.expect_packet(REPLY_TIMEOUT).await;
        let publish = Publish::parse(&p, false)
            .unwrap_or_else(|e| panic!("witness delivery after {context}: {p}: {e}"));
        assert_eq!(publish.topic, self.topic, "witness topic after {context}");
        assert_eq!(
            publish.payload.as_ref(),
            payload.as_bytes(),
            "witness payload after {context}"
        );
        assert_eq!(publish.qos, 1, "witness delivery QoS after {context}");
        let pid = publish
            .packet_id
            .unwrap_or_else(|| panic!("QoS 1 delivery without packet id after {context}"));
        self.subscriber
            .send(&mqtt::puback(pid))
            .await
            .unwrap_or_else(|e| panic!("witness PUBACK to broker after {context}: {e}"));
    }

    /// The two clients, e.g. to check how they see a shutdown.
    pub fn clients(&mut self) -> (&mut RawClient, &mut RawClient) {
        (&mut self.publisher, &mut self.subscriber)
    }
}
