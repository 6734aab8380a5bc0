//! Dead letters: where a command goes when it cannot be handled.

use std::sync::Arc;

use async_trait::async_trait;
use saga_ports::{dead_letter_message, Delivery, PortError, Publisher};

/// Moves a delivery to the dead-letter queue (`SAGA_DLQ`, subjects `dlq.>`) and
/// terminates it. On `Err` the delivery must be left unsettled (the participant naks
/// it), so a command is never dropped without its dead letter stored. `saga-nats`'s
/// `dead_letter` has exactly this contract.
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// Publishes `delivery` with `reason` to the DLQ, then terms it.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), PortError>;
}

/// Dead letters through a [`Publisher`]: [`dead_letter_message`] (on
/// `dlq.<original subject>`, `Saga-Dlq-*` headers, deduplicated per original message)
/// without the original's `Nats-*` server headers, then `term`.
#[derive(Debug, Clone)]
pub struct PublishDeadLetters<P: ?Sized> {
    publisher: Arc<P>,
}

impl<P: Publisher + ?Sized> PublishDeadLetters<P> {
    /// Dead letters through `publisher`.
    pub fn new(publisher: Arc<P>) -> Self {
        Self { publisher }
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> DeadLetters for PublishDeadLetters<P> {
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), PortError> {
        let mut message = dead_letter_message(delivery, reason);
        // Headers the server acts on (expected sequences, TTLs) were meant for the
        // original publish, not for its dead letter.
        message
            .headers
            .retain(|name, _| !name.to_ascii_lowercase().starts_with("nats-"));
        match self.publisher.publish(&message).await {
            // Just under max_payload, pushed over it by the dead-letter headers.
            Err(PortError::Rejected(_)) => {
                let message = saga_ports::truncated_dead_letter(message, delivery);
                self.publisher.publish(&message).await?;
            }
            other => {
                other?;
            }
        }
        delivery.acker.term().await
    }
}
