//! Event schemas against the Protobuf contract: each catalog event's message must exist
//! in `saga.v1` and carry every schema field with the written type; at runtime every
//! payload is decoded as its catalog message, and its idempotency key read by name.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use saga_core::catalog::{EventCatalog, FieldType};
use saga_core::definition::{DefinitionError, DefinitionErrors};

/// What a payload said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedEvent {
    /// The idempotency key's value (e.g. the order id).
    pub key: String,
    /// The `correlationId` field, when the schema has one and it is set.
    pub correlation_id: Option<String>,
}

/// Why a payload was refused. Not retryable: the message goes to the DLQ at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The event is not in the catalog.
    #[error("event `{0}` is not in the catalog")]
    UnknownEvent(String),
    /// The payload is not the catalog's message.
    #[error("payload does not decode as {message}: {detail}")]
    Undecodable {
        /// The catalog's message.
        message: String,
        /// The decoder's complaint.
        detail: String,
    },
    /// The payload decodes but does not carry its idempotency key.
    #[error("payload of {event} has no {field}: it cannot be deduplicated or ordered")]
    MissingKey {
        /// Event name.
        event: String,
        /// The key field.
        field: String,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    message: MessageDescriptor,
    key: FieldDescriptor,
    correlation: Option<FieldDescriptor>,
}

/// Decodes events of a checked catalog. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventCodec {
    entries: HashMap<String, Entry>,
}

/// The `saga.v1` descriptors (compiled into `saga-proto`).
fn pool() -> DescriptorPool {
    // The descriptor set is produced by our own build script: it always decodes.
    DescriptorPool::decode(saga_proto::FILE_DESCRIPTOR_SET).expect("saga.v1 descriptor set")
}

