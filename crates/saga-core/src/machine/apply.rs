//! The transition function: `apply(definition, state, input, now) -> Transition`.
//! Pure and deterministic: no clock, no randomness, no I/O.

use std::time::Duration;

use super::types::*;
use crate::definition::{Compensation, SagaDefinition, StepKind};
use crate::duration::format_duration;
use crate::ids::{idempotency_key, stable_hash, SagaId, Timestamp};

impl SagaState {
    /// A fresh, pending saga.
    pub fn new(def: &SagaDefinition, saga_id: SagaId, now: Timestamp) -> Self {
        Self {
            saga_id,
            saga_type: def.name.clone(),
            status: SagaStatus::Pending,
            current_step: None,
            steps: def
                .steps
                .iter()
                .map(|s| StepState::not_started(&s.name))
                .collect(),
            payload: Vec::new(),
            created_at: now,
            updated_at: now,
            deadline_at: None,
            compensation_reason: None,
            failure_reason: None,
            version: 0,
            applied_inputs: Default::default(),
            definition_version: String::new(),
        }
    }

    /// Name of the step running or being compensated.
    pub fn current_step_name(&self) -> Option<&str> {
        self.current_step.map(|i| self.steps[i].name.as_str())
    }
}

/// Applies one input. The state passed in is not modified; the new one is returned
/// in the transition together with the journal events and the effects to execute.
pub fn apply(def: &SagaDefinition, state: &SagaState, input: &Input, now: Timestamp) -> Transition {
    let mut m = Machine {
        def,
        s: state.clone(),
        now,
        events: Vec::new(),
        effects: Vec::new(),
    };
    m.s.version += 1;
    m.s.updated_at = now;
    m.s.applied_inputs.insert(input.id());
    match fits(def, state) {
        Ok(()) => m.input(input),
        Err(why) => m.misfit(why),
    }
    Transition {
        state: m.s,
        events: m.events,
        effects: m.effects,
    }
}

/// Stops a saga that must not go on (its replay diverged from its journal, say): a
/// running saga ends FAILED with `reason`, sending and undoing nothing, for an operator;
/// an ended one ignores the input. The input is recorded as applied.
pub fn halt(state: &SagaState, input: &Input, now: Timestamp, reason: &str) -> Transition {
    let mut s = state.clone();
    s.version += 1;
    s.updated_at = now;
    s.applied_inputs.insert(input.id());
    if s.status.is_terminal() {
        let reason = format!("saga is already {}", s.status);
        return Transition {
            state: s,
            events: vec![SagaEvent::InputIgnored { reason }],
            effects: Vec::new(),
        };
    }
    s.status = SagaStatus::Failed;
    s.current_step = None;
    s.failure_reason = Some(reason.to_string());
    Transition {
        state: s,
        events: vec![SagaEvent::SagaFailed {
            reason: reason.to_string(),
        }],
        effects: vec![
            Effect::CancelTimer {
                key: TimerKey::deadline(),
            },
            Effect::Finish {
                status: SagaStatus::Failed,
            },
        ],
    }
}

