//! Dead letters.

use saga_ports::{dead_letter_message, Delivery, PortError, Publisher};

/// Moves `delivery` to the dead-letter queue: republishes its payload and headers to
/// `dlq.<original subject>` (stream `SAGA_DLQ`) with `Saga-Dlq-Reason`, `-Subject`,
/// `-Stream`, `-Sequence`, `-Deliveries` and `-Consumer`, deduplicated by
/// `Nats-Msg-Id: dlq:<stream>:<sequence>`, then terminates the delivery so it is never
/// redelivered.
///
/// Safe to retry: a second call within the duplicate window stores nothing new. If the
/// publish fails, the delivery is left as it is (it will be redelivered), so a message is
/// never dropped without its dead letter being stored.
pub async fn dead_letter(
    publisher: &dyn Publisher,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), PortError> {
    let mut message = dead_letter_message(delivery, reason);
    // Headers the server acts on (expected sequences, rollups, TTLs) made sense for the
    // original publish, not for its dead letter.
    message
        .headers
        .retain(|name, _| !name.to_ascii_lowercase().starts_with("nats-"));
    let ack = publisher.publish(&message).await?;
    tracing::warn!(
        subject = %delivery.subject,
        stream = %delivery.stream,
        sequence = delivery.stream_sequence,
        deliveries = delivery.delivered,
        dlq_sequence = ack.sequence,
        reason,
        "message dead-lettered"
    );
    delivery.acker.term().await
}
