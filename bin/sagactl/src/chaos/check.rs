//! The invariants of a chaos run, as pure functions of what was observed: the client's
//! records, the gateway's sagas, SAGA_EVENTS, the participants' ledgers, the journals
//! of cancelled sagas and the processes that ended on their own.

use std::collections::{BTreeMap, BTreeSet};

use participants::LedgerEntry;
use saga_proto::{journal_input, JournalEvent, SagaState};
use tonic::Code;

use super::faults::UnexpectedExit;
use super::load::{Ack, OrderRecord};
use crate::render::{is_terminal, state_name};

/// Names of the invariants, in the order of the report (stable: tests and docs use them).
pub const ACKED_TERMINAL: &str = "every acknowledged order exists and is terminal";
pub const NONE_FAILED: &str = "no saga FAILED";
pub const ONE_SAGA_PER_KEY: &str = "one saga per idempotency key";
pub const LEDGERS_NET_OUT: &str = "participant ledgers net out";
pub const ONE_EVENT: &str = "exactly one domain event per terminal saga";
pub const CANCEL_HONOURED: &str = "an accepted cancel of a running saga is honoured";
pub const NONE_REFUSED: &str = "no order refused by the gateway";
pub const NO_CRASH: &str = "no process ended on its own";

pub const INVARIANTS: [&str; 8] = [
    ACKED_TERMINAL,
    NONE_FAILED,
    ONE_SAGA_PER_KEY,
    LEDGERS_NET_OUT,
    ONE_EVENT,
    CANCEL_HONOURED,
    NONE_REFUSED,
    NO_CRASH,
];

/// Subjects of the order saga's events: `events.orders.<EventName>` today,
/// `events.orders.<EventName>.<saga_id>` once events get per-saga subjects.
pub const CONFIRMED_SUBJECT: &str = "events.orders.OrderConfirmed";
pub const CANCELLED_SUBJECT: &str = "events.orders.OrderCancelled";

/// How many examples a failed invariant lists.
const EXAMPLES: usize = 5;

/// One message of SAGA_EVENTS.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSeen {
    pub subject: String,
    /// Its `Saga-Id` header.
    pub saga_id: Option<String>,
}

/// Where a saga's journal has the cancel that was sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelJournal {
    /// Journalled, and the saga never completed.
    Journalled,
    /// Journalled after the transition to COMPLETED (and ignored): it completed first.
    CompletedFirst,
    /// Journalled while the saga ran its step that cannot be undone (past the point of
    /// no return: the cancel is ignored and the step left to finish), then completed.
    PastPointOfNoReturn,
    /// Journalled while the saga still ran, yet it completed.
    CancelWhileRunning,
    /// Not in the journal at all: the cancel was lost.
    NoCancel,
}

/// Reads the journal of a saga a cancel was sent to.
pub fn cancel_journal(events: &[JournalEvent]) -> CancelJournal {
    let mut sorted: Vec<&JournalEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.version);
    let completed = sorted
        .iter()
        .find(|e| e.state == SagaState::Completed as i32)
        .map(|e| e.version);
    let cancel = sorted.iter().find(|e| {
        matches!(
            e.input.as_ref().and_then(|i| i.kind.as_ref()),
            Some(journal_input::Kind::Cancel(_))
        )
    });
    let past_no_return = cancel.is_some_and(|e| {
        e.events.iter().any(|t| {
            t.kind == saga_proto::TransitionEventKind::InputIgnored as i32
                && t.reason.contains("cannot be undone")
        })
    });
    match (completed, cancel.map(|e| e.version)) {
        (_, None) => CancelJournal::NoCancel,
        (None, Some(_)) => CancelJournal::Journalled,
        (Some(done), Some(c)) if c > done => CancelJournal::CompletedFirst,
        (Some(_), Some(_)) if past_no_return => CancelJournal::PastPointOfNoReturn,
        (Some(_), Some(_)) => CancelJournal::CancelWhileRunning,
    }
}

