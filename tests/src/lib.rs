//! End-to-end tests of the saga runtime against a real `nats-server` (started per test
//! by `saga-testkit`). The tests live in `tests/tests/`; this library is empty.
