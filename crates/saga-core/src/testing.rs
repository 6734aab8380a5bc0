//! Given/when/then helpers for saga logic (feature `test-util`), after cqrs-es's
//! `TestFramework`:
//!
//! ```
//! use saga_core::testing::*;
//! let def = saga_core::definition::parse_definition("t.yaml", TWO_STEPS).unwrap().definition;
//! SagaTest::new(def)
//!     .given([start(), ok("A", 1)])
//!     .when(business("B", 1, "no"))
//!     .then_commands(&[("A", "undoA", 1)])
//!     .then_status(saga_core::SagaStatus::Compensating);
//! ```

use std::collections::BTreeMap;

use crate::definition::SagaDefinition;
use crate::ids::{SagaId, Timestamp};
use crate::machine::*;

/// A two-step saga (`A` with compensation `undoA`, then `B`), for examples.
pub const TWO_STEPS: &str = "saga:\n  name: Two\n  steps:\n    - name: A\n      service: svc\n      action: doA\n      compensation: undoA\n      timeout: 1s\n      retryPolicy: exponentialBackoff(1)\n    - name: B\n      service: svc\n      action: doB\n      timeout: 1s\n";

/// Start with an empty payload.
pub fn start() -> Input {
    Input::Start {
        payload: Vec::new(),
    }
}

/// A successful step reply.
pub fn ok(step: &str, attempt: u32) -> Input {
    Input::StepReply {
        step: step.into(),
        attempt,
        outcome: Outcome::Ok { result: Vec::new() },
    }
}

/// A business-failure step reply.
pub fn business(step: &str, attempt: u32, reason: &str) -> Input {
    Input::StepReply {
        step: step.into(),
        attempt,
        outcome: Outcome::BusinessFailure {
            reason: reason.into(),
        },
    }
}

/// A technical-failure step reply.
pub fn technical(step: &str, attempt: u32, reason: &str) -> Input {
    Input::StepReply {
        step: step.into(),
        attempt,
        outcome: Outcome::TechnicalFailure {
            reason: reason.into(),
        },
    }
}

/// A compensation reply.
pub fn compensated(step: &str, attempt: u32, outcome: Outcome) -> Input {
    Input::CompensationReply {
        step: step.into(),
        attempt,
        outcome,
    }
}

/// A firing timer.
pub fn fired(kind: TimerKind, step: &str, attempt: u32) -> Input {
    Input::TimerFired(TimerKey {
        kind,
        step: step.into(),
        attempt,
    })
}

/// A saga under test: `given` past inputs, `when` one more, `then` assertions.
#[derive(Debug)]
pub struct SagaTest {
    def: SagaDefinition,
    state: SagaState,
    now: Timestamp,
}

impl SagaTest {
    /// A pending saga `saga-1` at time 1,000,000.
    pub fn new(def: SagaDefinition) -> Self {
        let now = 1_000_000;
        let state = SagaState::new(&def, SagaId::parse("saga-1").expect("valid id"), now);
        Self { def, state, now }
    }

    /// Applies past inputs (their effects are not checked).
    pub fn given(mut self, inputs: impl IntoIterator<Item = Input>) -> Self {
        for input in inputs {
            self.now += 1;
            self.state = apply(&self.def, &self.state, &input, self.now).state;
        }
        self
    }

    /// Moves time forward.
    pub fn advance(mut self, ms: u64) -> Self {
        self.now += ms;
        self
    }

    /// Applies the input under test.
    pub fn when(self, input: Input) -> Then {
        let now = self.now + 1;
        let transition = apply(&self.def, &self.state, &input, now);
        // Determinism: the same state and input give the same transition.
        assert_eq!(transition, apply(&self.def, &self.state, &input, now));
        Then {
            def: self.def,
            transition,
        }
    }
}

/// Assertions on a transition.
#[derive(Debug)]
pub struct Then {
    def: SagaDefinition,
    transition: Transition,
}

impl Then {
    /// Exactly these effects, in order.
    pub fn then_effects(self, expected: &[Effect]) -> Self {
        assert_eq!(self.transition.effects, expected, "effects");
        self
    }

    /// Exactly these commands `(step, action, attempt)`, in order.
    pub fn then_commands(self, expected: &[(&str, &str, u32)]) -> Self {
        let got: Vec<(String, String, u32)> = self
            .transition
            .commands()
            .map(|c| (c.step.clone(), c.action.clone(), c.attempt))
            .collect();
        let want: Vec<(String, String, u32)> = expected
            .iter()
            .map(|(s, a, n)| (s.to_string(), a.to_string(), *n))
            .collect();
        assert_eq!(got, want, "commands");
        self
    }

    /// The saga's status after the input.
    pub fn then_status(self, status: SagaStatus) -> Self {
        assert_eq!(self.transition.state.status, status, "status");
        self
    }

    /// A step's status after the input.
    pub fn then_step(self, step: &str, status: StepStatus) -> Self {
        let st = self
            .transition
            .state
            .steps
            .iter()
            .find(|s| s.name == step)
            .unwrap_or_else(|| panic!("no step {step}"));
        assert_eq!(st.status, status, "status of step {step}");
        self
    }

