//! Names on the wire. They are stable: users type them into the `nats` CLI, so changing
//! one is a breaking change of the deployment, not a refactoring.
//!
//! | what | stream / bucket | subjects |
//! | --- | --- | --- |
//! | saga inputs (starts, cancels) | [`INBOX_STREAM`] | `saga.in.<partition>.<saga_id>` |
//! | step replies | [`INBOX_STREAM`] | `saga.reply.<partition>.<saga_id>.<service>` |
//! | step commands | [`COMMANDS_STREAM`] | `saga.cmd.<service>.<action>` |
//! | saga journals | [`JOURNAL_STREAM`] | `saga.journal.<saga_type>.<saga_id>` |
//! | domain events | [`EVENTS_STREAM`] | `events.<domain>.<EventName>` |
//! | dead letters | [`DLQ_STREAM`] | `dlq.<original subject>` |
//! | partition owners / live workers | KV [`OWNERS_BUCKET`], [`WORKERS_BUCKET`] | |
//! | definition versions | KV [`DEFINITIONS_BUCKET`] | keys `<saga_type>.<digest>`, `<saga_type>.latest` |
//! | consumers | `saga-p<N>` ([`partition_consumer`]), `svc-<service>` ([`service_consumer`]), `evt-<service>` on `SAGA_EVENTS` ([`event_consumer`]) | |
//!
//! The subject helpers only format. Tokens that are not valid subject tokens (empty, with
//! `.`, `*`, `>` or whitespace) are refused where the subject is used: the publisher and
//! the journal answer `PortError::Rejected`. Use [`check_token`] to validate input early.

use std::fmt;

/// Stream of saga inputs (starts, cancels, replies).
pub const INBOX_STREAM: &str = "SAGA_INBOX";
/// Subjects of [`INBOX_STREAM`] written by the gateway and operators (starts, cancels).
pub const INBOX_SUBJECTS: &str = "saga.in.>";
/// Subjects of [`INBOX_STREAM`] written by participants (step replies). Apart from
/// `saga.in.>` so that a participant may be allowed to reply without being allowed to
/// start or cancel sagas; the last token names the replying service, which the worker
/// checks against the step and NATS permissions pin to the participant's user.
pub const REPLY_SUBJECTS: &str = "saga.reply.>";
/// Stream of step commands.
pub const COMMANDS_STREAM: &str = "SAGA_COMMANDS";
/// Subjects of [`COMMANDS_STREAM`].
pub const COMMANDS_SUBJECTS: &str = "saga.cmd.>";
/// Stream of saga journals (the history of every saga).
pub const JOURNAL_STREAM: &str = "SAGA_JOURNAL";
/// Subjects of [`JOURNAL_STREAM`].
pub const JOURNAL_SUBJECTS: &str = "saga.journal.>";
/// Stream of domain events (choreography).
pub const EVENTS_STREAM: &str = "SAGA_EVENTS";
/// Subjects of [`EVENTS_STREAM`].
pub const EVENTS_SUBJECTS: &str = "events.>";
/// Stream of dead letters.
pub const DLQ_STREAM: &str = "SAGA_DLQ";
/// Subjects of [`DLQ_STREAM`].
pub const DLQ_SUBJECTS: &str = "dlq.>";
/// KV bucket of partition leases (`<partition>` -> owner, compare-and-set on revision).
pub const OWNERS_BUCKET: &str = "saga_owners";
/// KV bucket of live workers (`<worker>` -> heartbeat).
pub const WORKERS_BUCKET: &str = "saga_workers";
/// KV bucket of definition versions (`<type>.<digest>` -> YAML, `<type>.latest` ->
/// digest).
pub const DEFINITIONS_BUCKET: &str = "saga_definitions";

/// The per-partition index of open sagas.
pub const OPEN_STREAM: &str = "SAGA_OPEN";
/// Its subjects: `saga.open.<partition>.<saga_type>.<saga_id>`.
pub const OPEN_SUBJECTS: &str = "saga.open.>";

/// Every stream this crate provisions, in provisioning order.
pub const STREAMS: [&str; 6] = [
    INBOX_STREAM,
    COMMANDS_STREAM,
    JOURNAL_STREAM,
    EVENTS_STREAM,
    DLQ_STREAM,
    OPEN_STREAM,
];

/// `saga.open.<partition>.<saga_type>.<saga_id>`: a saga's entry in the open-saga index.
pub fn open_subject(partition: u32, saga_type: &str, saga_id: &str) -> String {
    format!("saga.open.{partition}.{saga_type}.{saga_id}")
}

/// `saga.in.<partition>.<saga_id>`: where a saga's inputs go.
pub fn inbox_subject(partition: u32, saga_id: &str) -> String {
    format!("saga.in.{partition}.{saga_id}")
}

/// `saga.in.<partition>.>`: the inputs (starts, cancels) of partition `partition`.
pub fn partition_filter(partition: u32) -> String {
    format!("saga.in.{partition}.>")
}

/// `saga.*.<partition>.>`: the filter of partition consumer `saga-p<partition>`. In
/// `SAGA_INBOX`, whose subjects are `saga.in.>` and `saga.reply.>`, it reads exactly the
/// partition's inputs ([`partition_filter`]) and replies ([`partition_reply_filter`]).
/// One filter, not two: JetStream moves a consumer whose filter lies inside a purged
/// subject past that subject's purged range, so a trim of one of two filters would
/// skip the other's messages (see `crate::trim`).
pub fn partition_consumer_filter(partition: u32) -> String {
    format!("saga.*.{partition}.>")
}

