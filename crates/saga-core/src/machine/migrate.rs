//! Moving a running saga from the definition version it started on to another
//! (`sagactl saga migrate`): explicit, checked against where the saga stands, and
//! journalled as a transition of its own.

use std::collections::BTreeMap;

use super::apply::fits;
use super::types::*;
use crate::definition::SagaDefinition;
use crate::ids::Timestamp;

/// How the steps of the old version map to the new, as `OLD=NEW` entries; a step not
/// named maps to the new step of the same name, when there is one.
pub type StepMap = BTreeMap<String, String>;

/// Reads `OLD=NEW` entries (`sagactl saga migrate --step-map`).
pub fn parse_step_map<S: AsRef<str>>(entries: &[S]) -> Result<StepMap, String> {
    let mut map = StepMap::new();
    for e in entries {
        let e = e.as_ref();
        let Some((old, new)) = e.split_once('=') else {
            return Err(format!("step map entry `{e}` is not OLD=NEW"));
        };
        let (old, new) = (old.trim(), new.trim());
        if old.is_empty() || new.is_empty() {
            return Err(format!("step map entry `{e}` names no step on one side"));
        }
        if map.insert(old.to_string(), new.to_string()).is_some() {
            return Err(format!("step `{old}` is mapped twice"));
        }
    }
    Ok(map)
}

