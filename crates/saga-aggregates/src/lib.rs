//! The example event-sourced aggregates and their read models: `BankAccount`
//! (`aggregates/banking-account.yaml`) and `Order` (`aggregates/order.yaml`).
//!
//! Business rules live here, in `handle`; the storage, snapshots, upcasting and
//! projection machinery come from `saga-eventstore`. No I/O of its own.

pub mod bank;
pub mod money;
pub mod order;
pub mod order_views;
pub mod views;

use std::path::PathBuf;

use saga_eventstore::definition::{self, AggregateDefinition, DefinitionErrors};

pub use bank::{BankAccount, BankCommand, BankEvent};
pub use money::Money;
pub use order::{Order, OrderCommand, OrderEvent};

/// The package of the Protobuf messages of the events.
pub const PROTO_PACKAGE: &str = "saga.es.v1";

/// `<workspace>/aggregates`, where the definitions are shipped.
pub fn definitions_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../aggregates")
}

/// `aggregates/order.yaml` as shipped, built into the binaries that use it.
pub const ORDER_YAML: &str = include_str!("../../../aggregates/order.yaml");

/// `aggregates/banking-account.yaml` as shipped.
pub const BANKING_ACCOUNT_YAML: &str = include_str!("../../../aggregates/banking-account.yaml");

/// Parses a definition's text (named `file` in errors) and checks its schemas against
/// the Protobuf messages.
pub fn parse_definition(file: &str, text: &str) -> Result<AggregateDefinition, DefinitionErrors> {
    let loaded = definition::parse_aggregate(file, text)?;
    check_against_proto(file, &loaded.definition)?;
    Ok(loaded.definition)
}

/// Loads one shipped definition and checks its schemas against the Protobuf messages.
pub fn load_definition(file_name: &str) -> Result<AggregateDefinition, DefinitionErrors> {
    let path = definitions_dir().join(file_name);
    let loaded = definition::load_file(&path)?;
    check_against_proto(&path.display().to_string(), &loaded.definition)?;
    Ok(loaded.definition)
}

/// Checks a definition's schemas against the compiled `saga.es.v1` messages.
pub fn check_against_proto(
    file: &str,
    definition: &AggregateDefinition,
) -> Result<(), DefinitionErrors> {
    use prost::Message as _;
    let fds =
        prost_types::FileDescriptorSet::decode(saga_proto::FILE_DESCRIPTOR_SET).map_err(|e| {
            DefinitionErrors {
                file: file.to_string(),
                errors: vec![definition::DefinitionError {
                    location: "schema".into(),
                    message: format!("cannot read the compiled Protobuf descriptors: {e}"),
                }],
            }
        })?;
    definition::check_schema(file, definition, &fds, PROTO_PACKAGE)
}
