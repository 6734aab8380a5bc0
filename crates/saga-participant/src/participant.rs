//! The participant loop: consume commands per service, dedupe through the inbox, run
//! the handler, flush, reply, then ack.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use saga_core::ladder::RetryLadder;
use saga_core::{Clock, SystemClock};
use saga_ports::{header, Consumer, Delivery, Headers, OutgoingMessage, Publisher};
use saga_proto::{saga_input, step_reply, Message, SagaInput, StepCommand, StepReply};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn, Instrument};

use crate::dlq::{DeadLetters, PublishDeadLetters};
use crate::handler::{Abort, Handler};
use crate::knobs::{FailureInjector, Knobs};
use crate::store::{step_reply, ExecError, Executed, ParticipantStore, Run, ServiceTrees};
use crate::ParticipantError;

/// Tuning of the participant loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How long a recorded reply answers duplicates (default 24 h). Later, the same
    /// idempotency key runs the handler again.
    pub inbox_window: Duration,
    /// How often replies older than the window are pruned (default 10 min).
    pub prune_interval: Duration,
    /// Deliveries after which a command that keeps failing (handler `Abort::Retry`, a
    /// store error) goes to the DLQ (default 5). The JetStream consumer's own
    /// `max_deliver` must be higher (or unlimited), or the server gives up first.
    pub max_deliveries: u64,
    /// First nak delay of a failing command; doubles per delivery (default 1 s).
    pub retry_initial: Duration,
    /// Largest nak delay (default 30 s).
    pub retry_max: Duration,
    /// Nak delay when the reply could not be published or the store not flushed
    /// (default 2 s). The reply is recorded, so the retry only republishes it.
    pub publish_retry_delay: Duration,
    /// Messages per fetch (default 32).
    pub batch_size: usize,
    /// How long a fetch waits for the first message (default 1 s).
    pub fetch_wait: Duration,
    /// Commands in flight per service (default 32).
    pub max_in_flight: usize,
    /// When set, a failing command is retried after each rung of this ladder (e.g.
    /// `1m, 5m, 30m`) and dead-lettered after the last, instead of the doubling delays
    /// and `max_deliveries` (which should then be `rungs + 1`, for the consumer's own
    /// delivery limit).
    pub ladder: Option<RetryLadder>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            inbox_window: Duration::from_secs(24 * 3600),
            prune_interval: Duration::from_secs(600),
            max_deliveries: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            publish_retry_delay: Duration::from_secs(2),
            batch_size: 32,
            fetch_wait: Duration::from_secs(1),
            max_in_flight: 32,
            ladder: None,
        }
    }
}

impl Settings {
    /// The wait before the next delivery of a command that failed `delivered` times, or
    /// `None` when it is to be dead-lettered.
    pub fn next_retry(&self, delivered: u64) -> Option<Duration> {
        match &self.ladder {
            Some(l) => usize::try_from(delivered.saturating_sub(1))
                .ok()
                .and_then(|i| l.rungs().get(i).copied()),
            None => (delivered < self.max_deliveries).then(|| self.retry_delay(delivered)),
        }
    }

    /// The nak delay after `delivered` deliveries.
    pub fn retry_delay(&self, delivered: u64) -> Duration {
        let exp = delivered.saturating_sub(1).min(20) as u32;
        self.retry_initial
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.retry_max)
    }
}

/// Called when the crash knob fires, with the action. The default exits the process
/// with status 137 (as a SIGKILL would); sled was flushed just before.
pub type CrashHook = Arc<dyn Fn(&str) + Send + Sync>;

/// A participant: one or more services, each consumed from its own durable consumer
/// (`svc-<service>`, competing across processes), sharing one sled database.
pub struct Participant {
    store: ParticipantStore,
    publisher: Arc<dyn Publisher>,
    dead_letters: Option<Arc<dyn DeadLetters>>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    knobs: Knobs,
    crash_hook: Option<CrashHook>,
    services: Vec<Served>,
}

/// A service to serve: name, handler, consumer.
type Served = (String, Arc<dyn Handler>, Box<dyn Consumer>);

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field(
                "services",
                &self.services.iter().map(|s| &s.0).collect::<Vec<_>>(),
            )
            .field("settings", &self.settings)
            .field("knobs", &self.knobs)
            .finish_non_exhaustive()
    }
}

