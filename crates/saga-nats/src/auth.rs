//! NATS users per role and the permissions each needs: the one table from which
//! `sagactl nats-auth` writes a server's `authorization` block.
//!
//! | role | may publish | may subscribe |
//! | --- | --- | --- |
//! | operator (`sagactl`) | everything | everything |
//! | gateway | `saga.in.>` (starts, cancels), `events.>` (OrderPlaced), redrives (`saga.cmd.>`, `saga.reply.>`, `dlq.>`), the JetStream API | its inboxes |
//! | worker | `saga.in.>`, `saga.cmd.>`, `saga.journal.>`, `saga.open.>`, `events.>`, `dlq.>`, the JetStream API | its inboxes |
//! | participant of services S | replies `saga.reply.*.*.<s>`, dead letters `dlq.saga.cmd.<s>.>`, stream info, and the API of its consumers `svc-<s>` only | its inboxes |
//! | event consumer of service s | `events.>`, dead letters `dlq.events.>`, stream info, the API of `evt-<s>` only | its inboxes |
//! | bank (event store) | `es.>`, the API of `ES_EVENTS` and `KV_ES_SNAPSHOTS` only, replies to control requests | its inboxes, `es-ctl.projection.*.*` |
//!
//! The KV buckets (`$KV.>`: partition owners, live workers, definition versions
//! `saga_definitions`) are open to the gateway, the workers and operators only.
//!
//! The gateway and the workers are the saga infrastructure: they provision streams and
//! consumers, so they hold the JetStream API. Participants and event consumers are
//! application code: a participant cannot start, cancel or read sagas, cannot read
//! another service's commands and cannot reply in another service's name (the worker
//! checks the service token of the reply subject against the step).
//!
//! "Its inboxes" is `_INBOX_<connection name>.>` ([`inbox_prefix`]): every binary
//! connects with its role's name.

use std::fmt::Write as _;

use crate::connect::inbox_prefix;
use crate::names;

/// Who connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Operator tooling (`sagactl`): everything.
    Operator,
    /// The gRPC gateway (`saga-gateway`).
    Gateway,
    /// A saga worker (`saga-worker`).
    Worker,
    /// A participant binary named `name` serving `services`.
    Participant {
        /// Its connection name (the binary's name).
        name: String,
        /// The services it serves (`service:` of the saga definitions' steps).
        services: Vec<String>,
        /// It also keeps event-sourced aggregates (the `orders` example): the event
        /// store's stream and bucket, and the projection control subjects.
        event_sourced: bool,
    },
    /// A choreography consumer `service` (consumer `evt-<service>` on `SAGA_EVENTS`).
    EventConsumer {
        /// Its service name (also its connection name).
        service: String,
    },
    /// The event-sourced bank (`bank`): its own event store streams only.
    Bank,
}

/// The subjects a user may publish to and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// `publish.allow`.
    pub publish: Vec<String>,
    /// `subscribe.allow`.
    pub subscribe: Vec<String>,
}

impl Role {
    /// The user's name: the connection name the role's binary uses.
    pub fn name(&self) -> &str {
        match self {
            Role::Operator => "sagactl",
            Role::Gateway => "saga-gateway",
            Role::Worker => "saga-worker",
            Role::Participant { name, .. } => name,
            Role::EventConsumer { service } => service,
            Role::Bank => "bank",
        }
    }