/// Everything the invariants are judged on.
#[derive(Debug, Default)]
pub struct Observed {
    pub orders: Vec<OrderRecord>,
    /// Every OrderCheckout saga the gateway knows, by id: its last state.
    pub sagas: BTreeMap<String, i32>,
    /// PlaceOrder sent again after the run for each acknowledged key: the saga id it
    /// answered, or why it did not.
    pub replays: BTreeMap<String, Result<String, String>>,
    /// Every message of SAGA_EVENTS.
    pub events: Vec<EventSeen>,
    /// Why SAGA_EVENTS could not be read (whole), if it could not.
    pub events_error: Option<String>,
    /// Each participant's ledger (or why it could not be read).
    pub ledgers: Vec<(String, Result<Vec<LedgerEntry>, String>)>,
    /// The events of the event-sourced orders: (type, causing saga).
    pub order_events: Vec<(String, String)>,
    /// Why they could not be read, if they could not.
    pub order_events_error: Option<String>,
    /// Where the journal of each saga cancelled while running has the cancel.
    pub cancel_journals: BTreeMap<String, Result<CancelJournal, String>>,
    pub exits: Vec<UnexpectedExit>,
}

/// One invariant's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub name: &'static str,
    /// What was counted, in a few words.
    pub count: String,
    pub pass: bool,
    /// Examples of what broke it (at most [`EXAMPLES`], then "... and N more").
    pub details: Vec<String>,
}

fn verdict(name: &'static str, count: String, problems: Vec<String>) -> Verdict {
    let mut details: Vec<String> = problems.iter().take(EXAMPLES).cloned().collect();
    if problems.len() > EXAMPLES {
        details.push(format!("... and {} more", problems.len() - EXAMPLES));
    }
    Verdict {
        name,
        count,
        pass: problems.is_empty(),
        details,
    }
}

/// Every invariant, in the order of [`INVARIANTS`].
pub fn evaluate(o: &Observed) -> Vec<Verdict> {
    let verdicts = vec![
        acked_terminal(o),
        none_failed(o),
        one_saga_per_key(o),
        ledgers_net_out(o),
        one_event(o),
        cancel_honoured(o),
        none_refused(o),
        no_crash(o),
    ];
    debug_assert!(verdicts.iter().map(|v| v.name).eq(INVARIANTS));
    verdicts
}

fn acked_terminal(o: &Observed) -> Verdict {
    let mut problems = Vec::new();
    let mut acked = 0;
    for r in &o.orders {
        let Some(id) = r.saga_id() else { continue };
        acked += 1;
        match o.sagas.get(id) {
            None => problems.push(format!(
                "order {} (saga {id}): unknown to the gateway",
                r.plan.index
            )),
            Some(s) if !is_terminal(*s) => problems.push(format!(
                "order {} (saga {id}): still {}",
                r.plan.index,
                state_name(*s)
            )),
            Some(_) => {}
        }
    }
    let count = format!("{}/{acked} terminal", acked - problems.len());
    verdict(ACKED_TERMINAL, count, problems)
}

fn none_failed(o: &Observed) -> Verdict {
    let problems: Vec<String> = o
        .sagas
        .iter()
        .filter(|(_, s)| **s == SagaState::Failed as i32)
        .map(|(id, _)| format!("saga {id} FAILED"))
        .collect();
    let count = format!("{} of {} sagas", problems.len(), o.sagas.len());
    verdict(NONE_FAILED, count, problems)
}

fn one_saga_per_key(o: &Observed) -> Verdict {
    let mut problems = Vec::new();
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    let (mut acked, mut never) = (0usize, 0usize);
    for r in &o.orders {
        let key = r.plan.idempotency_key.as_str();
        match &r.ack {
            Ack::Acked { saga_id, .. } => {
                acked += 1;
                if let Some(other) = owner.insert(saga_id, key) {
                    problems.push(format!(
                        "keys {other} and {key} both answered saga {saga_id}"
                    ));
                }
                match o.replays.get(key) {
                    Some(Ok(again)) if again != saga_id => problems.push(format!(
                        "key {key}: saga {saga_id}, then {again} when sent again"
                    )),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => problems.push(format!("key {key}: sent again, no answer: {e}")),
                    None => problems.push(format!("key {key}: not sent again")),
                }
            }
            Ack::NeverAcked { .. } => never += 1,
            Ack::Refused {
                code: Code::AlreadyExists,
                message,
            } => problems.push(format!("key {key}: a retry was refused: {message}")),
            Ack::Refused { .. } => {}
        }
    }
    // A key never acknowledged may have started one saga; no key may have started two.
    let unanswered: Vec<&String> = o
        .sagas
        .keys()
        .filter(|id| !owner.contains_key(id.as_str()))
        .collect();
    if unanswered.len() > never {
        problems.push(format!(
            "{} sagas no answer named, more than the {never} keys never acknowledged (e.g. {})",
            unanswered.len(),
            unanswered[0]
        ));
    }
    let same = o
        .orders
        .iter()
        .filter(|r| matches!((r.saga_id(), o.replays.get(&r.plan.idempotency_key)), (Some(a), Some(Ok(b))) if a == b))
        .count();
    let count = format!(
        "{} keys, {} sagas; {same}/{acked} same saga when sent again",
        o.orders.len(),
        o.sagas.len()
    );
    verdict(ONE_SAGA_PER_KEY, count, problems)
}