impl Participant {
    /// A participant storing in `store` and replying through `publisher`. Dead letters
    /// go through the same publisher (see [`PublishDeadLetters`]) unless
    /// [`Participant::with_dead_letters`] says otherwise.
    pub fn new(store: ParticipantStore, publisher: Arc<dyn Publisher>) -> Self {
        Self {
            store,
            publisher,
            dead_letters: None,
            clock: Arc::new(SystemClock),
            settings: Settings::default(),
            knobs: Knobs::default(),
            crash_hook: None,
            services: Vec::new(),
        }
    }

    /// Serves `service` with `handler`, consuming from `consumer` (the service's
    /// `svc-<service>` consumer on `saga.cmd.<service>.>`).
    pub fn serve(
        mut self,
        service: impl Into<String>,
        handler: Arc<dyn Handler>,
        consumer: impl Consumer,
    ) -> Self {
        self.services
            .push((service.into(), handler, Box::new(consumer)));
        self
    }

    /// Tuning.
    pub fn with_settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Fault injection.
    pub fn with_knobs(mut self, knobs: Knobs) -> Self {
        self.knobs = knobs;
        self
    }

    /// The clock of the inbox window (default: the system clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where dead letters go.
    pub fn with_dead_letters(mut self, dead_letters: Arc<dyn DeadLetters>) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// What the crash knob does (tests record instead of exiting). After the hook
    /// returns, the delivery is dropped unsettled, as a dead process would leave it.
    pub fn with_crash_hook(mut self, hook: CrashHook) -> Self {
        self.crash_hook = Some(hook);
        self
    }

    /// The store (for reports after a run).
    pub fn store(&self) -> &ParticipantStore {
        &self.store
    }

    /// Consumes commands until `shutdown` resolves, then stops fetching and waits for
    /// the commands in flight to be settled.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ParticipantError> {
        self.knobs.validate()?;
        if self.services.is_empty() {
            return Err(ParticipantError::Config("no service to serve".into()));
        }
        let mut seen = HashSet::new();
        for (name, _, _) in &self.services {
            if name.is_empty() || !seen.insert(name.clone()) {
                return Err(ParticipantError::Config(format!(
                    "service name `{name}` is empty or given twice"
                )));
            }
        }
        let dead_letters = self
            .dead_letters
            .unwrap_or_else(|| Arc::new(PublishDeadLetters::new(self.publisher.clone())));
        let shared = Arc::new(Shared {
            store: self.store.clone(),
            publisher: self.publisher,
            dead_letters,
            clock: self.clock,
            injector: FailureInjector::new(self.knobs.technical_failure_rate, self.knobs.seed),
            settings: self.settings,
            knobs: self.knobs,
            crash_hook: self.crash_hook.unwrap_or_else(|| Arc::new(exit_process)),
        });

        // Open every service's trees before consuming anything.
        let mut services = Vec::with_capacity(self.services.len());
        for (name, handler, consumer) in self.services {
            let trees = self.store.service_trees(handler.as_ref())?;
            let service = Arc::new(Service {
                name,
                handler,
                trees,
            });
            services.push((service, consumer));
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (service, consumer) in services {
            let span = tracing::info_span!("service", service = %service.name);
            tasks.spawn(
                consume(shared.clone(), service, consumer, stop_rx.clone()).instrument(span),
            );
        }
        tasks.spawn(prune(shared.clone(), stop_rx.clone()));

        tokio::select! {
            () = shutdown => info!("shutting down: draining commands in flight"),
            // A service loop only ends early if it panicked.
            Some(res) = tasks.join_next() => {
                if let Err(e) = res {
                    error!(error = %e, "a service loop failed");
                }
            }
        }
        let _ = stop_tx.send(true);
        while let Some(res) = tasks.join_next().await {
            if let Err(e) = res {
                error!(error = %e, "a service loop failed while draining");
            }
        }
        shared.store.flush().await?;
        info!("participant stopped");
        Ok(())
    }
}

fn exit_process(action: &str) {
    error!(
        action,
        "crash-after-effect: exiting with 137 after the effect, before the reply"
    );
    std::process::exit(137);
}

struct Shared {
    store: ParticipantStore,
    publisher: Arc<dyn Publisher>,
    dead_letters: Arc<dyn DeadLetters>,
    clock: Arc<dyn Clock>,
    injector: FailureInjector,
    settings: Settings,
    knobs: Knobs,
    crash_hook: CrashHook,
}

