//! What a participant reports to Prometheus, through the `metrics` facade (the binary
//! installs the exporter; without one every call is a no-op). Labels: `service`,
//! `action`, `outcome` — bounded sets, never a saga id or a key.

use std::sync::Once;

use metrics::{counter, describe_counter};

/// Commands executed (effect and inbox record committed, or a technical failure
/// answered), by `service`, `action` and `outcome` (ok, business_failure,
/// technical_failure).
pub const HANDLED: &str = "saga_participant_commands_total";
/// Commands answered from the inbox with the recorded reply (no second effect).
pub const DUPLICATES: &str = "saga_participant_duplicates_total";
/// Commands moved to the dead-letter stream, by `service`.
pub const DEAD_LETTERED: &str = "saga_participant_dead_lettered_total";

fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        describe_counter!(
            HANDLED,
            "Commands a participant executed, by service, action and outcome (ok, business_failure, technical_failure)."
        );
        describe_counter!(
            DUPLICATES,
            "Duplicate commands answered from the participant's inbox with the recorded reply (no second effect)."
        );
        describe_counter!(
            DEAD_LETTERED,
            "Commands a participant moved to the dead-letter stream SAGA_DLQ, by service."
        );
    });
}

pub(crate) fn handled(service: &str, action: &str, outcome: &'static str) {
    describe();
    counter!(HANDLED, "service" => service.to_string(), "action" => action.to_string(), "outcome" => outcome)
        .increment(1);
}

pub(crate) fn duplicate(service: &str, action: &str) {
    describe();
    counter!(DUPLICATES, "service" => service.to_string(), "action" => action.to_string())
        .increment(1);
}

/// `subject` is the command's, `saga.cmd.<service>.<action>`; the service is read from
/// it (an undecodable command has no other).
pub(crate) fn dead_lettered(subject: &str) {
    describe();
    let service = subject
        .strip_prefix("saga.cmd.")
        .and_then(|rest| rest.split('.').next())
        .unwrap_or("unknown");
    counter!(DEAD_LETTERED, "service" => service.to_string()).increment(1);
}