    /// What the role may do.
    pub fn permissions(&self) -> Permissions {
        let own = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let inbox = format!("{}.>", inbox_prefix(self.name()));
        match self {
            Role::Operator => Permissions {
                publish: own(&[">"]),
                subscribe: own(&[">"]),
            },
            Role::Gateway => Permissions {
                publish: own(&[
                    names::INBOX_SUBJECTS,
                    names::REPLY_SUBJECTS,
                    names::COMMANDS_SUBJECTS,
                    names::DLQ_SUBJECTS,
                    // PlaceOrder publishes OrderPlaced with the start.
                    names::EVENTS_SUBJECTS,
                    "$JS.API.>",
                    "$JS.ACK.>",
                    "$JS.FC.>",
                    "$KV.>",
                ]),
                subscribe: vec![inbox],
            },
            Role::Worker => Permissions {
                publish: own(&[
                    names::INBOX_SUBJECTS,
                    names::COMMANDS_SUBJECTS,
                    names::JOURNAL_SUBJECTS,
                    names::OPEN_SUBJECTS,
                    names::EVENTS_SUBJECTS,
                    names::DLQ_SUBJECTS,
                    "$JS.API.>",
                    "$JS.ACK.>",
                    "$JS.FC.>",
                    "$KV.>",
                ]),
                subscribe: vec![inbox],
            },
            Role::Participant {
                services,
                event_sourced,
                ..
            } => {
                let mut publish = stream_reads();
                for s in services {
                    publish.push(names::service_reply_pattern(s));
                    publish.push(format!("dlq.{}", names::service_filter(s)));
                    publish.extend(consumer_api(
                        names::COMMANDS_STREAM,
                        &names::service_consumer(s),
                    ));
                }
                let mut subscribe = vec![inbox];
                if *event_sourced {
                    publish.extend(event_store_api());
                    subscribe.push(PROJECTION_CONTROL.into());
                }
                Permissions { publish, subscribe }
            }
            Role::EventConsumer { service } => {
                let mut publish = stream_reads();
                publish.push(names::EVENTS_SUBJECTS.to_owned());
                publish.push(format!("dlq.{}", names::EVENTS_SUBJECTS));
                publish.extend(consumer_api(
                    names::EVENTS_STREAM,
                    &names::event_consumer(service),
                ));
                Permissions {
                    publish,
                    subscribe: vec![inbox],
                }
            }
            Role::Bank => Permissions {
                publish: event_store_api(),
                // `sagactl projection status|rebuild` ask it there (request-reply).
                subscribe: vec![inbox, PROJECTION_CONTROL.into()],
            },
        }
    }

    /// Whether it answers requests made to it (projection control, operators' tools).
    fn answers_requests(&self) -> bool {
        matches!(
            self,
            Role::Operator
                | Role::Bank
                | Role::Participant {
                    event_sourced: true,
                    ..
                }
        )
    }
}

/// Where `sagactl projection status|rebuild` asks the services that run projections.
const PROJECTION_CONTROL: &str = "es-ctl.projection.*.*";