/// Effects of one saga in the ledgers.
#[derive(Debug, Default, Clone, Copy)]
struct Effects {
    reserve: i64,
    release: i64,
    charge: i64,
    refund: i64,
    confirm: i64,
}

fn ledgers_net_out(o: &Observed) -> Verdict {
    let mut problems = Vec::new();
    let mut per_saga: BTreeMap<&str, Effects> = BTreeMap::new();
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for (participant, ledger) in &o.ledgers {
        let entries = match ledger {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("ledger of {participant} unreadable: {e}"));
                continue;
            }
        };
        for e in entries {
            let fx = per_saga.entry(e.saga_id.as_str()).or_default();
            let slot = match e.kind.as_str() {
                "reserve" => &mut fx.reserve,
                "release" => &mut fx.release,
                "charge" => &mut fx.charge,
                "refund" => &mut fx.refund,
                "confirm" => &mut fx.confirm,
                other => {
                    problems.push(format!(
                        "{participant}: effect `{other}` of saga {}",
                        e.saga_id
                    ));
                    continue;
                }
            };
            *slot += 1;
            *totals.entry(e.kind.as_str()).or_default() += 1;
        }
    }
    // The orders participant's effect is its Order stream: one OrderConfirmed per
    // completed saga, none for the others, whatever its ledger says.
    let mut stream_confirms: BTreeMap<&str, i64> = BTreeMap::new();
    for (kind, saga) in &o.order_events {
        if kind == "OrderConfirmed" {
            *stream_confirms.entry(saga.as_str()).or_default() += 1;
        }
    }
    if let Some(e) = &o.order_events_error {
        problems.push(format!("the Order event streams unreadable: {e}"));
    }
    let mut unchecked = 0usize;
    let ids: BTreeSet<&str> = o
        .sagas
        .keys()
        .map(String::as_str)
        .chain(per_saga.keys().copied())
        .chain(stream_confirms.keys().copied())
        .collect();
    for id in ids {
        let fx = per_saga.get(id).copied().unwrap_or_default();
        let want = match o.sagas.get(id) {
            None => {
                problems.push(format!(
                    "saga {id}: effects in the ledgers, unknown to the gateway"
                ));
                continue;
            }
            Some(s) if !is_terminal(*s) => {
                unchecked += 1;
                continue;
            }
            Some(s) => i64::from(*s == SagaState::Completed as i32),
        };
        let doubled = [fx.reserve, fx.release, fx.charge, fx.refund, fx.confirm]
            .iter()
            .any(|n| *n > 1);
        let net = (fx.reserve - fx.release, fx.charge - fx.refund, fx.confirm);
        let in_stream = stream_confirms.get(id).copied().unwrap_or(0);
        if o.order_events_error.is_none() && in_stream != want {
            problems.push(format!(
                "saga {id} ({}): {in_stream} OrderConfirmed in its Order stream",
                state_name(o.sagas[id])
            ));
        }
        if doubled || net != (want, want, want) {
            problems.push(format!(
                "saga {id} ({}): reserve {} release {} charge {} refund {} confirm {}",
                state_name(o.sagas[id]),
                fx.reserve,
                fx.release,
                fx.charge,
                fx.refund,
                fx.confirm
            ));
        }
    }
    let mut count = totals
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    if count.is_empty() {
        count = "no effects".into();
    }
    let in_streams: i64 = stream_confirms.values().sum();
    count.push_str(&format!(
        "; OrderConfirmed in the Order streams {in_streams}"
    ));
    if unchecked > 0 {
        count.push_str(&format!("; {unchecked} sagas not terminal, not checked"));
    }
    verdict(LEDGERS_NET_OUT, count, problems)
}