struct Service {
    name: String,
    handler: Arc<dyn Handler>,
    trees: ServiceTrees,
}

async fn consume(
    shared: Arc<Shared>,
    service: Arc<Service>,
    mut consumer: Box<dyn Consumer>,
    mut stop: watch::Receiver<bool>,
) {
    let mut in_flight = JoinSet::new();
    let mut fetch_failures = 0u32;
    info!("consuming commands");
    loop {
        while let Some(res) = in_flight.try_join_next() {
            log_join(res);
        }
        let cap = shared.settings.max_in_flight.max(1);
        if in_flight.len() >= cap {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(res) = in_flight.join_next() => log_join(res),
            }
            continue;
        }
        let max = shared.settings.batch_size.clamp(1, cap - in_flight.len());
        let fetched = tokio::select! {
            biased;
            _ = stop.changed() => break,
            fetched = consumer.fetch(max, shared.settings.fetch_wait) => fetched,
        };
        match fetched {
            Ok(deliveries) => {
                fetch_failures = 0;
                for d in deliveries {
                    let (shared, service) = (shared.clone(), service.clone());
                    in_flight.spawn(
                        async move { process(&shared, &service, d).await }.in_current_span(),
                    );
                }
            }
            Err(e) => {
                fetch_failures = fetch_failures.saturating_add(1);
                let delay = shared.settings.retry_delay(u64::from(fetch_failures));
                warn!(error = %e, ?delay, "fetching commands failed");
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    while let Some(res) = in_flight.join_next().await {
        log_join(res);
    }
    info!("stopped consuming");
}

fn log_join(res: Result<(), tokio::task::JoinError>) {
    if let Err(e) = res {
        error!(error = %e, "command task failed");
    }
}

async fn prune(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick =
        tokio::time::interval(shared.settings.prune_interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let window_ms = u64::try_from(shared.settings.inbox_window.as_millis()).unwrap_or(u64::MAX);
        let before = shared.clock.now().saturating_sub(window_ms);
        match shared.store.prune_inbox(before) {
            Ok(0) => {}
            Ok(n) => debug!(pruned = n, "pruned expired inbox records"),
            Err(e) => warn!(error = %e, "pruning the inbox failed"),
        }
    }
}

/// One delivery, from decoding to settling. Every path settles it (or leaves it to
/// redelivery on purpose: a crash, an ack that could not be sent).
async fn process(sh: &Shared, svc: &Service, d: Delivery) {
    let cmd = match StepCommand::decode(d.payload.as_slice()) {
        Ok(cmd) => cmd,
        Err(e) => {
            return dead_letter(sh, d, &format!("undecodable StepCommand: {e}")).await;
        }
    };
    if let Err(why) = validate(&cmd) {
        return dead_letter(sh, d, &format!("invalid StepCommand: {why}")).await;
    }
    // The consumer span of the command, a child of the worker's publish span (its
    // context travels in the headers); the reply carries this span's context back.
    let span = tracing::info_span!(
        parent: None,
        "command",
        otel.name = %format!("process {}", d.subject),
        otel.kind = "consumer",
        messaging.system = "nats",
        "messaging.operation.type" = "process",
        messaging.destination.name = d.subject.as_str(),
        messaging.message.id = d.headers.get(header::MSG_ID).map_or("", String::as_str),
        messaging.message.conversation_id = %cmd.saga_id,
        saga_id = %cmd.saga_id,
        step = %cmd.step,
        action = %cmd.action,
        attempt = cmd.attempt,
        delivered = d.delivered,
        saga.id = %cmd.saga_id,
        "saga.type" = %cmd.saga_type,
        saga.step = %cmd.step,
        saga.attempt = cmd.attempt,
        saga.compensation = cmd.compensation,
        saga.service = %svc.name,
    );
    saga_telemetry::propagation::set_parent(&span, &d.headers);
    handle_command(sh, svc, d, cmd).instrument(span).await
}

async fn handle_command(sh: &Shared, svc: &Service, d: Delivery, cmd: StepCommand) {
    let now = sh.clock.now();
    let window = sh.settings.inbox_window;
    let key = crate::store::inbox_key(&svc.name, &cmd);

    // Duplicates are answered from the inbox without the knobs' latency or failures.
    match sh.store.lookup(&key, now, window) {
        Ok(Some(recorded)) => {
            debug!("duplicate command: republishing the recorded reply");
            crate::metrics::duplicate(&svc.name, &cmd.action);
            return reply_then_ack(sh, d, &cmd, recorded).await;
        }
        Ok(None) => {}
        Err(e) => return retry_or_dead_letter(sh, svc, d, &cmd, &e.to_string()).await,
    }
    if !sh.knobs.latency.is_zero() {
        tokio::time::sleep(sh.knobs.latency).await;
    }
    if sh.injector.should_fail() {
        let reason = "injected technical failure".to_string();
        info!("{reason}");
        let reply = failure_reply(svc, &cmd, sh.clock.now(), reason);
        return reply_then_ack(sh, d, &cmd, reply).await;
    }

    // An effect outside sled (idempotent per command) runs before the transaction.
    let prepared = match svc.handler.prepare(&cmd, now).await {
        Ok(p) => p,
        Err(Abort::Reject(reason)) => return dead_letter(sh, d, &reason).await,
        Err(e) => return retry_or_dead_letter(sh, svc, d, &cmd, &e.to_string()).await,
    };
    let run = Run {
        service: &svc.name,
        cmd: &cmd,
        now,
        window,
        crash: sh.knobs.crash_after_effect.as_ref(),
        prepared: prepared.as_ref(),
    };
    let executed = sh.store.execute(&svc.trees, svc.handler.as_ref(), &run);
    match executed {
        Ok(Executed::Recorded(recorded)) => reply_then_ack(sh, d, &cmd, recorded).await,
        Ok(Executed::New { reply, crash }) => {
            if let Err(e) = sh.store.flush().await {
                warn!(error = %e, "flushing the store failed");
                return nak(&d, Some(sh.settings.publish_retry_delay)).await;
            }
            debug!(outcome = outcome_name(&reply), "effect committed");
            crate::metrics::handled(&svc.name, &cmd.action, outcome_name(&reply));
            if crash {
                (sh.crash_hook)(&cmd.action);
                return;
            }
            reply_then_ack(sh, d, &cmd, reply).await
        }
        Ok(Executed::Technical(reason)) => {
            info!(%reason, "technical failure: not recorded, the saga may retry");
            crate::metrics::handled(&svc.name, &cmd.action, "technical_failure");
            let reply = failure_reply(svc, &cmd, now, reason);
            reply_then_ack(sh, d, &cmd, reply).await
        }
        Err(ExecError::Reject(reason)) => dead_letter(sh, d, &reason).await,
        Err(ExecError::Retry(reason)) => retry_or_dead_letter(sh, svc, d, &cmd, &reason).await,
    }
}

fn validate(cmd: &StepCommand) -> Result<(), &'static str> {
    if cmd.idempotency_key.is_empty() {
        return Err("missing idempotency_key");
    }
    if cmd.reply_to.is_empty() {
        return Err("missing reply_to");
    }
    if cmd.action.is_empty() {
        return Err("missing action");
    }
    if cmd.saga_id.is_empty() {
        return Err("missing saga_id");
    }
    Ok(())
}

fn failure_reply(svc: &Service, cmd: &StepCommand, now: u64, reason: String) -> StepReply {
    step_reply(
        &svc.name,
        cmd,
        now,
        step_reply::Outcome::TechnicalFailure(saga_proto::TechnicalFailure { reason }),
    )
}

fn outcome_name(reply: &StepReply) -> &'static str {
    match reply.outcome {
        Some(step_reply::Outcome::Ok(_)) => "ok",
        Some(step_reply::Outcome::BusinessFailure(_)) => "business_failure",
        Some(step_reply::Outcome::TechnicalFailure(_)) => "technical_failure",
        None => "none",
    }
}