    /// The input changed nothing and caused no effect.
    pub fn then_ignored(self) -> Self {
        assert!(
            self.transition.is_ignored(),
            "expected ignored, got {:?}",
            self.transition.events
        );
        assert!(
            self.transition.effects.is_empty(),
            "{:?}",
            self.transition.effects
        );
        self
    }

    /// The journal events contain this one.
    pub fn then_event(self, event: SagaEvent) -> Self {
        assert!(
            self.transition.events.contains(&event),
            "{event:?} not in {:?}",
            self.transition.events
        );
        self
    }

    /// The transition, for custom assertions.
    pub fn transition(&self) -> &Transition {
        &self.transition
    }

    /// The definition.
    pub fn definition(&self) -> &SagaDefinition {
        &self.def
    }
}

/// Runs a saga to its end against scripted participants: every command gets the
/// outcome the script gives (or, for `None`, no reply, so its timer fires), and timers
/// fire in deadline order. Records every command sent.
#[derive(Debug)]
pub struct Simulation<'d> {
    def: &'d SagaDefinition,
    /// Current state.
    pub state: SagaState,
    /// Current time.
    pub now: Timestamp,
    /// Every command sent, in order.
    pub commands: Vec<Command>,
    /// Every journal event, in order.
    pub events: Vec<SagaEvent>,
    /// Every domain event emitted.
    pub emitted: Vec<DomainEvent>,
    /// Armed timers by key.
    pub timers: BTreeMap<TimerKey, Timestamp>,
    /// Effects seen after the saga was terminal (must stay empty).
    pub effects_after_end: Vec<Effect>,
}

impl<'d> Simulation<'d> {
    /// A pending saga.
    pub fn new(def: &'d SagaDefinition, saga_id: &str) -> Self {
        let now = 1_000_000;
        Self {
            def,
            state: SagaState::new(def, SagaId::parse(saga_id).expect("valid id"), now),
            now,
            commands: Vec::new(),
            events: Vec::new(),
            emitted: Vec::new(),
            timers: BTreeMap::new(),
            effects_after_end: Vec::new(),
        }
    }

    /// Applies one input and records what it caused.
    pub fn feed(&mut self, input: &Input) -> Transition {
        let was_terminal = self.state.status.is_terminal();
        let t = apply(self.def, &self.state, input, self.now);
        if was_terminal {
            self.effects_after_end.extend(t.effects.iter().cloned());
        }
        for e in &t.effects {
            match e {
                Effect::SendCommand(c) => self.commands.push(c.clone()),
                Effect::ArmTimer { key, at, .. } => {
                    self.timers.insert(key.clone(), *at);
                }
                Effect::CancelTimer { key } => {
                    self.timers.remove(key);
                }
                Effect::EmitEvent(d) => self.emitted.push(d.clone()),
                Effect::Finish { .. } => {}
            }
        }
        self.events.extend(t.events.iter().cloned());
        self.state = t.state.clone();
        t
    }

    /// Fires the earliest armed timer, moving time to it. False when none is armed.
    pub fn fire_next_timer(&mut self) -> bool {
        let Some((key, at)) = self
            .timers
            .iter()
            .min_by_key(|(k, at)| (**at, (*k).clone()))
            .map(|(k, at)| (k.clone(), *at))
        else {
            return false;
        };
        self.timers.remove(&key);
        self.now = self.now.max(at);
        self.feed(&Input::TimerFired(key));
        true
    }

    /// Runs to a terminal state. `script(command) -> Some(outcome)` answers a command
    /// at once; `None` leaves it unanswered. Panics after `max_inputs` inputs.
    pub fn run(
        &mut self,
        mut script: impl FnMut(&Command) -> Option<Outcome>,
        max_inputs: usize,
    ) -> SagaStatus {
        if self.state.status == SagaStatus::Pending {
            self.feed(&Input::Start {
                payload: b"{}".to_vec(),
            });
        }
        let mut answered = 0;
        for _ in 0..max_inputs {
            if self.state.status.is_terminal() {
                return self.state.status;
            }
            if answered < self.commands.len() {
                let cmd = self.commands[answered].clone();
                answered += 1;
                if let Some(outcome) = script(&cmd) {
                    self.now += 1;
                    let input = if cmd.compensation {
                        Input::CompensationReply {
                            step: cmd.step.clone(),
                            attempt: cmd.attempt,
                            outcome,
                        }
                    } else {
                        Input::StepReply {
                            step: cmd.step.clone(),
                            attempt: cmd.attempt,
                            outcome,
                        }
                    };
                    self.feed(&input);
                }
                continue;
            }
            if !self.fire_next_timer() {
                break;
            }
        }
        assert!(
            self.state.status.is_terminal(),
            "saga did not end: {:?}",
            self.state
        );
        self.state.status
    }

    /// The compensating actions sent, first attempt of each, in order.
    pub fn compensations(&self) -> Vec<String> {
        self.commands
            .iter()
            .filter(|c| c.compensation && c.attempt == 1)
            .map(|c| c.action.clone())
            .collect()
    }
}