fn one_event(o: &Observed) -> Verdict {
    let mut problems = Vec::new();
    if let Some(e) = &o.events_error {
        problems.push(format!("SAGA_EVENTS not read whole: {e}"));
    }
    let mut per_saga: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    let (mut confirmed, mut cancelled) = (0u32, 0u32);
    for e in &o.events {
        let is_confirmed = e.subject.starts_with(CONFIRMED_SUBJECT);
        let is_cancelled = e.subject.starts_with(CANCELLED_SUBJECT);
        if !is_confirmed && !is_cancelled {
            continue;
        }
        let Some(id) = e.saga_id.as_deref() else {
            problems.push(format!("an event on {} has no Saga-Id header", e.subject));
            continue;
        };
        let c = per_saga.entry(id).or_default();
        if is_confirmed {
            c.0 += 1;
            confirmed += 1;
        } else {
            c.1 += 1;
            cancelled += 1;
        }
    }
    let mut terminal = 0usize;
    for (id, state) in &o.sagas {
        let (conf, canc) = per_saga.get(id.as_str()).copied().unwrap_or_default();
        let want = match SagaState::try_from(*state) {
            Ok(SagaState::Completed) => (1, 0),
            Ok(SagaState::Compensated) => (0, 1),
            _ => (0, 0),
        };
        if is_terminal(*state) {
            terminal += 1;
        }
        if (conf, canc) != want {
            problems.push(format!(
                "saga {id} ({}): {conf} OrderConfirmed, {canc} OrderCancelled",
                state_name(*state)
            ));
        }
    }
    for id in per_saga.keys() {
        if !o.sagas.contains_key(*id) {
            problems.push(format!("events of saga {id}, unknown to the gateway"));
        }
    }
    let count = format!(
        "{terminal} terminal sagas; {confirmed} OrderConfirmed, {cancelled} OrderCancelled"
    );
    verdict(ONE_EVENT, count, problems)
}

/// A cancel that answered OK on a PENDING or RUNNING saga: the saga COMPENSATED, or
/// COMPLETED before the cancel reached it (its journal has the cancel after the
/// completion, or the cancel reached it while it ran its step that cannot be undone,
/// which is left to finish). A compensated saga whose journal lacks the cancel compensated for
/// another reason: it counts as honoured, and the count says how many lost their cancel.
fn cancel_honoured(o: &Observed) -> Verdict {
    let mut problems = Vec::new();
    let (mut sent, mut accepted, mut compensated, mut first, mut lost) = (0, 0, 0, 0, 0);
    for r in &o.orders {
        let (Some(c), Some(id)) = (&r.cancel, r.saga_id()) else {
            continue;
        };
        sent += 1;
        if !c.on_running_saga() {
            continue;
        }
        accepted += 1;
        let journal = o.cancel_journals.get(id);
        let said = match journal {
            Some(Ok(CancelJournal::NoCancel)) => "its cancel is not in its journal".to_string(),
            Some(Ok(CancelJournal::CancelWhileRunning)) => {
                "its journal has the cancel before the completion".to_string()
            }
            Some(Ok(_)) => "its journal has the cancel".to_string(),
            Some(Err(e)) => format!("its journal: {e}"),
            None => "its journal was not read".to_string(),
        };
        let end = o.sagas.get(id).copied();
        match end.map(SagaState::try_from) {
            Some(Ok(SagaState::Compensated)) => {
                compensated += 1;
                lost += u32::from(matches!(journal, Some(Ok(CancelJournal::NoCancel))));
            }
            Some(Ok(SagaState::Completed))
                if matches!(
                    journal,
                    Some(Ok(
                        CancelJournal::CompletedFirst | CancelJournal::PastPointOfNoReturn
                    ))
                ) =>
            {
                first += 1
            }
            Some(_) => problems.push(format!(
                "saga {id}: {} after its cancel; {said}",
                state_name(end.unwrap_or_default())
            )),
            None => problems.push(format!("saga {id}: unknown to the gateway")),
        }
    }
    let mut count = format!(
        "{sent} cancels, {accepted} on running sagas: {compensated} compensated, {first} completed first (or past the point of no return)"
    );
    if lost > 0 {
        count.push_str(&format!(
            "; {lost} compensated without their cancel in the journal"
        ));
    }
    verdict(CANCEL_HONOURED, count, problems)
}

