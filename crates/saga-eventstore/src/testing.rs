//! Given/when/then for aggregates, without a store:
//! `AggregateTest::<A>::given(events).when(command).then_expect_events(...)`.

use crate::aggregate::{Aggregate, DomainError};

/// An aggregate rebuilt from past events, ready for one command.
#[derive(Debug)]
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// The aggregate after `events`.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for e in events {
            state.apply(&e);
        }
        Self { state }
    }

    /// An aggregate with no history.
    pub fn given_no_previous_events() -> Self {
        Self::given([])
    }

    /// Decides `command`.
    pub fn when(self, command: A::Command) -> Outcome<A> {
        let result = self.state.handle(command);
        Outcome {
            state: self.state,
            result,
        }
    }
}

/// What the command decided.
#[derive(Debug)]
pub struct Outcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, DomainError>,
}

impl<A: Aggregate> Outcome<A>
where
    A::Event: PartialEq,
{
    /// Asserts the command produced exactly `expected`; returns the state after them.
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> A {
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                let mut state = self.state;
                for e in &events {
                    state.apply(e);
                }
                state
            }
            Err(e) => panic!("expected events {expected:?}, the command was refused: {e}"),
        }
    }

    /// Asserts the command changed nothing (a repeated request).
    #[track_caller]
    pub fn then_expect_no_events(self) -> A {
        self.then_expect_events(Vec::new())
    }

    /// Asserts the command was refused for breaking `invariant`; returns the error.
    #[track_caller]
    pub fn then_expect_invariant(self, invariant: &str) -> DomainError {
        match self.result {
            Ok(events) => panic!("expected a refusal ({invariant}), got events {events:?}"),
            Err(e) => {
                assert_eq!(
                    e.invariant.as_deref(),
                    Some(invariant),
                    "refused for another reason: {e}"
                );
                e
            }
        }
    }

    /// Asserts the command was refused with a message containing `text`.
    #[track_caller]
    pub fn then_expect_error_containing(self, text: &str) -> DomainError {
        match self.result {
            Ok(events) => panic!("expected a refusal ({text}), got events {events:?}"),
            Err(e) => {
                assert!(
                    e.to_string().contains(text),
                    "refused with `{e}`, not `{text}`"
                );
                e
            }
        }
    }
}
