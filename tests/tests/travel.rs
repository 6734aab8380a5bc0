//! The seed's TravelBookingSaga: each failure scenario runs exactly the seed's
//! compensations, in that order, against the flight, hotel and payment participants.

use std::time::Duration;

use saga_core::definition::load_file;
use saga_e2e::*;
use saga_proto as pb;

const SAGA: &str = "TravelBookingSaga";

fn trip(flight: &str, hotel: &str, customer: &str) -> pb::Payload {
    let s = |v: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(v.into())),
    };
    let n = |v: f64| prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(v)),
    };
    pb::Payload {
        kind: Some(pb::payload::Kind::Fields(prost_types::Struct {
            fields: [
                ("flight".to_string(), s(flight)),
                ("hotel".to_string(), s(hotel)),
                ("customer_id".to_string(), s(customer)),
                ("amount_cents".to_string(), n(120_000.0)),
            ]
            .into(),
        })),
    }
}

/// The compensating actions a saga's journal shows, in order.
fn compensations(journal: &[pb::JournalEvent], def: &saga_core::SagaDefinition) -> Vec<String> {
    journal
        .iter()
        .flat_map(|e| &e.events)
        .filter(|t| t.kind() == pb::TransitionEventKind::CompensationStepStarted && t.attempt == 1)
        .map(|t| {
            def.steps
                .iter()
                .find(|s| s.name == t.step)
                .and_then(|s| s.compensation.action())
                .map(|c| c.action.clone())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_seed_failure_scenario_runs_exactly_the_seed_compensations() {
    let def = load_file(&repo().join("sagas/travel-booking.yaml"))
        .unwrap()
        .definition;
    let stack = Stack::new();
    let mut worker = stack.worker("worker", &[]);
    let mut ps = vec![
        stack.participant("flight", "flight", &[]),
        stack.participant("hotel", "hotel", &[]),
        stack.participant("payment", "payment", &[]),
    ];
    let js = stack.js().await;
    wait_provisioned(&js).await;
    let cases = [
        (
            "FlightReservationFailed",
            "trip-flight",
            trip("full-LH123", "Ritz", "frank"),
        ),
        (
            "HotelReservationFailed",
            "trip-hotel",
            trip("LH123", "full-Ritz", "frank"),
        ),
        (
            "PaymentFailed",
            "trip-payment",
            trip("LH123", "Ritz", "decline-frank"),
        ),
        ("(none)", "trip-ok", trip("LH123", "Ritz", "frank")),
    ];
    for (_, id, payload) in &cases {
        start_saga(&js, SAGA, id, payload.clone()).await;
    }
    let ids: Vec<String> = cases.iter().map(|(_, id, _)| id.to_string()).collect();
    let states = wait_terminal(&js, SAGA, &ids, Duration::from_secs(60)).await;
    assert_eq!(
        states,
        [
            pb::SagaState::Compensated,
            pb::SagaState::Compensated,
            pb::SagaState::Compensated,
            pb::SagaState::Completed
        ]
    );
    for (scenario, id, _) in &cases[..3] {
        let seed = def
            .failure_scenarios
            .iter()
            .find(|s| s.name == *scenario)
            .unwrap();
        let got = compensations(&journal(&js, SAGA, id).await, &def);
        assert_eq!(got, seed.compensations, "{scenario}");
    }
    assert!(compensations(&journal(&js, SAGA, "trip-ok").await, &def).is_empty());
    stop_all(&mut worker, &mut ps);
    // Each reservation made was cancelled exactly once; none twice.
    let flights = assert_no_double_effect(&stack, "flight");
    assert_eq!(flights["reserveFlight"], 3);
    assert_eq!(flights["cancelFlightReservation"], 2);
    let hotels = assert_no_double_effect(&stack, "hotel");
    assert_eq!(hotels["reserveHotel"], 2);
    assert_eq!(hotels["cancelHotelReservation"], 1);
}