fn none_refused(o: &Observed) -> Verdict {
    let problems: Vec<String> = o
        .orders
        .iter()
        .filter_map(|r| match &r.ack {
            Ack::Refused { code, message } => Some(format!(
                "order {} (key {}): {}: {message}",
                r.plan.index,
                r.plan.idempotency_key,
                crate::client::code_name(*code)
            )),
            _ => None,
        })
        .collect();
    let count = format!("{} of {} orders", problems.len(), o.orders.len());
    verdict(NONE_REFUSED, count, problems)
}

/// Exits of processes whose life met a `kill-nats` outage (or the moments after it) are
/// listed, not counted: the processes exit when they cannot reach NATS at start, and a
/// supervisor (here: the suite) restarts them.
fn no_crash(o: &Observed) -> Verdict {
    let problems: Vec<String> = o
        .exits
        .iter()
        .filter(|e| !e.during_nats_outage)
        .map(|e| format!("{} at {:.1} s: {}", e.name, e.at.as_secs_f64(), e.status))
        .collect();
    let by_name = |outage: bool| {
        let mut by: BTreeMap<&str, u32> = BTreeMap::new();
        for e in o.exits.iter().filter(|e| e.during_nats_outage == outage) {
            *by.entry(e.name.as_str()).or_default() += 1;
        }
        by.iter()
            .map(|(n, c)| format!("{n} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut count = problems.len().to_string();
    let (counted, excused) = (by_name(false), by_name(true));
    if !counted.is_empty() {
        count.push_str(&format!(" ({counted})"));
    }
    if !excused.is_empty() {
        count.push_str(&format!(
            "; around nats-server outages, not counted: {excused}"
        ));
    }
    verdict(NO_CRASH, count, problems)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use saga_proto::{CancelSaga, JournalInput, StartSaga};

    use super::super::load::CancelOutcome;
    use super::super::plan::OrderPlan;
    use super::*;

    const COMPLETED: i32 = SagaState::Completed as i32;
    const COMPENSATED: i32 = SagaState::Compensated as i32;
    const RUNNING: i32 = SagaState::Running as i32;

    fn order(i: u64, ack: Ack, cancel: Option<CancelOutcome>) -> OrderRecord {
        OrderRecord {
            plan: OrderPlan {
                index: i,
                idempotency_key: format!("k{i}"),
                customer_id: format!("c{i}"),
                items: Vec::new(),
                declined: false,
                cancel: cancel.is_some(),
            },
            attempts: 1,
            ack,
            cancel,
        }
    }

    fn acked(id: &str) -> Ack {
        Ack::Acked {
            saga_id: id.into(),
            order_id: format!("order-{id}"),
            at: Duration::ZERO,
        }
    }

    fn entry(kind: &str, saga: &str) -> LedgerEntry {
        LedgerEntry {
            kind: kind.into(),
            key: format!("{saga}/x"),
            saga_id: saga.into(),
            action: String::new(),
            at: 0,
            detail: serde_json::Value::Null,
        }
    }

    fn event(subject: &str, saga: &str) -> EventSeen {
        EventSeen {
            subject: subject.into(),
            saga_id: Some(saga.into()),
        }
    }

    /// Two orders: s1 completed, s2 compensated after a decline; all consistent.
    fn clean() -> Observed {
        Observed {
            orders: vec![order(0, acked("s1"), None), order(1, acked("s2"), None)],
            sagas: BTreeMap::from([("s1".into(), COMPLETED), ("s2".into(), COMPENSATED)]),
            replays: BTreeMap::from([
                ("k0".into(), Ok("s1".into())),
                ("k1".into(), Ok("s2".into())),
            ]),
            events: vec![
                event("events.orders.OrderConfirmed", "s1"),
                event("events.orders.OrderCancelled.s2", "s2"),
            ],
            ledgers: vec![
                (
                    "inventory".into(),
                    Ok(vec![
                        entry("reserve", "s1"),
                        entry("reserve", "s2"),
                        entry("release", "s2"),
                    ]),
                ),
                ("payment".into(), Ok(vec![entry("charge", "s1")])),
                ("orders".into(), Ok(vec![entry("confirm", "s1")])),
            ],
            order_events: vec![
                ("OrderCreated".into(), "s1".into()),
                ("OrderConfirmed".into(), "s1".into()),
            ],
            order_events_error: None,
            cancel_journals: BTreeMap::new(),
            exits: Vec::new(),
            events_error: None,
        }
    }

    fn failed(o: &Observed) -> Vec<&'static str> {
        evaluate(o)
            .iter()
            .filter(|v| !v.pass)
            .map(|v| v.name)
            .collect()
    }

    #[test]
    fn a_consistent_run_passes_every_invariant_in_order() {
        let v = evaluate(&clean());
        assert_eq!(v.iter().map(|v| v.name).collect::<Vec<_>>(), INVARIANTS);
        assert!(v.iter().all(|v| v.pass), "{v:#?}");
        assert_eq!(
            v[4].count,
            "2 terminal sagas; 1 OrderConfirmed, 1 OrderCancelled"
        );
    }

    #[test]
    fn each_breach_fails_its_own_invariant() {
        let mut o = clean();
        o.sagas.insert("s1".into(), RUNNING);
        o.events.remove(0);
        o.ledgers[2].1 = Ok(Vec::new());
        o.ledgers[1].1 = Ok(Vec::new());
        o.ledgers[0].1 = Ok(vec![entry("reserve", "s2"), entry("release", "s2")]);
        assert_eq!(failed(&o), [ACKED_TERMINAL]);

        let mut o = clean();
        o.events.push(event("events.orders.OrderConfirmed", "s1"));
        assert_eq!(failed(&o), [ONE_EVENT]);

        // The Order stream of a completed saga confirmed twice, or a compensated
        // saga's order confirmed: the orders participant's effect broke.
        let mut o = clean();
        o.order_events.push(("OrderConfirmed".into(), "s1".into()));
        assert_eq!(failed(&o), [LEDGERS_NET_OUT]);
        let mut o = clean();
        o.order_events.push(("OrderConfirmed".into(), "s2".into()));
        assert_eq!(failed(&o), [LEDGERS_NET_OUT]);
        let mut o = clean();
        o.order_events_error = Some("no stream".into());
        assert_eq!(failed(&o), [LEDGERS_NET_OUT]);

        let mut o = clean();
        o.events[1].saga_id = None;
        assert_eq!(failed(&o), [ONE_EVENT]);

        let mut o = clean();
        o.ledgers[1].1 = Ok(vec![entry("charge", "s1"), entry("charge", "s2")]);
        assert_eq!(failed(&o), [LEDGERS_NET_OUT]);

        let mut o = clean();
        o.replays.insert("k1".into(), Ok("s9".into()));
        assert_eq!(failed(&o), [ONE_SAGA_PER_KEY]);

        // A third saga no answer named, while every key was acknowledged.
        let mut o = clean();
        o.sagas.insert("s3".into(), COMPENSATED);
        o.events.push(event("events.orders.OrderCancelled", "s3"));
        assert_eq!(failed(&o), [ONE_SAGA_PER_KEY]);
        // ... is fine when a key was never acknowledged.
        o.orders.push(order(
            2,
            Ack::NeverAcked {
                last_error: "x".into(),
            },
            None,
        ));
        assert!(failed(&o).is_empty());

        let mut o = clean();
        o.sagas.insert("s2".into(), SagaState::Failed as i32);
        o.events.remove(1);
        o.ledgers[0].1 = Ok(vec![
            entry("reserve", "s1"),
            entry("reserve", "s2"),
            entry("release", "s2"),
        ]);
        assert_eq!(failed(&o), [NONE_FAILED]);

        let mut o = clean();
        o.orders.push(order(
            2,
            Ack::Refused {
                code: Code::InvalidArgument,
                message: "bad".into(),
            },
            None,
        ));
        assert_eq!(failed(&o), [NONE_REFUSED]);

        let mut o = clean();
        let exit = |during_nats_outage| UnexpectedExit {
            name: "payment".into(),
            status: "exit status: 1".into(),
            at: Duration::from_secs(3),
            log_tail: String::new(),
            during_nats_outage,
        };
        o.exits.push(exit(true));
        assert!(failed(&o).is_empty());
        assert_eq!(
            evaluate(&o)[7].count,
            "0; around nats-server outages, not counted: payment 1"
        );
        o.exits.push(exit(false));
        assert_eq!(failed(&o), [NO_CRASH]);
    }

    #[test]
    fn a_cancel_on_a_running_saga_must_compensate_unless_it_completed_first() {
        let cancel = |answered: i32| {
            Some(CancelOutcome {
                state_before: Some(RUNNING),
                answered: Ok(answered),
            })
        };
        let mut o = clean();
        o.orders[0].cancel = cancel(RUNNING);
        assert_eq!(failed(&o), [CANCEL_HONOURED]);
        o.cancel_journals
            .insert("s1".into(), Ok(CancelJournal::CompletedFirst));
        assert!(failed(&o).is_empty());
        o.cancel_journals
            .insert("s1".into(), Ok(CancelJournal::NoCancel));
        assert_eq!(failed(&o), [CANCEL_HONOURED]);
        // Taken while already COMPLETED: nothing to honour.
        o.orders[0].cancel = cancel(COMPLETED);
        assert!(failed(&o).is_empty());
        // Compensated: honoured; without the cancel in its journal, it says so.
        o.orders[1].cancel = cancel(SagaState::Pending as i32);
        o.cancel_journals
            .insert("s2".into(), Ok(CancelJournal::Journalled));
        assert!(failed(&o).is_empty());
        assert_eq!(
            evaluate(&o)[5].count,
            "2 cancels, 1 on running sagas: 1 compensated, 0 completed first (or past the point of no return)"
        );
        o.cancel_journals
            .insert("s2".into(), Ok(CancelJournal::NoCancel));
        assert!(failed(&o).is_empty());
        assert_eq!(
            evaluate(&o)[5].count,
            "2 cancels, 1 on running sagas: 1 compensated, 0 completed first (or past the point \
             of no return); 1 compensated without their cancel in the journal"
        );
        // FAILED after a cancel: broken, whatever the journal says.
        o.sagas.insert("s2".into(), SagaState::Failed as i32);
        assert!(failed(&o).contains(&CANCEL_HONOURED));
    }

    #[test]
    fn the_journal_tells_whether_a_saga_completed_before_its_cancel() {
        let ev = |version: u64, input: Option<journal_input::Kind>, state: i32| JournalEvent {
            version,
            input: input.map(|k| JournalInput { kind: Some(k) }),
            state,
            ..Default::default()
        };
        let start = || Some(journal_input::Kind::Start(StartSaga::default()));
        let cancel = || Some(journal_input::Kind::Cancel(CancelSaga::default()));
        let first = [
            ev(1, start(), RUNNING),
            ev(2, None, COMPLETED),
            ev(3, cancel(), COMPLETED),
        ];
        assert_eq!(cancel_journal(&first), CancelJournal::CompletedFirst);
        let while_running = [
            ev(2, cancel(), RUNNING),
            ev(1, start(), RUNNING),
            ev(3, None, COMPLETED),
        ];
        assert_eq!(
            cancel_journal(&while_running),
            CancelJournal::CancelWhileRunning
        );
        assert_eq!(
            cancel_journal(&[ev(1, start(), RUNNING), ev(2, None, COMPLETED)]),
            CancelJournal::NoCancel
        );
        assert_eq!(
            cancel_journal(&[ev(1, start(), RUNNING)]),
            CancelJournal::NoCancel
        );
        assert_eq!(
            cancel_journal(&[ev(1, start(), RUNNING), ev(2, cancel(), COMPENSATED)]),
            CancelJournal::Journalled
        );
    }
}
