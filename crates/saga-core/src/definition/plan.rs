//! The compensation plan derived from the steps: which compensations run, in which
//! order, when a given step fails.

use super::{Compensation, SagaDefinition, StepKind};

/// How a step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A definite "no" from the service: the step did nothing, it is not compensated.
    Business,
    /// Timed out or technical failures exhausted: it may have happened, so it is
    /// compensated too.
    InDoubt,
}

/// What happens when one step fails and every step before it completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedScenario {
    /// The failing step.
    pub step: String,
    /// How it failed.
    pub kind: FailureKind,
    /// Compensating actions in the order they run.
    pub compensations: Vec<String>,
    /// Steps that would be compensated but declare no compensation (the saga then ends
    /// FAILED, for an operator).
    pub unresolved: Vec<String>,
    /// The step is not given up: a pivot or retriable step in doubt is tried again
    /// until it answers, and nothing is compensated.
    pub retried: bool,
    /// A retriable step refused: nothing after the point of no return is undone, the
    /// saga ends FAILED for an operator.
    pub refused_past_pivot: bool,
}

impl PlannedScenario {
    /// The terminal state the saga reaches if every compensation succeeds.
    pub fn outcome(&self) -> &'static str {
        if self.retried {
            "RETRIED until it answers"
        } else if self.refused_past_pivot || !self.unresolved.is_empty() {
            "FAILED"
        } else {
            "COMPENSATED"
        }
    }
}

impl SagaDefinition {
    /// The scenario where step `failed` fails as `kind` after all earlier steps completed.
    pub fn plan_for(&self, failed: usize, kind: FailureKind) -> PlannedScenario {
        let step = &self.steps[failed];
        let retried = kind == FailureKind::InDoubt && step.kind != StepKind::Compensatable;
        let refused_past_pivot = kind == FailureKind::Business && step.kind == StepKind::Retriable;
        if retried || refused_past_pivot {
            return PlannedScenario {
                step: step.name.clone(),
                kind,
                compensations: Vec::new(),
                unresolved: Vec::new(),
                retried,
                refused_past_pivot,
            };
        }
        let last = match kind {
            FailureKind::Business => failed,
            FailureKind::InDoubt => failed + 1,
        };
        let mut compensations = Vec::new();
        let mut unresolved = Vec::new();
        for step in self.steps[..last].iter().rev() {
            match &step.compensation {
                Compensation::Action(c) => compensations.push(c.action.clone()),
                Compensation::NotNeeded => {}
                Compensation::Missing => unresolved.push(step.name.clone()),
            }
        }
        PlannedScenario {
            step: self.steps[failed].name.clone(),
            kind,
            compensations,
            unresolved,
            retried: false,
            refused_past_pivot: false,
        }
    }

    /// Every single-failure scenario: each step failing definitely, then in doubt.
    pub fn derived_scenarios(&self) -> Vec<PlannedScenario> {
        (0..self.steps.len())
            .flat_map(|i| {
                [
                    self.plan_for(i, FailureKind::Business),
                    self.plan_for(i, FailureKind::InDoubt),
                ]
            })
            .collect()
    }
}
