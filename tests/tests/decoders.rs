//! Every decoder that takes bytes from the network or the disk, fed random and mutated
//! input: it answers an error naming what is wrong, it never panics.
//!
//! The cases per target come from `FUZZ_CASES` (default 500, as CI runs it). The long
//! run (`docs/security.md`): `FUZZ_CASES=1000000 cargo test --release -p saga-e2e --test
//! decoders`. A crash found becomes a case of its own below.

use std::time::Duration;

use proptest::prelude::*;
use saga_core::definition::parse_definition;
use saga_ports::{Acker, Delivery, Headers, PortError, StoredSaga};
use saga_proto::{self as pb, Message};
use saga_runtime::envelope::{decode_input, decode_record};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Shrinking a panic is useful; shrinking thousands of non-failures is not.
        max_shrink_iters: 1000,
        ..ProptestConfig::default()
    }
}

#[derive(Debug)]
struct NoAck;

#[async_trait::async_trait]
impl Acker for NoAck {
    async fn ack(&self) -> Result<(), PortError> {
        Ok(())
    }
    async fn nak(&self, _: Option<Duration>) -> Result<(), PortError> {
        Ok(())
    }
    async fn term(&self) -> Result<(), PortError> {
        Ok(())
    }
    async fn in_progress(&self) -> Result<(), PortError> {
        Ok(())
    }
}

fn delivery(payload: Vec<u8>) -> Delivery {
    Delivery {
        subject: "saga.in.0.s-1".into(),
        headers: Headers::new(),
        payload,
        stream: "SAGA_INBOX".into(),
        stream_sequence: 1,
        delivered: 1,
        consumer: "saga-p0".into(),
        acker: Box::new(NoAck),
    }
}

/// Valid messages of every kind a decoder meets, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let order = pb::Payload {
        kind: Some(pb::payload::Kind::Order(pb::Order {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            items: vec![pb::OrderItem {
                sku: "sku-1".into(),
                quantity: 2,
                unit_price_cents: 1500,
            }],
            total_cents: 3000,
        })),
    };
    let start = pb::SagaInput {
        saga_id: "s-1".into(),
        saga_type: "OrderCheckout".into(),
        kind: Some(pb::saga_input::Kind::Start(pb::StartSaga {
            payload: Some(order.clone()),
            idempotency_key: "k".into(),
            requested_at: Some(pb::timestamp(1_700_000_000_000)),
        })),
    };
    let reply = pb::SagaInput {
        saga_id: "s-1".into(),
        saga_type: "OrderCheckout".into(),
        kind: Some(pb::saga_input::Kind::Reply(pb::StepReply {
            saga_id: "s-1".into(),
            step: "ReserveStock".into(),
            attempt: 1,
            idempotency_key: "s-1/ReserveStock/ReserveStock".into(),
            outcome: Some(pb::step_reply::Outcome::Ok(pb::StepOk {
                result: Some(order.clone()),
            })),
            ..Default::default()
        })),
    };
    let command = pb::StepCommand {
        saga_id: "s-1".into(),
        saga_type: "OrderCheckout".into(),
        step: "ChargePayment".into(),
        action: "ChargePayment".into(),
        attempt: 2,
        idempotency_key: "s-1/ChargePayment/ChargePayment".into(),
        payload: Some(order),
        reply_to: "saga.in.0.s-1".into(),
        ..Default::default()
    };
    let record = pb::JournalEvent {
        saga_id: "s-1".into(),
        saga_type: "OrderCheckout".into(),
        version: 3,
        recorded_at: Some(pb::timestamp(1_700_000_000_000)),
        input_id: "do:ReserveStock:1:ok".into(),
        snapshot: br#"{"state":{}}"#.to_vec(),
        ..Default::default()
    };
    vec![
        start.encode_to_vec(),
        reply.encode_to_vec(),
        command.encode_to_vec(),
        record.encode_to_vec(),
    ]
}

/// A seed with some bytes replaced, some cut off, or some inserted.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    (
        0..seeds.len(),
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        any::<Option<usize>>(),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(i, flips, cut, insert)| {
            let mut b = seeds[i].clone();
            for (at, v) in flips {
                if !b.is_empty() {
                    let n = b.len();
                    b[at % n] = v;
                }
            }
            if let Some(at) = cut {
                b.truncate(at % (b.len() + 1));
            }
            let at = insert.len() % (b.len() + 1);
            b.splice(at..at, insert);
            b
        })
}