/// The reply message for `cmd`. A recorded reply answers a later attempt too, so the
/// attempt is the command's.
pub fn reply_message(
    cmd: &StepCommand,
    mut reply: StepReply,
    incoming: &Headers,
) -> OutgoingMessage {
    reply.attempt = cmd.attempt;
    let input = SagaInput {
        saga_id: cmd.saga_id.clone(),
        saga_type: cmd.saga_type.clone(),
        kind: Some(saga_input::Kind::Reply(reply)),
    };
    let mut headers = Headers::new();
    headers.insert(header::SAGA_ID.into(), cmd.saga_id.clone());
    headers.insert(header::SAGA_STEP.into(), cmd.step.clone());
    headers.insert(header::SAGA_ATTEMPT.into(), cmd.attempt.to_string());
    headers.insert(header::IDEMPOTENCY_KEY.into(), cmd.idempotency_key.clone());
    if let Some(tp) = incoming.get(header::TRACEPARENT) {
        headers.insert(header::TRACEPARENT.into(), tp.clone());
    }
    // Inside the command's span (the SDK's handling) the reply continues from it.
    saga_telemetry::propagation::inject(&tracing::Span::current(), &mut headers);
    OutgoingMessage {
        subject: cmd.reply_to.clone(),
        msg_id: format!("reply:{}:{}", cmd.idempotency_key, cmd.attempt),
        headers,
        payload: input.encode_to_vec(),
    }
}