/// `saga.reply.<partition>.<saga_id>.<service>`: where `service` replies to a command of
/// saga `saga_id`.
pub fn reply_subject(partition: u32, saga_id: &str, service: &str) -> String {
    format!("saga.reply.{partition}.{saga_id}.{service}")
}

/// `saga.reply.<partition>.>`: the replies of partition `partition`.
pub fn partition_reply_filter(partition: u32) -> String {
    format!("saga.reply.{partition}.>")
}

/// `saga.reply.*.*.<service>`: the replies `service` may publish (its NATS permission).
pub fn service_reply_pattern(service: &str) -> String {
    format!("saga.reply.*.*.{service}")
}

/// `saga-p<partition>`: the durable consumer of one partition.
pub fn partition_consumer(partition: u32) -> String {
    format!("saga-p{partition}")
}

/// `saga.cmd.<service>.<action>`: a step command.
pub fn command_subject(service: &str, action: &str) -> String {
    format!("saga.cmd.{service}.{action}")
}

/// `saga.cmd.<service>.>`: the filter of service consumer `svc-<service>`.
pub fn service_filter(service: &str) -> String {
    format!("saga.cmd.{service}.>")
}

/// `svc-<service>`: the durable consumer shared by the instances of a participant service.
pub fn service_consumer(service: &str) -> String {
    format!("svc-{service}")
}

/// `evt-<service>`: the durable consumer of a choreography service on `SAGA_EVENTS`.
pub fn event_consumer(service: &str) -> String {
    format!("evt-{service}")
}

/// `saga.journal.<saga_type>.<saga_id>`: one saga's history.
pub fn journal_subject(saga_type: &str, saga_id: &str) -> String {
    format!("saga.journal.{saga_type}.{saga_id}")
}

/// `events.<domain>.<EventName>.<saga_id>`: a saga's domain event (one subject per
/// saga, so it is published create-only). Subscribe to `events.<domain>.<EventName>.*`.
pub fn event_subject(domain: &str, event_name: &str, saga_id: &str) -> String {
    format!("events.{domain}.{event_name}.{saga_id}")
}

/// `dlq.<original subject>`: the dead letter of a message first published on `subject`.
pub fn dlq_subject(original_subject: &str) -> String {
    format!("dlq.{original_subject}")
}

/// Why a string cannot be used where a subject (or one of its tokens) is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName {
    /// The offending value.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid subject token {:?}: {}", self.value, self.reason)
    }
}

impl std::error::Error for InvalidName {}

/// Checks that `token` can be one token of a subject: not empty, no `.`, no wildcard
/// (`*`, `>`), no whitespace or control character.
pub fn check_token(token: &str) -> Result<(), InvalidName> {
    let fail = |reason| {
        Err(InvalidName {
            value: token.to_owned(),
            reason,
        })
    };
    if token.is_empty() {
        return fail("it is empty");
    }
    if token.contains('.') {
        return fail("it contains '.'");
    }
    if token.contains(['*', '>']) {
        // A `*` inside a token is literal for delivery but a wildcard for some server
        // indexes (num_pending, subject reports): refuse it rather than be surprised.
        return fail("it contains a wildcard ('*' or '>')");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return fail("it contains whitespace or a control character");
    }
    Ok(())
}

/// Checks that `subject` is a literal subject one can publish to: dot-separated valid
/// tokens (see [`check_token`]).
pub fn check_subject(subject: &str) -> Result<(), InvalidName> {
    if subject.is_empty() {
        return Err(InvalidName {
            value: String::new(),
            reason: "the subject is empty",
        });
    }
    for token in subject.split('.') {
        check_token(token).map_err(|e| InvalidName {
            value: subject.to_owned(),
            reason: if token.is_empty() {
                "the subject has an empty token"
            } else {
                e.reason
            },
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_documented_layout() {
        assert_eq!(inbox_subject(3, "order-1"), "saga.in.3.order-1");
        assert_eq!(partition_filter(3), "saga.in.3.>");
        assert_eq!(partition_consumer_filter(3), "saga.*.3.>");
        assert_eq!(partition_consumer(3), "saga-p3");
        assert_eq!(
            command_subject("payments", "charge"),
            "saga.cmd.payments.charge"
        );
        assert_eq!(service_filter("payments"), "saga.cmd.payments.>");
        assert_eq!(service_consumer("payments"), "svc-payments");
        assert_eq!(
            journal_subject("order-checkout", "order-1"),
            "saga.journal.order-checkout.order-1"
        );
        assert_eq!(
            event_subject("orders", "OrderPlaced", "order-1"),
            "events.orders.OrderPlaced.order-1"
        );
        assert_eq!(
            open_subject(3, "OrderCheckout", "order-1"),
            "saga.open.3.OrderCheckout.order-1"
        );
        assert_eq!(
            dlq_subject("saga.cmd.payments.charge"),
            "dlq.saga.cmd.payments.charge"
        );
    }

    #[test]
    fn tokens_and_subjects_are_checked() {
        assert!(check_token("order-1_A:x").is_ok());
        for bad in ["", "a.b", "a*", ">", "a b", "a\r\n", "a\tb"] {
            assert!(check_token(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(check_subject("saga.in.0.order-1").is_ok());
        for bad in [
            "",
            "saga..in",
            "saga.in.",
            ".saga",
            "saga.in.*",
            "saga.in.>",
            "a b",
        ] {
            assert!(check_subject(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
