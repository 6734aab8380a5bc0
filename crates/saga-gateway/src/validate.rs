//! Validation of client requests. Every refusal is an
//! [`GatewayError::InvalidArgument`] naming the field (`items[2].quantity: ...`).

use saga_core::SagaId;
use saga_proto::{self as pb, Message};

use crate::GatewayError;

/// Largest encoded saga payload accepted (`Payload` of PlaceOrder, the `payload` Struct
/// of StartSaga): 64 KiB. Sagas carry their payload in every command; large documents
/// belong in a store the participants read, referenced by id.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Longest idempotency key, customer id, SKU or saga type accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest cancellation reason accepted, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// A saga id given by a client (`saga_id: malformed saga id ...`).
pub fn saga_id(id: &str) -> Result<SagaId, GatewayError> {
    SagaId::parse(id).map_err(|e| GatewayError::invalid("saga_id", e.to_string()))
}

/// Lines of one order.
pub const MAX_ITEMS: usize = 256;

/// The idempotency key, if any: at most [`MAX_KEY_BYTES`].
pub fn idempotency_key(key: &str) -> Result<Option<String>, GatewayError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(GatewayError::invalid(
            "idempotency_key",
            format!("at most {MAX_KEY_BYTES} bytes (got {})", key.len()),
        ));
    }
    Ok((!key.is_empty()).then(|| key.to_string()))
}

/// The reason of a cancellation.
pub fn reason(reason: &str) -> Result<(), GatewayError> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(GatewayError::invalid(
            "reason",
            format!("at most {MAX_REASON_BYTES} bytes (got {})", reason.len()),
        ));
    }
    Ok(())
}

/// The `Order` of a PlaceOrder request, with its total, for saga `order_id`.
pub fn order(req: &pb::PlaceOrderRequest, order_id: &str) -> Result<pb::Payload, GatewayError> {
    if req.customer_id.trim().is_empty() {
        return Err(GatewayError::invalid("customer_id", "required"));
    }
    if req.customer_id.len() > MAX_KEY_BYTES {
        return Err(GatewayError::invalid(
            "customer_id",
            format!(
                "at most {MAX_KEY_BYTES} bytes (got {})",
                req.customer_id.len()
            ),
        ));
    }
    if req.items.is_empty() {
        return Err(GatewayError::invalid(
            "items",
            "at least one item is required",
        ));
    }
    if req.items.len() > MAX_ITEMS {
        return Err(GatewayError::invalid(
            "items",
            format!("at most {MAX_ITEMS} lines (got {})", req.items.len()),
        ));
    }
    let mut total: i64 = 0;
    for (i, item) in req.items.iter().enumerate() {
        let field = |name: &str| format!("items[{i}].{name}");
        if item.sku.trim().is_empty() {
            return Err(GatewayError::invalid(field("sku"), "required"));
        }
        if item.sku.len() > MAX_KEY_BYTES {
            return Err(GatewayError::invalid(
                field("sku"),
                format!("at most {MAX_KEY_BYTES} bytes (got {})", item.sku.len()),
            ));
        }
        if item.quantity <= 0 {
            return Err(GatewayError::invalid(
                field("quantity"),
                format!("must be positive (got {})", item.quantity),
            ));
        }
        if item.unit_price_cents < 0 {
            return Err(GatewayError::invalid(
                field("unit_price_cents"),
                format!("must not be negative (got {})", item.unit_price_cents),
            ));
        }
        total = item
            .quantity
            .checked_mul(item.unit_price_cents)
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| {
                GatewayError::invalid(format!("items[{i}]"), "the order total overflows")
            })?;
    }
    let payload = pb::Payload {
        kind: Some(pb::payload::Kind::Order(pb::Order {
            order_id: order_id.to_string(),
            customer_id: req.customer_id.clone(),
            items: req.items.clone(),
            total_cents: total,
        })),
    };
    let size = payload.encoded_len();
    if size > MAX_PAYLOAD_BYTES {
        return Err(GatewayError::invalid(
            "items",
            format!("the order encodes to {size} bytes, over the limit of {MAX_PAYLOAD_BYTES}"),
        ));
    }
    Ok(payload)
}

/// The saga type of a StartSaga request: one of `loaded`.
pub fn saga_type<'a>(
    saga_type: &str,
    mut loaded: impl Iterator<Item = &'a String> + Clone,
) -> Result<(), GatewayError> {
    if loaded.clone().any(|t| t == saga_type) {
        return Ok(());
    }
    let names: Vec<&str> = loaded.by_ref().map(String::as_str).collect();
    let what = if saga_type.is_empty() {
        "required".to_string()
    } else {
        let shown: String = saga_type.chars().take(MAX_KEY_BYTES).collect();
        format!("unknown `{shown}`")
    };
    Err(GatewayError::invalid(
        "saga_type",
        format!("{what} (loaded: {})", names.join(", ")),
    ))
}

/// The payload of a StartSaga request (absent: no payload).
pub fn struct_payload(
    payload: Option<&prost_types::Struct>,
) -> Result<Option<pb::Payload>, GatewayError> {
    let Some(fields) = payload else {
        return Ok(None);
    };
    let payload = pb::Payload {
        kind: Some(pb::payload::Kind::Fields(fields.clone())),
    };
    let size = payload.encoded_len();
    if size > MAX_PAYLOAD_BYTES {
        return Err(GatewayError::invalid(
            "payload",
            format!("encodes to {size} bytes, over the limit of {MAX_PAYLOAD_BYTES}"),
        ));
    }
    Ok(Some(payload))
}