async fn reply_then_ack(sh: &Shared, d: Delivery, cmd: &StepCommand, reply: StepReply) {
    let msg = reply_message(cmd, reply, &d.headers);
    match sh.publisher.publish(&msg).await {
        Ok(_) => {
            if let Err(e) = d.acker.ack().await {
                // The reply is recorded: a redelivery republishes it (deduplicated).
                warn!(error = %e, "ack failed; the command will be redelivered");
            }
        }
        // A reply subject no stream stores (a forged command) fails on every delivery:
        // after the retry ladder's deliveries it is dead-lettered, not retried for ever.
        // The reply is recorded, so a redrive publishes it.
        Err(e) if sh.settings.next_retry(d.delivered).is_none() => {
            let reason = format!(
                "gave up after {} deliveries: publishing the reply to `{}` failed: {e}",
                d.delivered, msg.subject
            );
            dead_letter(sh, d, &reason).await
        }
        Err(e) => {
            warn!(error = %e, "publishing the reply failed; nak for a retry");
            nak(&d, Some(sh.settings.publish_retry_delay)).await;
        }
    }
}

async fn retry_or_dead_letter(
    sh: &Shared,
    svc: &Service,
    d: Delivery,
    cmd: &StepCommand,
    reason: &str,
) {
    if let Some(delay) = sh.settings.next_retry(d.delivered) {
        warn!(
            %reason,
            failed_attempt = d.delivered,
            next_attempt = d.delivered + 1,
            next_attempt_in = ?delay,
            "command failed; nak for a retry"
        );
        return nak(&d, Some(delay)).await;
    }
    let reason = format!("gave up after {} deliveries: {reason}", d.delivered);
    // Tell the saga now rather than at its timeout; best effort, it times out anyway.
    let reply = failure_reply(svc, cmd, sh.clock.now(), reason.clone());
    if let Err(e) = sh
        .publisher
        .publish(&reply_message(cmd, reply, &d.headers))
        .await
    {
        warn!(error = %e, "could not publish the technical failure reply");
    }
    dead_letter(sh, d, &reason).await
}

async fn dead_letter(sh: &Shared, d: Delivery, reason: &str) {
    match sh.dead_letters.dead_letter(&d, reason).await {
        Ok(()) => {
            crate::metrics::dead_lettered(&d.subject);
            warn!(subject = %d.subject, %reason, "command dead-lettered")
        }
        Err(e) => {
            warn!(error = %e, %reason, "dead-lettering failed; nak for a retry");
            nak(&d, Some(sh.settings.publish_retry_delay)).await;
        }
    }
}

async fn nak(d: &Delivery, delay: Option<Duration>) {
    if let Err(e) = d.acker.nak(delay).await {
        warn!(error = %e, "nak failed; the command will be redelivered after ack_wait");
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn failing_commands_follow_the_doubling_delays_or_the_ladder() {
        let doubling = Settings::default();
        let table = [(1, Some(1)), (2, Some(2)), (4, Some(8)), (5, None)];
        for (delivered, want) in table {
            assert_eq!(
                doubling.next_retry(delivered),
                want.map(Duration::from_secs),
                "after {delivered} deliveries"
            );
        }
        let ladder = Settings {
            ladder: Some(RetryLadder::parse("1m, 5m, 30m").unwrap()),
            ..Settings::default()
        };
        let table = [(1, Some(60)), (2, Some(300)), (3, Some(1800)), (4, None)];
        for (delivered, want) in table {
            assert_eq!(
                ladder.next_retry(delivered),
                want.map(Duration::from_secs),
                "after {delivered} deliveries"
            );
        }
    }
}