/// The new step each step of `from` becomes (index into `to`'s steps), or why the map
/// itself is wrong (names a step that does not exist, maps two steps to one).
fn resolve(
    from: &SagaDefinition,
    to: &SagaDefinition,
    map: &StepMap,
) -> Result<Vec<Option<usize>>, Vec<String>> {
    let mut problems = Vec::new();
    for (old, new) in map {
        if !from.steps.iter().any(|s| &s.name == old) {
            problems.push(format!(
                "--step-map names `{old}`, which is not a step of the old version"
            ));
        }
        if !to.steps.iter().any(|s| &s.name == new) {
            problems.push(format!(
                "--step-map names `{new}`, which is not a step of the new version"
            ));
        }
    }
    let images: Vec<Option<usize>> = from
        .steps
        .iter()
        .map(|s| {
            let name = map.get(&s.name).unwrap_or(&s.name);
            to.steps.iter().position(|t| &t.name == name)
        })
        .collect();
    for (i, a) in images.iter().enumerate() {
        for (j, b) in images.iter().enumerate().skip(i + 1) {
            if a.is_some() && a == b {
                problems.push(format!(
                    "`{}` and `{}` would both become `{}`",
                    from.steps[i].name,
                    from.steps[j].name,
                    to.steps[a.unwrap_or_default()].name
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(images)
    } else {
        Err(problems)
    }
}

/// Every reason saga `state`, on version `from`, cannot move to version `to` with `map`
/// (empty: it can). The rules:
/// - the saga runs forward (a compensating or ended saga finishes on its version);
/// - every step that has started has a counterpart in the new version that sends the
///   same command, has the same compensating action and the same kind (what it did
///   and how it is undone do not change under it);
/// - a step in flight keeps its name (its reply and its timers name it);
/// - the steps that have started keep their order, and every new step before the
///   furthest of them is one of them (a step inserted behind the saga would never run).
pub fn migration_problems(
    from: &SagaDefinition,
    to: &SagaDefinition,
    state: &SagaState,
    map: &StepMap,
) -> Vec<String> {
    let mut problems = Vec::new();
    if from.name != to.name {
        problems.push(format!(
            "the versions are of different saga types (`{}`, `{}`)",
            from.name, to.name
        ));
        return problems;
    }
    if let Err(why) = fits(from, state) {
        problems.push(format!("the saga does not fit its own version: {why}"));
        return problems;
    }
    match state.status {
        SagaStatus::Running => {}
        SagaStatus::Pending => problems.push("the saga has not started".into()),
        SagaStatus::Compensating => {
            problems.push("the saga is compensating: it finishes on its version".into())
        }
        s => problems.push(format!("the saga is already {s}")),
    }
    let images = match resolve(from, to, map) {
        Ok(images) => images,
        Err(mut p) => {
            problems.append(&mut p);
            return problems;
        }
    };
    let mut last: Option<usize> = None;
    let mut started_images = Vec::new();
    for (i, step) in state.steps.iter().enumerate() {
        if step.status == StepStatus::NotStarted {
            continue;
        }
        let old = &from.steps[i];
        let Some(j) = images[i] else {
            problems.push(format!(
                "step `{}` has run and the new version has no step of that name \
                 (map it with --step-map {}=NEW)",
                old.name, old.name
            ));
            continue;
        };
        let new = &to.steps[j];
        if (old.service.as_str(), old.action.as_str())
            != (new.service.as_str(), new.action.as_str())
        {
            problems.push(format!(
                "step `{}` sent {}.{}; `{}` of the new version sends {}.{}",
                old.name, old.service, old.action, new.name, new.service, new.action
            ));
        }
        let undo = |c: &crate::definition::Compensation| c.action().map(|c| c.action.clone());
        if undo(&old.compensation) != undo(&new.compensation) {
            let show = |a: Option<String>| a.unwrap_or_else(|| "nothing".into());
            problems.push(format!(
                "step `{}` is undone by {}; `{}` of the new version by {}",
                old.name,
                show(undo(&old.compensation)),
                new.name,
                show(undo(&new.compensation))
            ));
        }
        if old.kind != new.kind {
            problems.push(format!(
                "step `{}` is {}; `{}` of the new version is {}",
                old.name,
                old.kind.as_str(),
                new.name,
                new.kind.as_str()
            ));
        }
        if state.current_step == Some(i) && new.name != old.name {
            problems.push(format!(
                "step `{}` is in flight: its reply and its timers name it, so it keeps \
                 its name (migrate once it has finished)",
                old.name
            ));
        }
        if let Some(prev) = last {
            if j <= prev {
                problems.push(format!(
                    "step `{}` would move before `{}`, which ran before it",
                    old.name, to.steps[prev].name
                ));
            }
        }
        last = Some(j);
        started_images.push(j);
    }
    if let Some(furthest) = last {
        for (j, step) in to.steps.iter().enumerate().take(furthest) {
            if !started_images.contains(&j) {
                problems.push(format!(
                    "step `{}` of the new version comes before where the saga stands \
                     and would never run",
                    step.name
                ));
            }
        }
    }
    problems
}

/// The transition that refuses migration `input` for reason `why`: the saga is left
/// where it stands, on its version, and the refusal is journalled (`INPUT_IGNORED`).
pub fn refuse(state: &SagaState, input: &Input, now: Timestamp, why: &str) -> Transition {
    let mut s = state.clone();
    s.version += 1;
    s.updated_at = now;
    s.applied_inputs.insert(input.id());
    let to = match input {
        Input::Migrate { to, .. } => to.as_str(),
        _ => "?",
    };
    Transition {
        state: s,
        events: vec![SagaEvent::InputIgnored {
            reason: format!("migration to version {to} refused: {why}"),
        }],
        effects: Vec::new(),
    }
}

/// The transition that moves a saga to version `to` (digest `to_version`): its steps
/// become the new version's, the steps that started carrying their progress over, and
/// it goes on from where it stands. Sends nothing, arms and cancels no timer. When the
/// saga cannot move ([`migration_problems`]), the input is ignored with every reason,
/// and the saga finishes on its version.
pub fn migrate(
    from: &SagaDefinition,
    to: &SagaDefinition,
    to_version: &str,
    state: &SagaState,
    map: &StepMap,
    input: &Input,
    now: Timestamp,
) -> Transition {
    let mut problems = Vec::new();
    if state.definition_version == to_version {
        problems.push(format!("the saga already runs on version {to_version}"));
    }
    problems.extend(migration_problems(from, to, state, map));
    if !problems.is_empty() {
        return refuse(state, input, now, &problems.join("; "));
    }
    let mut s = state.clone();
    s.version += 1;
    s.updated_at = now;
    s.applied_inputs.insert(input.id());
    let images = resolve(from, to, map).unwrap_or_default();
    let mut steps: Vec<StepState> = to
        .steps
        .iter()
        .map(|t| StepState::not_started(&t.name))
        .collect();
    let mut renamed = Vec::new();
    for (i, old) in state.steps.iter().enumerate() {
        if let (Some(j), false) = (images[i], old.status == StepStatus::NotStarted) {
            if old.name != to.steps[j].name {
                renamed.push(format!("{}={}", old.name, to.steps[j].name));
            }
            steps[j] = StepState {
                name: to.steps[j].name.clone(),
                ..old.clone()
            };
        }
    }
    s.steps = steps;
    s.current_step = state.current_step.and_then(|i| images[i]);
    let from_version = std::mem::replace(&mut s.definition_version, to_version.to_string());
    Transition {
        state: s,
        events: vec![SagaEvent::Migrated {
            from: from_version,
            to: to_version.to_string(),
            renamed: renamed.join(", "),
        }],
        effects: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply;
    use crate::definition::parse_definition;
    use crate::ids::SagaId;
    use crate::testing::{ok, start};

    const V1: &str = include_str!("../../../../sagas/order-checkout.yaml");

    /// The checkout as given, without its failure table (each variant would need its own).
    fn def(text: &str) -> SagaDefinition {
        let (head, rest) = text.split_once("  failureScenarios:").unwrap();
        let tail = &rest[rest.find("  invariants:").unwrap()..];
        parse_definition("order-checkout.yaml", &format!("{head}{tail}"))
            .unwrap()
            .definition
    }

    /// V2: `ReserveStock` renamed `ReserveItems`, a `ScreenFraud` step added after
    /// `ChargePayment`.
    fn v2() -> SagaDefinition {
        let text = V1.replace("- name: ReserveStock", "- name: ReserveItems").replace(
            "    # The pivot:",
            "    - name: ScreenFraud\n      service: fraud\n      action: ScreenOrder\n      compensation: ClearScreening\n      timeout: 5s\n      retryPolicy: exponentialBackoff(3)\n    # The pivot:",
        );
        def(&text)
    }

    fn run(def: &SagaDefinition, inputs: &[Input]) -> SagaState {
        let mut s = SagaState::new(def, SagaId::parse("m-1").unwrap(), 1_000);
        s.definition_version = "v1".into();
        for (i, input) in inputs.iter().enumerate() {
            s = apply(def, &s, input, 1_001 + i as u64).state;
        }
        s
    }

    fn map(entries: &[&str]) -> StepMap {
        parse_step_map(entries).unwrap()
    }

    fn migrate_input(m: &StepMap) -> Input {
        Input::Migrate {
            to: "v2".into(),
            step_map: m.clone(),
        }
    }

    #[test]
    fn a_running_saga_moves_with_its_progress_and_goes_on_into_the_new_step() {
        let (from, to) = (def(V1), v2());
        let state = run(&from, &[start(), ok("ReserveStock", 1)]);
        let m = map(&["ReserveStock=ReserveItems"]);
        assert_eq!(
            migration_problems(&from, &to, &state, &m),
            Vec::<String>::new()
        );
        let t = migrate(&from, &to, "v2", &state, &m, &migrate_input(&m), 5_000);
        assert_eq!(
            t.events,
            [SagaEvent::Migrated {
                from: "v1".into(),
                to: "v2".into(),
                renamed: "ReserveStock=ReserveItems".into()
            }]
        );
        assert!(t.effects.is_empty(), "a migration sends nothing");
        let s = &t.state;
        assert_eq!(s.definition_version, "v2");
        let names: Vec<_> = s.steps.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ReserveItems",
                "ChargePayment",
                "ScreenFraud",
                "ConfirmOrder"
            ]
        );
        assert_eq!(s.steps[0].status, StepStatus::Completed);
        assert_eq!(s.steps[1].status, StepStatus::Running);
        assert_eq!(s.current_step, Some(1));
        assert!(fits(&to, s).is_ok());
        // The in-flight step's reply is applied by the new version, which goes on into
        // the step it added.
        let next = apply(&to, s, &ok("ChargePayment", 1), 6_000);
        let sent: Vec<_> = next
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::SendCommand(c) => Some(c.action.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(sent, ["ScreenOrder"]);
    }

    #[test]
    fn a_step_that_ran_and_vanished_without_a_map_is_refused_and_the_saga_is_unchanged() {
        let (from, to) = (def(V1), v2());
        let state = run(&from, &[start(), ok("ReserveStock", 1)]);
        let m = StepMap::new();
        let problems = migration_problems(&from, &to, &state, &m);
        assert!(
            problems[0].contains("--step-map ReserveStock=NEW"),
            "{problems:?}"
        );
        let t = migrate(&from, &to, "v2", &state, &m, &migrate_input(&m), 5_000);
        assert!(
            matches!(&t.events[..], [SagaEvent::InputIgnored { reason }] if reason.starts_with("migration to version v2 refused")),
            "{:?}",
            t.events
        );
        assert_eq!(t.state.steps, state.steps);
        assert_eq!(t.state.definition_version, "v1");
    }

    #[test]
    fn the_step_in_flight_keeps_its_name() {
        let (from, to) = (def(V1), v2());
        let state = run(&from, &[start()]);
        let problems = migration_problems(&from, &to, &state, &map(&["ReserveStock=ReserveItems"]));
        assert!(
            problems.iter().any(|p| p.contains("is in flight")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_step_added_behind_the_saga_or_a_changed_command_is_refused() {
        let from = def(V1);
        // A new first step: the saga has passed it, it would never run.
        let to = def(&V1.replace(
            "  steps:\n",
            "  steps:\n    - name: Quote\n      service: pricing\n      action: Quote\n      compensation: Unquote\n      timeout: 5s\n",
        ));
        let state = run(&from, &[start(), ok("ReserveStock", 1)]);
        let problems = migration_problems(&from, &to, &state, &StepMap::new());
        assert!(
            problems
                .iter()
                .any(|p| p.contains("`Quote`") && p.contains("never run")),
            "{problems:?}"
        );
        // The same step now undone by another action.
        let to = def(&V1.replace("compensation: ReleaseStock", "compensation: FreeStock"));
        let problems = migration_problems(&from, &to, &state, &StepMap::new());
        assert!(
            problems
                .iter()
                .any(|p| p.contains("undone by ReleaseStock")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_compensating_saga_finishes_on_its_version() {
        let (from, to) = (def(V1), v2());
        let state = run(
            &from,
            &[
                start(),
                ok("ReserveStock", 1),
                crate::testing::business("ChargePayment", 1, "declined"),
            ],
        );
        assert_eq!(state.status, SagaStatus::Compensating);
        let problems = migration_problems(&from, &to, &state, &map(&["ReserveStock=ReserveItems"]));
        assert!(
            problems.iter().any(|p| p.contains("compensating")),
            "{problems:?}"
        );
    }

    #[test]
    fn step_maps_are_read_strictly() {
        assert!(parse_step_map(&["A"]).unwrap_err().contains("not OLD=NEW"));
        assert!(parse_step_map(&["A=B", "A=C"])
            .unwrap_err()
            .contains("mapped twice"));
        let (from, to) = (def(V1), v2());
        let state = run(&from, &[start(), ok("ReserveStock", 1)]);
        let problems = migration_problems(&from, &to, &state, &map(&["Nope=ReserveItems"]));
        assert!(
            problems.iter().any(|p| p.contains("`Nope`")),
            "{problems:?}"
        );
    }
}
