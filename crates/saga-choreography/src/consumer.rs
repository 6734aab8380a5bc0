//! The consumer loop: fetch domain events, hold them per key (one at a time per key, in
//! stream order; keys in parallel), run each through the ledger's transaction, publish
//! what the handler asked for, then ack. Technical failures climb the retry ladder
//! while the key waits; at its top the event goes to the DLQ with its story.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use saga_core::catalog::EventCatalog;
use saga_core::{Clock, SystemClock};
use saga_ports::{dead_letter_message, header, Consumer, Delivery, OutgoingMessage, Publisher};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn, Instrument};

use crate::handler::{Event, EventHandler};
use crate::schema::EventCodec;
use crate::store::{ApplyError, ConsumerStore, Failure, Outcome, Run};
use crate::ChoreographyError;
use saga_core::ladder::{NextStep, RetryLadder};

use saga_ports::header::{DLQ_ERRORS, REDRIVE_CONSUMER};

/// Tuning of a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How long a handled event is recognised as a duplicate (default 24 h).
    pub dedupe_window: Duration,
    /// How often dedupe records past the window are pruned (default 10 min).
    pub prune_interval: Duration,
    /// Waits between attempts of a technical failure (default 1m, 5m, 30m).
    pub ladder: RetryLadder,
    /// Events per fetch (default 64).
    pub batch_size: usize,
    /// How long an idle fetch waits (default 1 s).
    pub fetch_wait: Duration,
    /// Events held (queued or running) at most (default 256); keep the JetStream
    /// consumer's `max_ack_pending` above it.
    pub max_in_flight: usize,
    /// How often held events are reported in progress; below the consumer's ack wait
    /// (default 10 s, for an ack wait of 30 s).
    pub heartbeat: Duration,
    /// Nak delay when publishing (the handler's messages, a dead letter) or flushing
    /// failed (default 2 s).
    pub publish_retry_delay: Duration,
    /// How long an event whose "must precede" predecessor has not been seen is tried
    /// again (every `reorder_retry`) before it is parked (default 2 min: more than the
    /// consumer's ack wait, after which a crashed consumer's unacked events come back,
    /// later than newer ones).
    pub reorder_grace: Duration,
    /// How often such an event is tried again (default 1 s).
    pub reorder_retry: Duration,
    /// Fault knob: exit right after this many effects are committed, before their ack.
    pub crash_after_effect: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            dedupe_window: Duration::from_secs(24 * 3600),
            prune_interval: Duration::from_secs(600),
            ladder: RetryLadder::default(),
            batch_size: 64,
            fetch_wait: Duration::from_secs(1),
            max_in_flight: 256,
            heartbeat: Duration::from_secs(10),
            publish_retry_delay: Duration::from_secs(2),
            reorder_grace: Duration::from_secs(120),
            reorder_retry: Duration::from_secs(1),
            crash_after_effect: None,
        }
    }
}

/// Called when the crash knob fires, with the event name. The default exits with 137
/// (as a SIGKILL would); the ledger was flushed just before.
pub type CrashHook = Arc<dyn Fn(&str) + Send + Sync>;

/// A consuming service: its catalog, handler, ledger and where it publishes.
pub struct EventConsumer {
    service: String,
    catalog: Arc<EventCatalog>,
    codec: EventCodec,
    store: ConsumerStore,
    handler: Arc<dyn EventHandler>,
    publisher: Arc<dyn Publisher>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    crash_hook: Option<CrashHook>,
    handled: BTreeSet<String>,
    tracked: BTreeSet<String>,
    key_field: String,
}