/// The state filter of ListSagas (UNSPECIFIED: any).
pub fn state_filter(state: i32) -> Result<Option<pb::SagaState>, GatewayError> {
    match pb::SagaState::try_from(state) {
        Ok(pb::SagaState::Unspecified) => Ok(None),
        Ok(s) => Ok(Some(s)),
        Err(_) => Err(GatewayError::invalid(
            "state",
            format!("unknown value {state}"),
        )),
    }
}

/// Default page size of ListSagas.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size of ListSagas.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The page size of ListSagas: 0 means [`DEFAULT_PAGE_SIZE`].
pub fn page_size(size: i32) -> Result<usize, GatewayError> {
    match usize::try_from(size) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) if n <= MAX_PAGE_SIZE => Ok(n),
        _ => Err(GatewayError::invalid(
            "page_size",
            format!("must be between 0 and {MAX_PAGE_SIZE} (got {size})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, quantity: i64, price: i64) -> pb::OrderItem {
        pb::OrderItem {
            sku: sku.into(),
            quantity,
            unit_price_cents: price,
        }
    }

    fn req(customer: &str, items: Vec<pb::OrderItem>) -> pb::PlaceOrderRequest {
        pb::PlaceOrderRequest {
            customer_id: customer.into(),
            items,
            idempotency_key: String::new(),
        }
    }

    #[test]
    fn an_order_has_at_most_max_items_lines() {
        let lines = |n| (0..n).map(|i| item(&format!("sku-{i}"), 1, 1)).collect();
        assert!(order(&req("c", lines(MAX_ITEMS)), "o").is_ok());
        assert_eq!(
            refusal(order(&req("c", lines(MAX_ITEMS + 1)), "o")),
            format!("items: at most {MAX_ITEMS} lines (got {})", MAX_ITEMS + 1)
        );
    }

    fn refusal(r: Result<pb::Payload, GatewayError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn orders_are_checked_field_by_field_and_totalled() {
        let ok = order(
            &req("alice", vec![item("a", 2, 150), item("b", 1, 0)]),
            "o-1",
        )
        .unwrap();
        let Some(pb::payload::Kind::Order(o)) = ok.kind else {
            panic!("not an order")
        };
        assert_eq!((o.order_id.as_str(), o.total_cents), ("o-1", 300));

        assert_eq!(
            refusal(order(&req(" ", vec![item("a", 1, 1)]), "o")),
            "customer_id: required"
        );
        assert_eq!(
            refusal(order(&req("c", vec![]), "o")),
            "items: at least one item is required"
        );
        assert_eq!(
            refusal(order(&req("c", vec![item("a", 1, 1), item("", 1, 1)]), "o")),
            "items[1].sku: required"
        );
        assert!(refusal(order(&req("c", vec![item("a", 0, 1)]), "o"))
            .starts_with("items[0].quantity: must be positive"));
        assert!(refusal(order(&req("c", vec![item("a", 1, -1)]), "o"))
            .starts_with("items[0].unit_price_cents: must not be negative"));
        assert!(refusal(order(&req("c", vec![item("a", i64::MAX, 2)]), "o"))
            .starts_with("items[0]: the order total overflows"));
        let many = (0..MAX_ITEMS)
            .map(|i| item(&format!("sku-{i:0246}"), 1, 1))
            .collect();
        assert!(refusal(order(&req("c", many), "o")).starts_with("items: the order encodes to"));
    }

    #[test]
    fn list_arguments_and_saga_types_are_checked() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(1000).unwrap(), 1000);
        assert!(page_size(1001)
            .unwrap_err()
            .to_string()
            .starts_with("page_size: "));
        assert!(page_size(-1).is_err());
        assert_eq!(state_filter(0).unwrap(), None);
        assert_eq!(state_filter(4).unwrap(), Some(pb::SagaState::Completed));
        assert_eq!(
            state_filter(42).unwrap_err().to_string(),
            "state: unknown value 42"
        );
        let loaded = ["OrderCheckout".to_string(), "TravelBookingSaga".to_string()];
        saga_type("OrderCheckout", loaded.iter()).unwrap();
        assert_eq!(
            saga_type("Nope", loaded.iter()).unwrap_err().to_string(),
            "saga_type: unknown `Nope` (loaded: OrderCheckout, TravelBookingSaga)"
        );
        assert!(saga_id("a.b")
            .unwrap_err()
            .to_string()
            .starts_with("saga_id: malformed"));
        assert!(idempotency_key(&"k".repeat(257)).is_err());
        assert_eq!(idempotency_key("").unwrap(), None);
    }

    #[test]
    fn oversized_struct_payloads_are_refused() {
        let big = prost_types::Struct {
            fields: [(
                "blob".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("x".repeat(70_000))),
                },
            )]
            .into(),
        };
        assert!(struct_payload(Some(&big))
            .unwrap_err()
            .to_string()
            .starts_with("payload: encodes to"));
        assert_eq!(struct_payload(None).unwrap(), None);
    }
}