/// Whether a state can be driven by a definition: same type, same steps in the same
/// order, a current step that exists. A saga whose definition changed under it (a step
/// removed, renamed or moved) fails this, and is stopped instead of run on the wrong plan.
pub fn fits(def: &SagaDefinition, s: &SagaState) -> Result<(), String> {
    if s.saga_type != def.name {
        return Err(format!(
            "the saga is a `{}`, the definition is `{}`",
            s.saga_type, def.name
        ));
    }
    if s.steps.len() != def.steps.len() {
        return Err(format!(
            "the saga has {} steps ({}), its definition {} ({})",
            s.steps.len(),
            s.steps
                .iter()
                .map(|x| x.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            def.steps.len(),
            def.steps
                .iter()
                .map(|x| x.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some((i, (a, b))) = s
        .steps
        .iter()
        .zip(&def.steps)
        .enumerate()
        .find(|(_, (a, b))| a.name != b.name)
    {
        return Err(format!(
            "step {} is `{}` in the saga and `{}` in its definition",
            i + 1,
            a.name,
            b.name
        ));
    }
    if let Some(i) = s.current_step.filter(|i| *i >= s.steps.len()) {
        return Err(format!(
            "the current step is number {}, but there are {} steps",
            i + 1,
            s.steps.len()
        ));
    }
    Ok(())
}

struct Machine<'d> {
    def: &'d SagaDefinition,
    s: SagaState,
    now: Timestamp,
    events: Vec<SagaEvent>,
    effects: Vec<Effect>,
}

impl Machine<'_> {
    fn input(&mut self, input: &Input) {
        if self.s.status.is_terminal() {
            return self.ignore(format!("saga is already {}", self.s.status));
        }
        match input {
            Input::Start { payload } => self.start(payload),
            Input::StepReply {
                step,
                attempt,
                outcome,
            } => match self.index(step) {
                Some(i) => self.step_reply(i, *attempt, outcome),
                None => self.ignore(format!("reply for unknown step `{step}`")),
            },
            Input::CompensationReply {
                step,
                attempt,
                outcome,
            } => match self.index(step) {
                Some(i) => self.compensation_reply(i, *attempt, outcome),
                None => self.ignore(format!("compensation reply for unknown step `{step}`")),
            },
            Input::TimerFired(key) => self.timer(key),
            Input::Cancel { reason } => self.cancel(format!("cancelled: {reason}")),
            Input::DeadlineExceeded => self.deadline(),
            Input::Migrate { to, .. } => self.ignore(format!(
                "migration to version {to} given without the version (applied by the runtime)"
            )),
        }
    }

    /// The state does not fit the definition: a running saga is stopped (FAILED, for an
    /// operator: migrate it or run it on its own version), never driven on a plan that
    /// is not its own; an ended one stays as it is.
    fn misfit(&mut self, why: String) {
        if self.s.status.is_terminal() {
            return self.ignore(format!("saga is already {}", self.s.status));
        }
        self.fail_forward(format!("state does not fit its definition: {why}"));
    }

    /// The saga cannot go on (a step past the point of no return refused, a state that
    /// does not fit): it ends FAILED without undoing anything, for an operator.
    fn fail_forward(&mut self, reason: String) {
        self.s.status = SagaStatus::Failed;
        self.s.current_step = None;
        self.s.failure_reason = Some(reason.clone());
        self.effects.push(Effect::CancelTimer {
            key: TimerKey::deadline(),
        });
        self.events.push(SagaEvent::SagaFailed { reason });
        self.effects.push(Effect::Finish {
            status: SagaStatus::Failed,
        });
    }

    fn index(&self, step: &str) -> Option<usize> {
        self.s.steps.iter().position(|s| s.name == step)
    }

    fn ignore(&mut self, reason: String) {
        self.events.push(SagaEvent::InputIgnored { reason });
    }

    fn arm(&mut self, kind: TimerKind, step: usize, attempt: u32, after: Duration) {
        self.effects.push(Effect::ArmTimer {
            key: TimerKey {
                kind,
                step: self.s.steps[step].name.clone(),
                attempt,
            },
            after,
            at: self.now.saturating_add(after.as_millis() as u64),
        });
    }

    fn disarm(&mut self, kind: TimerKind, step: usize, attempt: u32) {
        self.effects.push(Effect::CancelTimer {
            key: TimerKey {
                kind,
                step: self.s.steps[step].name.clone(),
                attempt,
            },
        });
    }

    /// Cancels whatever timer the step's current status has armed.
    fn disarm_step(&mut self, i: usize) {
        let st = &self.s.steps[i];
        let (attempts, comp_attempts) = (st.attempts, st.compensation_attempts);
        match st.status {
            StepStatus::Running => self.disarm(TimerKind::StepTimeout, i, attempts),
            StepStatus::WaitingRetry => self.disarm(TimerKind::RetryBackoff, i, attempts),
            StepStatus::Compensating => {
                self.disarm(TimerKind::CompensationTimeout, i, comp_attempts)
            }
            StepStatus::WaitingCompensationRetry => {
                self.disarm(TimerKind::CompensationBackoff, i, comp_attempts)
            }
            _ => {}
        }
    }

    fn seed(&self, i: usize, action: &str, attempt: u32) -> u64 {
        let key = idempotency_key(&self.s.saga_id, &self.s.steps[i].name, action);
        stable_hash(key.as_bytes()) ^ u64::from(attempt)
    }

    // ---- forward ----

    fn start(&mut self, payload: &[u8]) {
        if self.s.status != SagaStatus::Pending {
            return self.ignore("duplicate start".into());
        }
        let deadline = self.def.deadline();
        let deadline_at = self.now.saturating_add(deadline.as_millis() as u64);
        self.s.payload = payload.to_vec();
        self.s.status = SagaStatus::Running;
        self.s.deadline_at = Some(deadline_at);
        self.events.push(SagaEvent::SagaStarted { deadline_at });
        self.effects.push(Effect::ArmTimer {
            key: TimerKey::deadline(),
            after: deadline,
            at: deadline_at,
        });
        self.send_step(0, 1);
    }

    fn send_step(&mut self, i: usize, attempt: u32) {
        let def = &self.def.steps[i];
        let st = &mut self.s.steps[i];
        st.status = StepStatus::Running;
        st.attempts = attempt;
        st.started_at.get_or_insert(self.now);
        self.s.current_step = Some(i);
        self.events.push(SagaEvent::StepStarted {
            step: def.name.clone(),
            attempt,
            action: def.action.clone(),
        });
        self.effects.push(Effect::SendCommand(Command {
            step: def.name.clone(),
            service: def.service.clone(),
            action: def.action.clone(),
            attempt,
            idempotency_key: idempotency_key(&self.s.saga_id, &def.name, &def.action),
            compensation: false,
        }));
        self.arm(TimerKind::StepTimeout, i, attempt, def.timeout);
    }

    fn awaiting_forward(&self, i: usize) -> bool {
        self.s.status == SagaStatus::Running
            && self.s.current_step == Some(i)
            && matches!(
                self.s.steps[i].status,
                StepStatus::Running | StepStatus::WaitingRetry
            )
    }

    fn step_reply(&mut self, i: usize, attempt: u32, outcome: &Outcome) {
        let name = self.s.steps[i].name.clone();
        let sent = self.s.steps[i].attempts;
        if !self.awaiting_forward(i) || attempt == 0 || attempt > sent {
            return self.ignore(format!(
                "reply to `{name}` attempt {attempt} not awaited (step is {})",
                self.s.steps[i].status.as_str()
            ));
        }
        match outcome {
            // Any attempt's success counts: all attempts share one idempotency key.
            Outcome::Ok { result } => {
                self.disarm_step(i);
                let st = &mut self.s.steps[i];
                st.status = StepStatus::Completed;
                st.finished_at = Some(self.now);
                st.result = Some(result.clone());
                st.error = None;
                self.events.push(SagaEvent::StepSucceeded {
                    step: name,
                    attempt,
                });
                if i + 1 < self.s.steps.len() {
                    self.send_step(i + 1, 1);
                } else {
                    self.complete();
                }
            }
            Outcome::BusinessFailure { reason } => {
                self.disarm_step(i);
                let st = &mut self.s.steps[i];
                st.status = StepStatus::BusinessFailed;
                st.finished_at = Some(self.now);
                st.error = Some(reason.clone());
                self.events.push(SagaEvent::StepFailed {
                    step: name.clone(),
                    attempt,
                    reason: reason.clone(),
                });
                if self.def.steps[i].kind == StepKind::Retriable {
                    return self.fail_forward(format!(
                        "retriable step {name} refused: {reason}; nothing past the point of no \
                         return is undone: an operator must finish it"
                    ));
                }
                self.begin_compensation(format!("step {name} failed: {reason}"));
            }
            Outcome::TechnicalFailure { reason } => {
                if attempt != sent || self.s.steps[i].status != StepStatus::Running {
                    return self.ignore(format!(
                        "technical failure of `{name}` attempt {attempt} is stale (attempt {sent} is current)"
                    ));
                }
                self.disarm_step(i);
                self.events.push(SagaEvent::StepAttemptFailed {
                    step: name,
                    attempt,
                    reason: reason.clone(),
                });
                self.s.steps[i].error = Some(reason.clone());
                self.retry_or_give_up(i, reason.clone());
            }
        }
    }

    fn retry_or_give_up(&mut self, i: usize, reason: String) {
        let def = &self.def.steps[i];
        let attempt = self.s.steps[i].attempts;
        // A pivot in doubt may have happened and cannot be undone: it is tried again
        // (idempotently, at its longest delay once its policy is spent) until it answers.
        if def.kind == StepKind::Pivot || def.retry.allows_retry_after(attempt) {
            let delay = def.retry.delay(attempt, self.seed(i, &def.action, attempt));
            self.s.steps[i].status = StepStatus::WaitingRetry;
            self.events.push(SagaEvent::RetryScheduled {
                step: def.name.clone(),
                next_attempt: attempt + 1,
                delay,
            });
            self.arm(TimerKind::RetryBackoff, i, attempt, delay);
        } else if def.kind == StepKind::Retriable {
            let name = def.name.clone();
            let why = format!(
                "retriable step {name} gave up after {attempt} attempt(s): {reason}; nothing past \
                 the point of no return is undone: an operator must finish it"
            );
            self.mark_in_doubt(i, reason);
            self.fail_forward(why);
        } else {
            let name = def.name.clone();
            let why = format!("step {name} gave up after {attempt} attempt(s): {reason}");
            self.mark_in_doubt(i, reason);
            self.begin_compensation(why);
        }
    }

    fn mark_in_doubt(&mut self, i: usize, reason: String) {
        let st = &mut self.s.steps[i];
        st.status = StepStatus::InDoubt;
        st.finished_at = Some(self.now);
        st.error = Some(reason.clone());
        self.events.push(SagaEvent::StepInDoubt {
            step: st.name.clone(),
            reason,
        });
    }

    fn complete(&mut self) {
        self.s.status = SagaStatus::Completed;
        self.s.current_step = None;
        self.effects.push(Effect::CancelTimer {
            key: TimerKey::deadline(),
        });
        self.events.push(SagaEvent::SagaCompleted);
        if let Some(name) = &self.def.events.on_completed {
            self.effects.push(Effect::EmitEvent(DomainEvent {
                domain: self.def.events.domain.clone(),
                name: name.clone(),
                reason: None,
            }));
        }
        self.effects.push(Effect::Finish {
            status: SagaStatus::Completed,
        });
    }

    // ---- timers, cancel, deadline ----

    fn timer(&mut self, key: &TimerKey) {
        if key.kind == TimerKind::Deadline {
            return self.deadline();
        }
        let Some(i) = self.index(&key.step) else {
            return self.ignore(format!("timer for unknown step `{}`", key.step));
        };
        let st = &self.s.steps[i];
        let current = self.s.current_step == Some(i);
        let live = match key.kind {
            TimerKind::StepTimeout => {
                self.s.status == SagaStatus::Running
                    && current
                    && st.status == StepStatus::Running
                    && st.attempts == key.attempt
            }
            TimerKind::RetryBackoff => {
                self.s.status == SagaStatus::Running
                    && current
                    && st.status == StepStatus::WaitingRetry
                    && st.attempts == key.attempt
            }
            TimerKind::CompensationTimeout => {
                self.s.status == SagaStatus::Compensating
                    && current
                    && st.status == StepStatus::Compensating
                    && st.compensation_attempts == key.attempt
            }
            TimerKind::CompensationBackoff => {
                self.s.status == SagaStatus::Compensating
                    && current
                    && st.status == StepStatus::WaitingCompensationRetry
                    && st.compensation_attempts == key.attempt
            }
            TimerKind::Deadline => false,
        };
        if !live {
            return self.ignore(format!(
                "stale {:?} timer of `{}` attempt {}",
                key.kind, key.step, key.attempt
            ));
        }
        let name = key.step.clone();
        match key.kind {
            TimerKind::StepTimeout => {
                self.events.push(SagaEvent::StepTimedOut {
                    step: name,
                    attempt: key.attempt,
                });
                let t = format_duration(self.def.steps[i].timeout);
                self.s.steps[i].error = Some(format!("timed out after {t}"));
                self.retry_or_give_up(i, format!("timed out after {t}"));
            }
            TimerKind::RetryBackoff => self.send_step(i, key.attempt + 1),
            TimerKind::CompensationTimeout => {
                let t = self
                    .compensation_of(i)
                    .map(|c| c.timeout)
                    .unwrap_or_default();
                let reason = format!("timed out after {}", format_duration(t));
                self.events.push(SagaEvent::CompensationAttemptFailed {
                    step: name,
                    attempt: key.attempt,
                    reason: reason.clone(),
                });
                self.compensation_retry_or_give_up(i, reason);
            }
            TimerKind::CompensationBackoff => self.send_compensation(i, key.attempt + 1),
            TimerKind::Deadline => {}
        }
    }

    fn deadline(&mut self) {
        match self.s.status {
            SagaStatus::Running => {
                let d = format_duration(self.def.deadline());
                self.cancel(format!("deadline of {d} exceeded"));
            }
            _ => self.ignore(format!("deadline while {}", self.s.status)),
        }
    }

    fn cancel(&mut self, reason: String) {
        match self.s.status {
            SagaStatus::Pending => {
                self.s.compensation_reason = Some(reason.clone());
                self.events.push(SagaEvent::CompensationStarted {
                    reason: reason.clone(),
                });
                self.finish_compensation();
            }
            SagaStatus::Running => {
                if let Some(i) = self.s.current_step {
                    if matches!(
                        self.s.steps[i].status,
                        StepStatus::Running | StepStatus::WaitingRetry
                    ) {
                        let step = &self.def.steps[i];
                        if !step.kind.undoable()
                            || matches!(step.compensation, Compensation::Missing)
                        {
                            // Past the point of no return: interrupting a step that
                            // cannot be undone would leave its outcome unknown and the
                            // saga FAILED. It is left to finish; a definite failure of
                            // the pivot still compensates the steps before it.
                            let name = self.s.steps[i].name.clone();
                            let kind = step.kind;
                            return self.ignore(format!(
                                "{reason}: not acted on, step `{name}` ({kind}) cannot be undone and is left to finish"
                            ));
                        }
                        self.disarm_step(i);
                        self.mark_in_doubt(i, reason.clone());
                    }
                }
                self.begin_compensation(reason);
            }
            _ => self.ignore(format!("cancel while {}", self.s.status)),
        }
    }

    // ---- compensation ----

    fn compensation_of(&self, i: usize) -> Option<&crate::definition::CompensationDefinition> {
        self.def.steps[i].compensation.action()
    }

    fn begin_compensation(&mut self, reason: String) {
        self.s.status = SagaStatus::Compensating;
        self.s.compensation_reason = Some(reason.clone());
        self.effects.push(Effect::CancelTimer {
            key: TimerKey::deadline(),
        });
        self.events.push(SagaEvent::CompensationStarted { reason });
        self.next_compensation();
    }

    /// Undoes the latest step that completed or is in doubt; finishes when none is left.
    fn next_compensation(&mut self) {
        while let Some(i) = self
            .s
            .steps
            .iter()
            .rposition(|s| matches!(s.status, StepStatus::Completed | StepStatus::InDoubt))
        {
            let name = self.s.steps[i].name.clone();
            match &self.def.steps[i].compensation {
                Compensation::Action(_) => return self.send_compensation(i, 1),
                Compensation::NotNeeded => {
                    self.s.steps[i].status = StepStatus::CompensationSkipped;
                    self.events
                        .push(SagaEvent::CompensationSkipped { step: name });
                }
                Compensation::Missing => {
                    let reason =
                        "no compensation declared; the step's outcome is unknown".to_string();
                    self.s.steps[i].status = StepStatus::CompensationFailed;
                    self.s.steps[i].error = Some(reason.clone());
                    self.events
                        .push(SagaEvent::CompensationFailed { step: name, reason });
                }
            }
        }
        self.finish_compensation();
    }

    fn send_compensation(&mut self, i: usize, attempt: u32) {
        let Some(comp) = self.compensation_of(i).cloned() else {
            return;
        };
        let def = &self.def.steps[i];
        let st = &mut self.s.steps[i];
        st.status = StepStatus::Compensating;
        st.compensation_attempts = attempt;
        self.s.current_step = Some(i);
        self.events.push(SagaEvent::CompensationStepStarted {
            step: def.name.clone(),
            attempt,
            action: comp.action.clone(),
        });
        self.effects.push(Effect::SendCommand(Command {
            step: def.name.clone(),
            service: def.service.clone(),
            action: comp.action.clone(),
            attempt,
            idempotency_key: idempotency_key(&self.s.saga_id, &def.name, &comp.action),
            compensation: true,
        }));
        self.arm(TimerKind::CompensationTimeout, i, attempt, comp.timeout);
    }

    fn compensation_reply(&mut self, i: usize, attempt: u32, outcome: &Outcome) {
        let name = self.s.steps[i].name.clone();
        let st = &self.s.steps[i];
        let sent = st.compensation_attempts;
        let awaiting = self.s.status == SagaStatus::Compensating
            && self.s.current_step == Some(i)
            && matches!(
                st.status,
                StepStatus::Compensating | StepStatus::WaitingCompensationRetry
            );
        if !awaiting || attempt == 0 || attempt > sent {
            return self.ignore(format!(
                "compensation reply of `{name}` attempt {attempt} not awaited (step is {})",
                st.status.as_str()
            ));
        }
        match outcome {
            Outcome::Ok { .. } => {
                self.disarm_step(i);
                let st = &mut self.s.steps[i];
                st.status = StepStatus::Compensated;
                st.finished_at = Some(self.now);
                self.events.push(SagaEvent::StepCompensated { step: name });
                self.next_compensation();
            }
            Outcome::BusinessFailure { reason } => {
                self.disarm_step(i);
                let reason = format!("compensation refused: {reason}");
                self.fail_compensation(i, reason);
            }
            Outcome::TechnicalFailure { reason } => {
                if attempt != sent || self.s.steps[i].status != StepStatus::Compensating {
                    return self.ignore(format!(
                        "technical failure of `{name}` compensation attempt {attempt} is stale"
                    ));
                }
                self.disarm_step(i);
                self.events.push(SagaEvent::CompensationAttemptFailed {
                    step: name,
                    attempt,
                    reason: reason.clone(),
                });
                self.compensation_retry_or_give_up(i, reason.clone());
            }
        }
    }

    fn compensation_retry_or_give_up(&mut self, i: usize, reason: String) {
        let Some(comp) = self.compensation_of(i).cloned() else {
            return;
        };
        let attempt = self.s.steps[i].compensation_attempts;
        self.s.steps[i].error = Some(reason.clone());
        if comp.retry.allows_retry_after(attempt) {
            let delay = comp
                .retry
                .delay(attempt, self.seed(i, &comp.action, attempt));
            self.s.steps[i].status = StepStatus::WaitingCompensationRetry;
            self.events.push(SagaEvent::CompensationRetryScheduled {
                step: self.s.steps[i].name.clone(),
                next_attempt: attempt + 1,
                delay,
            });
            self.arm(TimerKind::CompensationBackoff, i, attempt, delay);
        } else {
            let reason = format!("compensation gave up after {attempt} attempt(s): {reason}");
            self.fail_compensation(i, reason);
        }
    }

    fn fail_compensation(&mut self, i: usize, reason: String) {
        let st = &mut self.s.steps[i];
        st.status = StepStatus::CompensationFailed;
        st.finished_at = Some(self.now);
        st.error = Some(reason.clone());
        self.events.push(SagaEvent::CompensationFailed {
            step: st.name.clone(),
            reason,
        });
        // Keep undoing the others: as much as possible is rolled back before an
        // operator takes over.
        self.next_compensation();
    }

    fn finish_compensation(&mut self) {
        self.s.current_step = None;
        let reason = self.s.compensation_reason.clone().unwrap_or_default();
        let failed: Vec<String> = self
            .s
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::CompensationFailed)
            .map(|s| format!("{} ({})", s.name, s.error.as_deref().unwrap_or("")))
            .collect();
        if failed.is_empty() {
            self.s.status = SagaStatus::Compensated;
            self.events.push(SagaEvent::SagaCompensated {
                reason: reason.clone(),
            });
            if let Some(name) = &self.def.events.on_compensated {
                self.effects.push(Effect::EmitEvent(DomainEvent {
                    domain: self.def.events.domain.clone(),
                    name: name.clone(),
                    reason: Some(reason),
                }));
            }
            self.effects.push(Effect::Finish {
                status: SagaStatus::Compensated,
            });
        } else {
            let why = format!("could not undo: {}", failed.join("; "));
            self.s.status = SagaStatus::Failed;
            self.s.failure_reason = Some(why.clone());
            self.events.push(SagaEvent::SagaFailed { reason: why });
            self.effects.push(Effect::Finish {
                status: SagaStatus::Failed,
            });
        }
    }
}