impl std::fmt::Debug for EventConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventConsumer")
            .field("service", &self.service)
            .field("handled", &self.handled)
            .field("tracked", &self.tracked)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl EventConsumer {
    /// The consumer of `service`: it handles the events the catalog lists it as a
    /// consumer of, and tracks those the catalog's rules about them name.
    pub fn new(
        service: impl Into<String>,
        catalog: Arc<EventCatalog>,
        codec: EventCodec,
        store: ConsumerStore,
        handler: Arc<dyn EventHandler>,
        publisher: Arc<dyn Publisher>,
    ) -> Result<Self, ChoreographyError> {
        let service = service.into();
        if !catalog.services.contains_key(&service) {
            return Err(ChoreographyError::Config(format!(
                "service `{service}` is not declared in the event catalog"
            )));
        }
        let consumed = catalog.consumed_by(&service);
        if consumed.is_empty() {
            return Err(ChoreographyError::Config(format!(
                "the event catalog lists no event consumed by `{service}`"
            )));
        }
        let handled: BTreeSet<String> = consumed.iter().map(|e| e.name.clone()).collect();
        let names: Vec<&str> = handled.iter().map(String::as_str).collect();
        let tracked = catalog.tracked_for(&names);
        let keys: BTreeSet<&str> = tracked
            .iter()
            .filter_map(|n| catalog.event(n))
            .map(|e| e.idempotency_key.as_str())
            .collect();
        let key_field = match keys.into_iter().collect::<Vec<_>>().as_slice() {
            [one] => (*one).to_string(),
            many => {
                return Err(ChoreographyError::Config(format!(
                    "the events `{service}` sees are keyed by different fields ({}): \
                     per-key order needs one",
                    many.join(", ")
                )))
            }
        };
        Ok(Self {
            service,
            catalog,
            codec,
            store,
            handler,
            publisher,
            clock: Arc::new(SystemClock),
            settings: Settings::default(),
            crash_hook: None,
            handled,
            tracked,
            key_field,
        })
    }

    /// Tuning.
    pub fn with_settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// The clock of the dedupe window and the ladder (default: the system clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// What the crash knob does (tests stop the consumer instead of the process).
    pub fn with_crash_hook(mut self, hook: CrashHook) -> Self {
        self.crash_hook = Some(hook);
        self
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The ledger.
    pub fn store(&self) -> &ConsumerStore {
        &self.store
    }

    /// The events it receives (handled and tracked), for the consumer's filters:
    /// `events.<domain>.<EventName>.*` each.
    pub fn filter_subjects(&self) -> Vec<String> {
        self.tracked
            .iter()
            .map(|n| format!("events.{}.{n}.*", self.catalog.domain))
            .collect()
    }

    /// Consumes until `shutdown` resolves; then stops fetching, lets the events being
    /// handled finish (an event waiting on the ladder is left to redelivery: its
    /// failures are in the ledger), and flushes.
    pub async fn run(
        self,
        mut consumer: impl Consumer,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ChoreographyError> {
        let trees = self.store.handler_trees(self.handler.as_ref())?;
        let sh = Arc::new(Shared {
            service: self.service.clone(),
            catalog: self.catalog,
            store: self.store,
            handler: self.handler,
            publisher: self.publisher,
            clock: self.clock,
            crash_hook: self.crash_hook.unwrap_or_else(|| Arc::new(exit_process)),
            handled: self.handled,
            key_field: self.key_field,
            trees,
            settings: self.settings,
            early: std::sync::Mutex::new(HashMap::new()),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let prune_task = tokio::spawn(prune(sh.clone(), stop_rx.clone()));
        let mut queues: HashMap<String, VecDeque<(Delivery, Event)>> = HashMap::new();
        let mut busy: HashSet<String> = HashSet::new();
        let mut held: HashSet<u64> = HashSet::new();
        let mut tasks: JoinSet<(Option<String>, u64)> = JoinSet::new();
        let mut last_beat = tokio::time::Instant::now();
        let mut fetch_failures = 0u32;
        tokio::pin!(shutdown);
        info!(service = %sh.service, events = ?self.tracked, ladder = %sh.settings.ladder, "consuming events");
        loop {
            while let Some(done) = tasks.try_join_next() {
                settle_task(done, &mut busy, &mut held);
            }
            let ready: Vec<String> = queues
                .iter()
                .filter(|(k, q)| !q.is_empty() && !busy.contains(*k))
                .map(|(k, _)| k.clone())
                .collect();
            for key in ready {
                if let Some((d, ev)) = queues.get_mut(&key).and_then(VecDeque::pop_front) {
                    busy.insert(key.clone());
                    let (sh, stop) = (sh.clone(), stop_rx.clone());
                    let span = tracing::info_span!(
                        "event",
                        event = %ev.name,
                        key = %ev.key,
                        correlation_id = ev.correlation_id.as_deref().unwrap_or(""),
                        sequence = ev.stream_sequence,
                    );
                    tasks.spawn(
                        async move {
                            let seq = ev.stream_sequence;
                            let key = ev.key.clone();
                            handle(&sh, d, ev, stop).await;
                            (Some(key), seq)
                        }
                        .instrument(span),
                    );
                }
            }
            queues.retain(|_, q| !q.is_empty());
            if last_beat.elapsed() >= sh.settings.heartbeat {
                last_beat = tokio::time::Instant::now();
                for (d, _) in queues.values().flatten() {
                    if let Err(e) = d.acker.in_progress().await {
                        debug!(error = %e, "in-progress report failed");
                    }
                }
            }
            let room = sh.settings.max_in_flight.max(1).saturating_sub(held.len());
            if room == 0 {
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    Some(done) = tasks.join_next() => settle_task(done, &mut busy, &mut held),
                    () = tokio::time::sleep(sh.settings.heartbeat) => {}
                }
                continue;
            }
            let wait = if held.is_empty() {
                sh.settings.fetch_wait
            } else {
                sh.settings.fetch_wait.min(Duration::from_millis(100))
            };
            let fetched = tokio::select! {
                biased;
                () = &mut shutdown => break,
                f = consumer.fetch(sh.settings.batch_size.clamp(1, room), wait) => f,
            };
            let deliveries = match fetched {
                Ok(d) => {
                    fetch_failures = 0;
                    d
                }
                Err(e) => {
                    fetch_failures = fetch_failures.saturating_add(1);
                    let delay = Duration::from_millis(100 * u64::from(fetch_failures.min(50)));
                    warn!(error = %e, ?delay, "fetching events failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            for d in deliveries {
                if held.contains(&d.stream_sequence) {
                    // A redelivery of an event still queued or running here.
                    continue;
                }
                match classify(&sh, &self.tracked, &self.codec, &d) {
                    Classified::Skip(why) => {
                        debug!(subject = %d.subject, why, "not for this consumer: acked");
                        ack(&d).await;
                    }
                    Classified::Refuse(reason) => {
                        held.insert(d.stream_sequence);
                        let sh = sh.clone();
                        tasks.spawn(async move {
                            let seq = d.stream_sequence;
                            dead_letter(&sh, d, &reason, &[], false).await;
                            (None, seq)
                        });
                    }
                    Classified::Event(ev) => {
                        held.insert(d.stream_sequence);
                        queues.entry(ev.key.clone()).or_default().push_back((d, ev));
                    }
                }
            }
        }
        let _ = stop_tx.send(true);
        while let Some(done) = tasks.join_next().await {
            settle_task(done, &mut busy, &mut held);
        }
        let _ = prune_task.await;
        sh.store.flush().await?;
        info!(service = %sh.service, "consumer stopped");
        Ok(())
    }
}

fn exit_process(event: &str) {
    error!(
        event,
        "crash-after-effect: exiting with 137 after the effect, before the ack"
    );
    std::process::exit(137);
}

struct Shared {
    service: String,
    catalog: Arc<EventCatalog>,
    store: ConsumerStore,
    handler: Arc<dyn EventHandler>,
    publisher: Arc<dyn Publisher>,
    clock: Arc<dyn Clock>,
    crash_hook: CrashHook,
    handled: BTreeSet<String>,
    key_field: String,
    trees: (Vec<sled::Tree>, Vec<String>),
    settings: Settings,
    /// Events waiting for a predecessor: stream sequence -> first seen early.
    early: std::sync::Mutex<HashMap<u64, tokio::time::Instant>>,
}

impl Shared {
    /// Whether the event at `seq` has waited out the reorder grace.
    fn grace_over(&self, seq: u64) -> bool {
        let early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        early
            .get(&seq)
            .is_some_and(|first| first.elapsed() >= self.settings.reorder_grace)
    }

    fn waiting(&self, seq: u64, done: bool) {
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        if done {
            early.remove(&seq);
        } else {
            early.entry(seq).or_insert_with(tokio::time::Instant::now);
        }
    }
}

enum Classified {
    Skip(&'static str),
    Refuse(String),
    Event(Event),
}

fn classify(
    sh: &Shared,
    tracked: &BTreeSet<String>,
    codec: &EventCodec,
    d: &Delivery,
) -> Classified {
    let name = d.subject.split('.').nth(2).unwrap_or_default();
    if !tracked.contains(name) {
        return Classified::Skip("an event it does not see");
    }
    if let Some(target) = d.headers.get(REDRIVE_CONSUMER) {
        if *target != d.consumer && *target != sh.service {
            return Classified::Skip("redriven for another consumer");
        }
    }
    match codec.decode(name, &d.payload) {
        Ok(dec) => Classified::Event(Event {
            name: name.to_string(),
            key: dec.key,
            correlation_id: dec
                .correlation_id
                .or_else(|| d.headers.get(header::SAGA_ID).cloned()),
            subject: d.subject.clone(),
            stream_sequence: d.stream_sequence,
            headers: d.headers.clone(),
            payload: d.payload.clone(),
        }),
        Err(e) => Classified::Refuse(format!("schema: {e}")),
    }
}

fn settle_task(
    done: Result<(Option<String>, u64), tokio::task::JoinError>,
    busy: &mut HashSet<String>,
    held: &mut HashSet<u64>,
) {
    match done {
        Ok((key, seq)) => {
            if let Some(k) = key {
                busy.remove(&k);
            }
            held.remove(&seq);
        }
        // A panicking handler: its key stays busy, its event unsettled (redelivered to
        // the next process); the loop goes on with the other keys.
        Err(e) => error!(error = %e, "event task failed"),
    }
}

/// One event, from the ladder's wait to its settlement. Every path settles the delivery
/// or leaves it to redelivery on purpose (a crash, a stop while waiting).
async fn handle(sh: &Shared, d: Delivery, ev: Event, mut stop: watch::Receiver<bool>) {
    let seq = ev.stream_sequence;
    loop {
        let failures = match sh.store.failures(seq) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "reading the ladder failed");
                return nak(&d, sh.settings.publish_retry_delay).await;
            }
        };
        if let Some(last) = failures.last() {
            match sh.settings.ladder.next(failures.len(), last.at) {
                NextStep::DeadLetter => {
                    let reason = format!(
                        "gave up after {} attempts (ladder {}): {}",
                        failures.len(),
                        sh.settings.ladder,
                        last.error
                    );
                    return dead_letter(sh, d, &reason, &failures, true).await;
                }
                NextStep::RetryAt { at, .. } => {
                    if !wait_until(sh, &d, at, &mut stop).await {
                        return; // stopping: redelivered later, the ladder goes on there
                    }
                }
            }
        }
        let run = Run {
            catalog: &sh.catalog,
            handler: sh.handler.as_ref(),
            event: &ev,
            handled: sh.handled.contains(&ev.name),
            key_field: &sh.key_field,
            now: sh.clock.now(),
            window: sh.settings.dedupe_window,
            crash_times: sh.settings.crash_after_effect,
            park_early: sh.grace_over(seq),
        };
        let outcome = sh.store.apply(&sh.trees, &run);
        sh.waiting(seq, !matches!(outcome, Ok(Outcome::Early(_))));
        match outcome {
            Ok(Outcome::Early(v)) => {
                info!(reason = %v.reason, retry_in = ?sh.settings.reorder_retry, "event early: waiting for its predecessor");
                return nak(&d, sh.settings.reorder_retry).await;
            }
            Ok(Outcome::Applied { outbox, crash }) => {
                if let Err(e) = sh.store.flush().await {
                    warn!(error = %e, "flushing the ledger failed");
                    return nak(&d, sh.settings.publish_retry_delay).await;
                }
                info!(attempt = failures.len() + 1, "event handled");
                if crash {
                    (sh.crash_hook)(&ev.name);
                    return;
                }
                return publish_then_ack(sh, &d, &ev, &outbox, !failures.is_empty()).await;
            }
            Ok(Outcome::Duplicate { outbox }) => {
                debug!("duplicate event: not handled again");
                return publish_then_ack(sh, &d, &ev, &outbox, !failures.is_empty()).await;
            }
            Ok(Outcome::Tracked) => {
                if let Err(e) = sh.store.flush().await {
                    warn!(error = %e, "flushing the ledger failed");
                    return nak(&d, sh.settings.publish_retry_delay).await;
                }
                return ack(&d).await;
            }
            Ok(Outcome::Parked(v)) => {
                if let Err(e) = sh.store.flush().await {
                    warn!(error = %e, "flushing the ledger failed");
                    return nak(&d, sh.settings.publish_retry_delay).await;
                }
                warn!(reason = %v.reason, invariant = %v.invariant, "ordering violation: event parked, not applied");
                let reason = format!(
                    "ordering violation: {} (invariant: {})",
                    v.reason, v.invariant
                );
                return dead_letter(sh, d, &reason, &failures, false).await;
            }
            Err(ApplyError::Reject(reason)) => {
                return dead_letter(sh, d, &reason, &failures, false).await;
            }
            Err(ApplyError::Technical(reason)) => {
                let now = sh.clock.now();
                let all = match sh.store.record_failure(seq, now, &reason) {
                    Ok(all) => all,
                    Err(e) => {
                        warn!(error = %e, %reason, "recording the failure failed");
                        return nak(&d, sh.settings.publish_retry_delay).await;
                    }
                };
                if let Err(e) = sh.store.flush().await {
                    warn!(error = %e, "flushing the ledger failed");
                }
                match sh.settings.ladder.next(all.len(), now) {
                    NextStep::RetryAt { attempt, at } => warn!(
                        failed_attempt = all.len(),
                        next_attempt = attempt,
                        next_attempt_at_ms = at,
                        next_attempt_in = ?Duration::from_millis(at.saturating_sub(now)),
                        error = %reason,
                        "event failed; retrying on the ladder"
                    ),
                    NextStep::DeadLetter => {}
                }
            }
        }
    }
}

/// Waits for the ladder's next attempt, reporting the event in progress; false when the
/// consumer stops first.
async fn wait_until(
    sh: &Shared,
    d: &Delivery,
    at: saga_core::Timestamp,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        if *stop.borrow() {
            return false;
        }
        let now = sh.clock.now();
        if now >= at {
            return true;
        }
        let left = Duration::from_millis(at - now).min(sh.settings.heartbeat);
        tokio::select! {
            _ = stop.changed() => return false,
            () = tokio::time::sleep(left) => {}
        }
        if let Err(e) = d.acker.in_progress().await {
            debug!(error = %e, "in-progress report failed");
        }
    }
}

async fn publish_then_ack(
    sh: &Shared,
    d: &Delivery,
    ev: &Event,
    outbox: &[OutgoingMessage],
    had_failures: bool,
) {
    for msg in outbox {
        let mut msg = msg.clone();
        if let Some(c) = &ev.correlation_id {
            msg.headers
                .entry(header::SAGA_ID.to_string())
                .or_insert_with(|| c.clone());
        }
        if let Some(tp) = ev.headers.get(header::TRACEPARENT) {
            msg.headers
                .entry(header::TRACEPARENT.to_string())
                .or_insert_with(|| tp.clone());
        }
        // Domain events are one per subject (create-only); the rest is deduplicated
        // by message id.
        let sent = if msg.subject.starts_with("events.") {
            sh.publisher.publish_new(&msg).await
        } else {
            sh.publisher.publish(&msg).await
        };
        if let Err(e) = sent {
            warn!(error = %e, subject = %msg.subject, "publishing failed; nak for a retry");
            return nak(d, sh.settings.publish_retry_delay).await;
        }
    }
    if had_failures {
        if let Err(e) = sh.store.clear_failures(ev.stream_sequence) {
            warn!(error = %e, "forgetting the ladder failed");
        }
    }
    ack(d).await;
}

/// Moves the delivery to `SAGA_DLQ` with its story (original subject, stream and
/// sequence, deliveries, every error), then terms it.
async fn dead_letter(sh: &Shared, d: Delivery, reason: &str, failures: &[Failure], alert: bool) {
    let mut msg = dead_letter_message(&d, reason);
    msg.headers
        .retain(|name, _| !name.to_ascii_lowercase().starts_with("nats-"));
    msg.headers.remove(REDRIVE_CONSUMER);
    msg.headers
        .insert(header::DLQ_CONSUMER.to_string(), d.consumer.clone());
    if !failures.is_empty() {
        msg.headers.insert(
            DLQ_ERRORS.to_string(),
            serde_json::to_string(failures).unwrap_or_default(),
        );
        let deliveries = d.delivered.max(failures.len() as u64);
        msg.headers
            .insert(header::DLQ_DELIVERIES.to_string(), deliveries.to_string());
    }
    match sh.publisher.publish(&msg).await {
        Ok(ack) => {
            if alert {
                error!(
                    subject = %d.subject,
                    sequence = d.stream_sequence,
                    attempts = failures.len(),
                    dlq_sequence = ack.sequence,
                    %reason,
                    "event dead-lettered after its retry ladder"
                );
            } else {
                warn!(subject = %d.subject, sequence = d.stream_sequence, dlq_sequence = ack.sequence, %reason, "event dead-lettered");
            }
            if let Err(e) = d.acker.term().await {
                warn!(error = %e, "term failed; the dead letter is stored");
            }
            if let Err(e) = sh.store.clear_failures(d.stream_sequence) {
                warn!(error = %e, "forgetting the ladder failed");
            }
        }
        Err(e) => {
            warn!(error = %e, %reason, "dead-lettering failed; nak for a retry");
            nak(&d, sh.settings.publish_retry_delay).await;
        }
    }
}

async fn ack(d: &Delivery) {
    if let Err(e) = d.acker.ack().await {
        // Everything is recorded: a redelivery is recognised.
        warn!(error = %e, "ack failed; the event will be redelivered");
    }
}

async fn nak(d: &Delivery, delay: Duration) {
    if let Err(e) = d.acker.nak(Some(delay)).await {
        warn!(error = %e, "nak failed; the event will be redelivered after the ack wait");
    }
}

async fn prune(sh: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(sh.settings.prune_interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let window = u64::try_from(sh.settings.dedupe_window.as_millis()).unwrap_or(u64::MAX);
        match sh.store.prune(sh.clock.now().saturating_sub(window)) {
            Ok(0) => {}
            Ok(n) => debug!(pruned = n, "pruned expired dedupe records"),
            Err(e) => warn!(error = %e, "pruning dedupe records failed"),
        }
    }
}