/// Checks every event of `catalog` against the Protobuf messages; `file` names the
/// catalog in the errors (all problems at once, each with the event and field).
pub fn check_catalog(file: &str, catalog: &EventCatalog) -> Result<EventCodec, DefinitionErrors> {
    let pool = pool();
    let mut errors = Vec::new();
    let mut entries = HashMap::new();
    let mut err =
        |location: String, message: String| errors.push(DefinitionError { location, message });
    for ev in &catalog.events {
        let loc = format!("event `{}`", ev.name);
        let Some(md) = pool.get_message_by_name(&ev.message) else {
            err(
                loc,
                format!(
                    "message `{}` is not in proto/saga/v1 (add it there, or name another with `message:`)",
                    ev.message
                ),
            );
            continue;
        };
        for f in &ev.schema {
            let here = format!("{loc} schema `{}`", f.name);
            match md.get_field_by_json_name(&f.name) {
                None => err(
                    here,
                    format!(
                        "{} has no field `{}` (its fields: {})",
                        md.full_name(),
                        f.name,
                        md.fields()
                            .map(|f| f.json_name().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                Some(fd) => {
                    if let Err(found) = matches(&f.ty, &fd) {
                        err(
                            here,
                            format!(
                                "written `{}` but {}.{} is {found}",
                                f.ty,
                                md.full_name(),
                                fd.name()
                            ),
                        );
                    }
                }
            }
        }
        let key = md.get_field_by_json_name(&ev.idempotency_key);
        match &key {
            Some(fd) if fd.kind() == Kind::String && !fd.is_list() => {}
            Some(_) => err(
                loc.clone(),
                format!(
                    "idempotencyKey `{}` must be a string field",
                    ev.idempotency_key
                ),
            ),
            None => {}
        }
        if let Some(key) = key {
            entries.insert(
                ev.name.clone(),
                Entry {
                    correlation: md
                        .get_field_by_json_name("correlationId")
                        .filter(|f| f.kind() == Kind::String),
                    message: md,
                    key,
                },
            );
        }
    }
    if errors.is_empty() {
        Ok(EventCodec { entries })
    } else {
        Err(DefinitionErrors {
            file: file.to_string(),
            errors,
        })
    }
}

fn matches(ty: &FieldType, fd: &FieldDescriptor) -> Result<(), String> {
    let describe = |fd: &FieldDescriptor| {
        let k = match fd.kind() {
            Kind::Message(m) => m.full_name().to_string(),
            other => format!("{other:?}").to_ascii_lowercase(),
        };
        if fd.is_list() {
            format!("repeated {k}")
        } else {
            k
        }
    };
    let (ty, list) = match ty {
        FieldType::List(inner) => (inner.as_ref(), true),
        t => (t, false),
    };
    if list != fd.is_list() || fd.is_map() {
        return Err(describe(fd));
    }
    let ok = match (ty, fd.kind()) {
        (FieldType::String, Kind::String)
        | (FieldType::Int32, Kind::Int32 | Kind::Sint32 | Kind::Sfixed32)
        | (FieldType::Int64, Kind::Int64 | Kind::Sint64 | Kind::Sfixed64)
        | (FieldType::Bool, Kind::Bool)
        | (FieldType::Bytes, Kind::Bytes) => true,
        (FieldType::Timestamp, Kind::Message(m)) => m.full_name() == "google.protobuf.Timestamp",
        (FieldType::Message(name), Kind::Message(m)) => m.name() == name || m.full_name() == name,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(describe(fd))
    }
}

impl EventCodec {
    /// Decodes `payload` as the catalog message of `event` and reads its key.
    pub fn decode(&self, event: &str, payload: &[u8]) -> Result<DecodedEvent, SchemaError> {
        let e = self
            .entries
            .get(event)
            .ok_or_else(|| SchemaError::UnknownEvent(event.to_string()))?;
        let msg = DynamicMessage::decode(e.message.clone(), payload).map_err(|err| {
            SchemaError::Undecodable {
                message: e.message.full_name().to_string(),
                detail: err.to_string(),
            }
        })?;
        let text = |fd: &FieldDescriptor| {
            msg.get_field(fd)
                .as_str()
                .map(str::to_string)
                .filter(|s| !s.is_empty())
        };
        let key = text(&e.key).ok_or_else(|| SchemaError::MissingKey {
            event: event.to_string(),
            field: e.key.json_name().to_string(),
        })?;
        Ok(DecodedEvent {
            key,
            correlation_id: e.correlation.as_ref().and_then(text),
        })
    }
}

#[cfg(test)]
mod tests {
    use saga_core::catalog::parse_catalog;
    use saga_proto::Message;

    use super::*;

    const CATALOG: &str = include_str!("../../../events/order-events.yaml");

    #[test]
    fn the_order_catalog_matches_the_protobuf_messages() {
        let c = parse_catalog("order-events.yaml", CATALOG).unwrap().catalog;
        let codec = check_catalog("order-events.yaml", &c).unwrap();
        let payload = saga_proto::OrderConfirmed {
            order_id: "o-1".into(),
            confirmed_at: None,
            correlation_id: "s-1".into(),
        }
        .encode_to_vec();
        assert_eq!(
            codec.decode("OrderConfirmed", &payload).unwrap(),
            DecodedEvent {
                key: "o-1".into(),
                correlation_id: Some("s-1".into())
            }
        );
    }

    #[test]
    fn a_schema_that_disagrees_with_its_message_is_refused_field_by_field() {
        let text = CATALOG
            .replace(
                "      confirmedAt: timestamp\n",
                "      confirmedAt: string\n      confirmedBy: string\n",
            )
            .replace(
                "  OrderShipped:\n    version: 1\n",
                "  OrderShipped:\n    version: 1\n    message: saga.v1.OrderSent\n",
            );
        let c = parse_catalog("c.yaml", &text).unwrap().catalog;
        let shown = check_catalog("c.yaml", &c).unwrap_err().to_string();
        for needle in [
            "c.yaml: event `OrderConfirmed` schema `confirmedAt`: written `string` but saga.v1.OrderConfirmed.confirmed_at is google.protobuf.Timestamp",
            "c.yaml: event `OrderConfirmed` schema `confirmedBy`: saga.v1.OrderConfirmed has no field `confirmedBy`",
            "c.yaml: event `OrderShipped`: message `saga.v1.OrderSent` is not in proto/saga/v1",
        ] {
            assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
        }
    }

    #[test]
    fn payloads_that_are_not_their_catalog_type_are_refused() {
        let c = parse_catalog("c.yaml", CATALOG).unwrap().catalog;
        let codec = check_catalog("c.yaml", &c).unwrap();
        let garbage = codec.decode("OrderConfirmed", b"\xff\xff\xff").unwrap_err();
        assert!(
            matches!(garbage, SchemaError::Undecodable { .. }),
            "{garbage}"
        );
        // A StepCommand decodes as bytes of some message, but carries no order id.
        let other = saga_proto::OrderCancelled {
            reason: "x".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            codec
                .decode("OrderCancelled", &other)
                .unwrap_err()
                .to_string(),
            "payload of OrderCancelled has no orderId: it cannot be deduplicated or ordered"
        );
        assert!(matches!(
            codec.decode("OrderLost", &other),
            Err(SchemaError::UnknownEvent(_))
        ));
    }
}