/// Random bytes, or a mutated valid message.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..2048), mutated()]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn saga_inputs_decode_or_say_why(b in bytes()) {
        if let Err(why) = decode_input(&delivery(b)) {
            prop_assert!(!why.is_empty());
        }
    }

    #[test]
    fn journal_records_decode_or_say_why(b in bytes(), seq in any::<u64>()) {
        if let Err(why) = decode_record(seq, &b) {
            prop_assert!(!why.is_empty());
        }
    }

    #[test]
    fn step_commands_and_replies_decode_or_fail(b in bytes()) {
        if let Ok(cmd) = pb::StepCommand::decode(b.as_slice()) {
            // What a participant reads of it.
            if let Some(p) = cmd.payload {
                let _ = p.encoded_len();
            }
            let _ = saga_nats::names::check_token(&cmd.step);
        }
        let _ = pb::StepReply::decode(b.as_slice());
    }

    #[test]
    fn stored_sagas_decode_or_fail(b in bytes()) {
        let _ = serde_json::from_slice::<StoredSaga>(&b);
        let _ = serde_json::from_slice::<StoredSaga>(&b[b.len().min(1)..]);
    }

    #[test]
    fn definitions_parse_or_name_the_file(
        text in prop_oneof![
            ".{0,400}",
            mutated_yaml(),
        ]
    ) {
        if let Err(errors) = parse_definition("fuzz.yaml", &text) {
            prop_assert!(errors.to_string().contains("fuzz.yaml"), "{errors}");
        }
    }

    #[test]
    fn orders_validate_or_name_the_field(
        customer in ".{0,300}",
        items in prop::collection::vec((".{0,20}", any::<i64>(), any::<i64>()), 0..300),
    ) {
        let req = pb::PlaceOrderRequest {
            customer_id: customer,
            items: items
                .into_iter()
                .map(|(sku, quantity, unit_price_cents)| pb::OrderItem { sku, quantity, unit_price_cents })
                .collect(),
            idempotency_key: String::new(),
        };
        match saga_gateway::validate::order(&req, "order-1") {
            Ok(pb::Payload { kind: Some(pb::payload::Kind::Order(o)) }) => {
                prop_assert!(o.total_cents >= 0);
                prop_assert!(o.items.len() <= saga_gateway::validate::MAX_ITEMS);
            }
            Ok(other) => prop_assert!(false, "not an order: {other:?}"),
            Err(e) => prop_assert!(e.to_string().starts_with("customer_id") || e.to_string().starts_with("items"), "{e}"),
        }
    }
}

/// The shipped checkout definition with characters replaced.
fn mutated_yaml() -> impl Strategy<Value = String> {
    let text: Vec<char> = include_str!("../../sagas/order-checkout.yaml")
        .chars()
        .collect();
    prop::collection::vec((any::<usize>(), any::<char>()), 1..6).prop_map(move |edits| {
        let mut t = text.clone();
        for (at, c) in edits {
            let n = t.len();
            t[at % n] = c;
        }
        t.into_iter().collect()
    })
}

/// A reply whose result nests `depth` structs: decoding is bounded (prost's recursion
/// limit), never a stack overflow.
fn nested_reply(depth: usize) -> Vec<u8> {
    let mut value = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue("leaf".into())),
    };
    for _ in 0..depth {
        value = prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                fields: [("x".to_string(), value)].into(),
            })),
        };
    }
    let result = pb::Payload {
        kind: Some(pb::payload::Kind::Fields(prost_types::Struct {
            fields: [("deep".to_string(), value)].into(),
        })),
    };
    pb::SagaInput {
        saga_id: "s-1".into(),
        saga_type: "OrderCheckout".into(),
        kind: Some(pb::saga_input::Kind::Reply(pb::StepReply {
            saga_id: "s-1".into(),
            step: "ReserveStock".into(),
            attempt: 1,
            outcome: Some(pb::step_reply::Outcome::Ok(pb::StepOk {
                result: Some(result),
            })),
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

#[test]
fn deeply_nested_messages_are_refused_not_a_crash() {
    // Built (and dropped) on a big stack: encoding is recursive in the test's own code.
    let built = std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(|| [nested_reply(10), nested_reply(100), nested_reply(10_000)])
        .unwrap()
        .join()
        .unwrap();
    // Decoded on a small one: a decoder that recursed without bound would overflow it.
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let [ten, hundred, ten_thousand] = built;
            assert!(decode_input(&delivery(ten)).is_ok());
            let deep = decode_input(&delivery(hundred));
            assert!(deep.is_err(), "100 levels decode: {deep:?}");
            assert!(decode_input(&delivery(ten_thousand)).is_err());
        })
        .unwrap();
    handle.join().expect("no stack overflow");
}