/// The event store's stream `ES_EVENTS` and snapshot bucket `ES_SNAPSHOTS`: create or
/// update them, append, read (consumers, direct gets) and keep snapshots.
fn event_store_api() -> Vec<String> {
    let mut publish: Vec<String> = ["$JS.API.INFO", "es.>", "$JS.FC.>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for stream in ["ES_EVENTS", "KV_ES_SNAPSHOTS"] {
        for api in ["STREAM.CREATE", "STREAM.UPDATE", "STREAM.INFO"] {
            publish.push(format!("$JS.API.{api}.{stream}"));
        }
        publish.push(format!("$JS.API.CONSUMER.*.{stream}"));
        publish.push(format!("$JS.API.CONSUMER.*.{stream}.>"));
        publish.push(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"));
        publish.push(format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>"));
        publish.push(format!("$JS.API.DIRECT.GET.{stream}"));
        publish.push(format!("$JS.API.DIRECT.GET.{stream}.>"));
        publish.push(format!("$JS.API.STREAM.MSG.GET.{stream}"));
        publish.push(format!("$JS.ACK.{stream}.>"));
    }
    publish.push("$KV.ES_SNAPSHOTS.>".into());
    publish
}

/// Reading the configuration of the saga streams (what provisioning checks before it
/// would create anything), and the account's JetStream info.
fn stream_reads() -> Vec<String> {
    std::iter::once("$JS.API.INFO".to_owned())
        .chain(
            names::STREAMS
                .iter()
                .map(|s| format!("$JS.API.STREAM.INFO.{s}")),
        )
        .collect()
}

/// The JetStream API calls on one durable consumer: create or update it (with or
/// without a filter in the subject), read its info, pull and acknowledge.
fn consumer_api(stream: &str, consumer: &str) -> Vec<String> {
    vec![
        format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
        format!("$JS.ACK.{stream}.{consumer}.>"),
    ]
}

/// The users of a deployment: each role with the public nkey (`U...`) it signs in with.
#[derive(Debug, Clone, Default)]
pub struct Users {
    /// `(role, public nkey)`.
    pub users: Vec<(Role, String)>,
}

impl Users {
    /// The `authorization { users = [...] }` block of a nats-server configuration
    /// (include it from the server's config file).
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# NATS users of the saga runtime, one per role (written by `sagactl nats-auth`).\n\
             # Include it from the server's configuration: include \"auth.conf\"\n\
             authorization {\n  users = [\n",
        );
        for (role, nkey) in &self.users {
            let p = role.permissions();
            let _ = writeln!(out, "    # {}", role.name());
            let _ = writeln!(out, "    {{");
            let _ = writeln!(out, "      nkey: \"{nkey}\"");
            let _ = writeln!(out, "      permissions: {{");
            let _ = writeln!(out, "        publish: {{ allow: {} }}", list(&p.publish));
            let _ = writeln!(
                out,
                "        subscribe: {{ allow: {} }}",
                list(&p.subscribe)
            );
            // Replies to requests made *to* this user: the services that run
            // projections answer control requests; operators' tools (`nats req`) too.
            if role.answers_requests() {
                let _ = writeln!(out, "        allow_responses: true");
            }
            let _ = writeln!(out, "      }}");
            let _ = writeln!(out, "    }}");
        }
        out.push_str("  ]\n}\n");
        out
    }
}

fn list(subjects: &[String]) -> String {
    let quoted: Vec<String> = subjects.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant() -> Role {
        Role::Participant {
            name: "payment".into(),
            services: vec!["payment".into(), "PaymentService".into()],
            event_sourced: false,
        }
    }

    #[test]
    fn a_participant_may_reply_for_its_services_only() {
        let p = participant().permissions();
        assert!(p.publish.contains(&"saga.reply.*.*.payment".to_string()));
        assert!(p
            .publish
            .contains(&"saga.reply.*.*.PaymentService".to_string()));
        assert!(p
            .publish
            .contains(&"$JS.API.CONSUMER.MSG.NEXT.SAGA_COMMANDS.svc-payment".to_string()));
        for forbidden in [
            "saga.in.>",
            "saga.cmd.>",
            "saga.journal.>",
            "$JS.API.>",
            ">",
        ] {
            assert!(!p.publish.contains(&forbidden.to_string()), "{forbidden}");
        }
        assert_eq!(p.subscribe, vec!["_INBOX_payment.>".to_string()]);
    }

    #[test]
    fn workers_gateway_and_operators_reach_the_definition_versions() {
        for role in [Role::Worker, Role::Gateway] {
            let p = role.permissions();
            assert!(p.publish.contains(&"$KV.>".to_string()), "{}", role.name());
            assert!(
                p.publish.contains(&"$JS.API.>".to_string()),
                "{}",
                role.name()
            );
        }
        assert!(!participant()
            .permissions()
            .publish
            .iter()
            .any(|s| s.starts_with("$KV")));
    }

    #[test]
    fn the_rendered_block_lists_every_user_with_its_permissions() {
        let users = Users {
            users: vec![
                (Role::Worker, "UWORKER".into()),
                (participant(), "UPAYMENT".into()),
            ],
        };
        let conf = users.render();
        assert!(conf.contains("nkey: \"UWORKER\""), "{conf}");
        assert!(conf.contains("nkey: \"UPAYMENT\""), "{conf}");
        assert!(conf.contains("\"saga.reply.*.*.payment\""), "{conf}");
        assert!(conf.contains("\"_INBOX_saga-worker.>\""), "{conf}");
    }
}
