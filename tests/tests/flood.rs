//! Hostile inputs on every subject a process consumes, while real sagas run: random
//! bytes, cut and deeply nested Protobuf, messages just under the broker's
//! `max_payload`, wrong, missing and huge headers, valid inputs for sagas that do not
//! exist, duplicated message ids, and commands no participant can run. Every process
//! stays up, every real saga completes once, and every stored piece of garbage ends in
//! `SAGA_DLQ` with its reason (a valid input for an unknown saga after the worker has
//! looked for the saga `INPUT_MAX_DELIVER` times, as designed).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::HeaderMap;
use futures::StreamExt;
use saga_core::ids::partition_of;
use saga_core::SagaId;
use saga_e2e::*;
use saga_ports::header;
use saga_proto::{self as pb, Message};
use saga_testkit::ProcessGuard;

const SAGA: &str = "OrderCheckout";
const REAL_SAGAS: usize = 30;
/// Looks of the worker for a saga that was never started before it dead-letters the
/// input (kept low so the test does not wait out the default's backoff).
const INPUT_MAX_DELIVER: &str = "3";

/// A tiny seeded generator (xorshift64*): the same garbage on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the flood expects of one message it published.
#[derive(Debug)]
enum Expect {
    /// Dead-lettered itself (stream, sequence).
    DeadLettered(String, u64),
    /// Its effect is a reply to a saga that does not exist: that reply, on this inbox
    /// subject, is dead-lettered.
    ReplyDeadLettered(String),
    /// Applied and journalled as ignored by a real saga; never dead-lettered.
    Ignored(String, u64),
    /// Refused by the broker's duplicate window: never stored.
    Duplicate,
}

/// Everything the flood published, by kind.
#[derive(Default)]
struct Flood {
    sent: BTreeMap<&'static str, Vec<Expect>>,
}

impl Flood {
    async fn publish(
        &mut self,
        js: &async_nats::jetstream::Context,
        kind: &'static str,
        subject: &str,
        publish: Publish,
        expect: impl FnOnce(String, u64) -> Expect,
    ) {
        let ack = js
            .send_publish(subject.to_string(), publish)
            .await
            .unwrap_or_else(|e| panic!("{kind}: publishing on {subject}: {e}"))
            .await
            .unwrap_or_else(|e| panic!("{kind}: stored on {subject}: {e}"));
        let e = if ack.duplicate {
            Expect::Duplicate
        } else {
            expect(ack.stream, ack.sequence)
        };
        self.sent.entry(kind).or_default().push(e);
    }

    /// Garbage that must be dead-lettered itself.
    async fn garbage(
        &mut self,
        js: &async_nats::jetstream::Context,
        kind: &'static str,
        subject: &str,
        publish: Publish,
    ) {
        self.publish(js, kind, subject, publish, Expect::DeadLettered)
            .await;
    }
}

/// Where replies of a saga go, learnt from a real command's `Saga-Reply-To`: its tokens,
/// with the saga id and the partition (the token before it) replaced for another saga.
struct ReplyTemplate {
    tokens: Vec<String>,
    id_at: usize,
}

impl ReplyTemplate {
    fn new(reply_to: &str, saga_id: &str) -> Self {
        let tokens: Vec<String> = reply_to.split('.').map(String::from).collect();
        let id_at = tokens
            .iter()
            .position(|t| t == saga_id)
            .unwrap_or_else(|| panic!("Saga-Reply-To `{reply_to}` does not name {saga_id}"));
        assert!(id_at >= 1, "Saga-Reply-To `{reply_to}`");
        Self { tokens, id_at }
    }
}

/// The reply subject of saga `id`, shaped like `template`.
fn reply_subject(template: &ReplyTemplate, id: &str) -> String {
    let mut tokens = template.tokens.clone();
    let partition = partition_of(&SagaId::parse(id).expect("id"), PARTITIONS);
    tokens[template.id_at] = id.to_string();
    tokens[template.id_at - 1] = partition.to_string();
    tokens.join(".")
}

fn inbox(id: &str) -> String {
    saga_runtime::envelope::inbox_subject(&SagaId::parse(id).expect("id"), PARTITIONS)
}

fn reply_input(id: &str, step: &str, compensation: bool) -> pb::SagaInput {
    pb::SagaInput {
        saga_id: id.into(),
        saga_type: SAGA.into(),
        kind: Some(pb::saga_input::Kind::Reply(pb::StepReply {
            saga_id: id.into(),
            step: step.into(),
            attempt: 1,
            idempotency_key: format!("{id}/{step}/x"),
            compensation,
            outcome: Some(pb::step_reply::Outcome::Ok(pb::StepOk { result: None })),
            service: "inventory".into(),
            replied_at: None,
        })),
    }
}

/// A reply whose result nests `depth` structs (prost refuses past 100 levels).
fn nested_reply(id: &str, depth: usize) -> Vec<u8> {
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
    let mut input = reply_input(id, "ReserveStock", false);
    if let Some(pb::saga_input::Kind::Reply(r)) = &mut input.kind {
        r.outcome = Some(pb::step_reply::Outcome::Ok(pb::StepOk {
            result: Some(pb::Payload {
                kind: Some(pb::payload::Kind::Fields(prost_types::Struct {
                    fields: [("deep".to_string(), value)].into(),
                })),
            }),
        }));
    }
    input.encode_to_vec()
}

/// One length-delimited field (number 15) nested `depth` times around `leaf`.
fn nested_raw(depth: usize, leaf: &[u8]) -> Vec<u8> {
    let mut out = leaf.to_vec();
    for _ in 0..depth {
        let mut next = vec![(15 << 3) | 2];
        let mut len = out.len() as u64;
        while len >= 0x80 {
            next.push((len as u8) | 0x80);
            len >>= 7;
        }
        next.push(len as u8);
        next.extend_from_slice(&out);
        out = next;
    }
    out
}

/// `bytes` cut short so that it no longer decodes as `M`.
fn truncated<M: Message + Default>(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut cut = at.clamp(1, bytes.len() - 1);
    while M::decode(&bytes[..cut]).is_ok() {
        cut -= 1;
        assert!(cut > 0, "no cut of this message fails to decode");
    }
    bytes[..cut].to_vec()
}

fn raw(payload: Vec<u8>) -> Publish {
    Publish::build().payload(payload.into())
}

fn with_headers(payload: Vec<u8>, headers: &[(&str, String)]) -> Publish {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, v.as_str());
    }
    Publish::build().payload(payload.into()).headers(h)
}

fn command(id: &str, step: &str, action: &str, reply_to: String, payload: bool) -> Vec<u8> {
    pb::StepCommand {
        saga_id: id.into(),
        saga_type: SAGA.into(),
        step: step.into(),
        action: action.into(),
        attempt: 1,
        idempotency_key: format!("{id}/{step}/{action}"),
        reply_to,
        payload: payload.then(|| order(id, "mallory", &[("sku-1", 1, 100)])),
        ..Default::default()
    }
    .encode_to_vec()
}

fn assert_alive(processes: &mut [ProcessGuard]) {
    for p in processes {
        assert!(p.is_running(), "{} exited during the flood", p.label());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_input_subject_is_dead_lettered_while_real_sagas_complete() {
    let stack = Stack::new();
    let mut procs = vec![stack.worker("worker", &[("INPUT_MAX_DELIVER", INPUT_MAX_DELIVER)])];
    // A command whose reply cannot be published is dead-lettered after the participant's
    // deliveries (3 here: the default 5 wait out minutes of redelivery backoff).
    procs.extend(checkout_participants(&stack, &["--max-deliveries", "3"]));
    let client = saga_nats::connect(&stack.nats.url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    wait_provisioned(&js).await;
    let max_payload = client.server_info().max_payload;
    let inbox_subjects = js
        .get_stream("SAGA_INBOX")
        .await
        .expect("SAGA_INBOX")
        .info()
        .await
        .expect("info")
        .config
        .subjects
        .clone();

    // The commands of the real sagas, as participants get them: their `Saga-Reply-To`
    // says where replies go, and their bytes are cut into garbage below.
    let mut commands = client.subscribe("saga.cmd.>").await.expect("subscribe");
    client.flush().await.expect("flush");
    let ids: Vec<String> = (0..REAL_SAGAS).map(|i| format!("flood-{i}")).collect();
    for id in &ids {
        start_saga(&js, SAGA, id, order(id, "alice", &[("sku-1", 1, 100)])).await;
    }
    let first = tokio::time::timeout(Duration::from_secs(60), commands.next())
        .await
        .expect("a command within 60 s")
        .expect("subscription open");
    let template = first
        .headers
        .as_ref()
        .and_then(|h| h.get(header::REPLY_TO))
        .map(|v| v.as_str().to_string())
        .expect("commands carry Saga-Reply-To");
    let real_command = first.payload.to_vec();
    drop(commands);
    eprintln!("reply subject of a real saga: {template}; SAGA_INBOX subjects: {inbox_subjects:?}; max_payload {max_payload}");
    let real_id = pb::StepCommand::decode(real_command.as_slice())
        .expect("a real command decodes")
        .saga_id;
    let template = ReplyTemplate::new(&template, &real_id);

    let mut rng = Rng(0x5eed_f100d);
    let mut flood = Flood::default();
    let mut n = 0u32;
    let mut junk = |what: &str| {
        n += 1;
        format!("junk-{what}-{n}")
    };

    // --- SAGA_INBOX: what workers consume -------------------------------------------
    for _ in 0..20 {
        let id = junk("rand");
        let len = 1 + rng.below(2048) as usize;
        flood
            .garbage(&js, "inbox: random bytes", &inbox(&id), raw(rng.bytes(len)))
            .await;
    }
    for real in ids.iter().take(3) {
        flood
            .garbage(
                &js,
                "inbox: random bytes on a real saga's subject",
                &inbox(real),
                raw(rng.bytes(64)),
            )
            .await;
    }
    for i in 0..10 {
        let id = junk("cut");
        let whole = reply_input(&id, "ReserveStock", false).encode_to_vec();
        let at = 1 + (whole.len() - 1) * i / 10;
        flood
            .garbage(
                &js,
                "inbox: truncated SagaInput",
                &inbox(&id),
                raw(truncated::<pb::SagaInput>(&whole, at)),
            )
            .await;
    }
    for _ in 0..3 {
        let id = junk("deep");
        flood
            .garbage(
                &js,
                "inbox: 100-deep nested protobuf",
                &inbox(&id),
                raw(nested_reply(&id, 100)),
            )
            .await;
        let id = junk("deepraw");
        flood
            .garbage(
                &js,
                "inbox: 100-deep nested protobuf",
                &inbox(&id),
                raw(nested_raw(100, b"x")),
            )
            .await;
    }
    for slack in [64, 512] {
        let id = junk("big");
        flood
            .garbage(
                &js,
                "inbox: just under max_payload",
                &inbox(&id),
                raw(rng.bytes(max_payload - slack)),
            )
            .await;
    }
    {
        let id = junk("hdr");
        flood
            .garbage(
                &js,
                "inbox: huge header",
                &inbox(&id),
                with_headers(rng.bytes(32), &[(header::SAGA_ID, "x".repeat(60_000))]),
            )
            .await;
        let id = junk("hdr");
        let wrong = [
            (header::SAGA_ID, ids[0].clone()),
            (header::SAGA_STEP, "NoSuchStep".to_string()),
            (header::SAGA_ATTEMPT, "-1".to_string()),
            (header::IDEMPOTENCY_KEY, "a/b/c".to_string()),
            ("traceparent", "not-a-trace".to_string()),
        ];
        flood
            .garbage(
                &js,
                "inbox: wrong headers",
                &inbox(&id),
                with_headers(rng.bytes(40), &wrong),
            )
            .await;
        let id = junk("hdr");
        flood
            .garbage(
                &js,
                "inbox: wrong headers",
                &inbox(&id),
                with_headers(
                    reply_input(&id, "ReserveStock", false).encode_to_vec(),
                    &wrong,
                ),
            )
            .await;
        let id = junk("nohdr");
        flood
            .garbage(
                &js,
                "inbox: no headers, valid reply of an unknown saga",
                &inbox(&id),
                raw(reply_input(&id, "ReserveStock", false).encode_to_vec()),
            )
            .await;
    }
    for i in 0..5 {
        let id = junk("ghost");
        flood
            .garbage(
                &js,
                "inbox: valid reply of an unknown saga",
                &inbox(&id),
                raw(reply_input(&id, "ReserveStock", i % 2 == 1).encode_to_vec()),
            )
            .await;
        let id = junk("ghost");
        let cancel = pb::SagaInput {
            saga_id: id.clone(),
            saga_type: SAGA.into(),
            kind: Some(pb::saga_input::Kind::Cancel(pb::CancelSaga {
                reason: "flood".into(),
            })),
        };
        flood
            .garbage(
                &js,
                "inbox: valid cancel of an unknown saga",
                &inbox(&id),
                raw(cancel.encode_to_vec()),
            )
            .await;
    }
    for _ in 0..3 {
        let id = SagaId::parse(&junk("type")).expect("id");
        let msg = saga_runtime::envelope::start_message(
            "NoSuchSaga",
            &id,
            None,
            id.as_str(),
            PARTITIONS,
            0,
        );
        flood
            .garbage(
                &js,
                "inbox: start of an unknown saga type",
                &msg.subject,
                raw(msg.payload),
            )
            .await;
    }
    {
        let id = junk("dup");
        let payload = rng.bytes(100);
        for _ in 0..3 {
            flood
                .garbage(
                    &js,
                    "inbox: duplicate Nats-Msg-Id",
                    &inbox(&id),
                    raw(payload.clone()).message_id(format!("flood-dup:{id}")),
                )
                .await;
        }
        // The id of a real start: inside the duplicate window, never stored.
        flood
            .garbage(
                &js,
                "inbox: duplicate Nats-Msg-Id",
                &inbox(&ids[5]),
                raw(rng.bytes(10)).message_id(format!("start:{}", ids[5])),
            )
            .await;
    }
    for real in ids.iter().skip(10).take(5) {
        // Well-formed, for a real saga, naming no step of it: the saga journals it as
        // ignored and goes on.
        flood
            .publish(
                &js,
                "inbox: reply of a real saga for an unknown step",
                &inbox(real),
                raw(reply_input(real, "NoSuchStep", false).encode_to_vec()),
                Expect::Ignored,
            )
            .await;
    }

    // --- Reply subjects: as a real command's Saga-Reply-To names them ----------------
    for _ in 0..5 {
        let id = junk("reply");
        let len = 1 + rng.below(512) as usize;
        flood
            .garbage(
                &js,
                "reply subject: random bytes",
                &reply_subject(&template, &id),
                raw(rng.bytes(len)),
            )
            .await;
        let id = junk("reply");
        flood
            .garbage(
                &js,
                "reply subject: valid reply of an unknown saga",
                &reply_subject(&template, &id),
                raw(reply_input(&id, "ChargePayment", false).encode_to_vec()),
            )
            .await;
    }
    // Every subject space of SAGA_INBOX (`saga.reply.>` too, once the stream has it).
    for filter in &inbox_subjects {
        let Some(prefix) = filter.strip_suffix(".>") else {
            continue;
        };
        for _ in 0..3 {
            let id = junk("space");
            let partition = partition_of(&SagaId::parse(&id).expect("id"), PARTITIONS);
            flood
                .garbage(
                    &js,
                    "SAGA_INBOX subject space: random bytes",
                    &format!("{prefix}.{partition}.{id}"),
                    raw(rng.bytes(50)),
                )
                .await;
        }
    }

    // --- SAGA_COMMANDS: what participants consume -----------------------------------
    for (service, action) in [
        ("inventory", "ReserveStock"),
        ("payment", "ChargePayment"),
        ("orders", "ConfirmOrder"),
    ] {
        let subject = format!("saga.cmd.{service}.{action}");
        for _ in 0..5 {
            let len = 1 + rng.below(1024) as usize;
            flood
                .garbage(&js, "command: random bytes", &subject, raw(rng.bytes(len)))
                .await;
        }
        for i in 1..4 {
            let at = real_command.len() * i / 4;
            flood
                .garbage(
                    &js,
                    "command: truncated StepCommand",
                    &subject,
                    raw(truncated::<pb::StepCommand>(&real_command, at)),
                )
                .await;
        }
        flood
            .garbage(
                &js,
                "command: 100-deep nested protobuf",
                &subject,
                raw(nested_raw(100, b"y")),
            )
            .await;
        let id = junk("cmd");
        flood
            .garbage(
                &js,
                "command: StepCommand without reply_to",
                &subject,
                raw(command(&id, "ReserveStock", action, String::new(), true)),
            )
            .await;
        let id = junk("cmd");
        flood
            .garbage(
                &js,
                "command: an action the service does not have",
                &format!("saga.cmd.{service}.NoSuchAction"),
                raw(command(
                    &id,
                    "ReserveStock",
                    "NoSuchAction",
                    reply_subject(&template, &id),
                    true,
                )),
            )
            .await;
        flood
            .garbage(
                &js,
                "command: just under max_payload",
                &subject,
                raw(rng.bytes(max_payload - 64)),
            )
            .await;
    }
    for _ in 0..3 {
        // A step no saga has, of a saga that does not exist: the participant answers
        // it (it cannot know the sagas), and the worker dead-letters the answer.
        let id = junk("step");
        let reply_to = reply_subject(&template, &id);
        flood
            .publish(
                &js,
                "command: unknown step of an unknown saga",
                "saga.cmd.inventory.ReserveStock",
                raw(command(
                    &id,
                    "NoSuchStep",
                    "ReserveStock",
                    reply_to.clone(),
                    false,
                )),
                |_, _| Expect::ReplyDeadLettered(reply_to),
            )
            .await;
    }
    for _ in 0..2 {
        // Its answer cannot be delivered anywhere (no stream has the subject).
        let id = junk("nowhere");
        flood
            .garbage(
                &js,
                "command: reply_to no stream stores",
                "saga.cmd.inventory.ReleaseStock",
                raw(command(
                    &id,
                    "ReserveStock",
                    "ReleaseStock",
                    format!("nowhere.{id}"),
                    false,
                )),
            )
            .await;
    }
    assert_alive(&mut procs);

    // --- What a user observes -------------------------------------------------------
    assert_checkouts_completed_once(&js, &ids).await;
    assert_alive(&mut procs);

    let mut want: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut want_replies: BTreeSet<String> = BTreeSet::new();
    let mut ignored: Vec<(String, u64)> = Vec::new();
    let mut duplicates = 0;
    for e in flood.sent.values().flatten() {
        match e {
            Expect::DeadLettered(stream, seq) => {
                want.insert((stream.clone(), *seq));
            }
            Expect::ReplyDeadLettered(subject) => {
                want_replies.insert(subject.clone());
            }
            Expect::Ignored(stream, seq) => ignored.push((stream.clone(), *seq)),
            Expect::Duplicate => duplicates += 1,
        }
    }
    let origin = |m: &async_nats::jetstream::message::StreamMessage, name: &str| {
        m.headers
            .get(name)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let dlq = loop {
        let dlq = messages(&js, "SAGA_DLQ", "dlq.>").await;
        let got: BTreeSet<(String, u64)> = dlq
            .iter()
            .map(|m| {
                (
                    origin(m, header::DLQ_STREAM),
                    origin(m, header::DLQ_SEQUENCE).parse().unwrap_or(0),
                )
            })
            .collect();
        let subjects: BTreeSet<String> =
            dlq.iter().map(|m| origin(m, header::DLQ_SUBJECT)).collect();
        let missing: Vec<String> = want
            .difference(&got)
            .map(|(stream, seq)| format!("{stream} #{seq}"))
            .chain(want_replies.difference(&subjects).cloned())
            .collect();
        if missing.is_empty() {
            break dlq;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} piece(s) of garbage not dead-lettered after 180 s (of {} dead letters): {missing:?}\n{}",
            missing.len(),
            dlq.len(),
            diagnostics(&js).await
        );
        assert_alive(&mut procs);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_alive(&mut procs);

    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for m in &dlq {
        let reason = origin(m, header::DLQ_REASON);
        assert!(
            !reason.trim().is_empty(),
            "dead letter {} has no reason",
            m.subject
        );
        let from = (
            origin(m, header::DLQ_STREAM),
            origin(m, header::DLQ_SEQUENCE).parse().unwrap_or(0),
        );
        let subject = origin(m, header::DLQ_SUBJECT);
        assert!(
            want.contains(&from) || want_replies.contains(&subject),
            "a message that is not garbage was dead-lettered: {subject} ({reason})"
        );
        let short: String = reason.split([':', '(']).next().unwrap_or("").into();
        let short: Vec<&str> = short
            .split_whitespace()
            .map(|w| if w.contains("junk-") { "`<id>`" } else { w })
            .collect();
        *reasons.entry(short.join(" ")).or_default() += 1;
    }
    // A message just under max_payload does not fit with the dead-letter headers: its
    // dead letter keeps the start of it and says how big it was (3 commands and the
    // inbox message 64 bytes under the limit at least).
    let truncated = dlq
        .iter()
        .filter(|m| m.headers.get(header::DLQ_TRUNCATED).is_some())
        .count();
    assert!(truncated >= 4, "{truncated} truncated dead letters");
    // Each stored piece of garbage once (dead letters are deduplicated by origin).
    assert_eq!(dlq.len(), want.len() + want_replies.len(), "{reasons:#?}");

    for (stream, seq) in &ignored {
        assert!(
            !dlq.iter().any(|m| origin(m, header::DLQ_STREAM) == *stream
                && origin(m, header::DLQ_SEQUENCE) == seq.to_string()),
            "a reply naming an unknown step of a real saga was dead-lettered"
        );
    }
    for real in ids.iter().skip(10).take(5) {
        let log = event_log(&journal(&js, SAGA, real).await);
        assert!(
            log.iter().any(|l| l == "INPUT_IGNORED"),
            "{real} did not journal the reply for an unknown step as ignored: {log:?}"
        );
    }

    let mut procs = procs.into_iter();
    let mut worker = procs.next().expect("worker");
    let mut participants: Vec<ProcessGuard> = procs.collect();
    stop_all(&mut worker, &mut participants);
    for participant in ["inventory", "payment", "orders"] {
        let effects = effects(&stack, participant);
        for id in &ids {
            let n: u64 = effects
                .iter()
                .filter(|((saga, _), _)| saga == id)
                .map(|(_, n)| *n)
                .sum();
            assert_eq!(n, 1, "{participant}: effects of {id}");
        }
    }

    for (kind, sent) in &flood.sent {
        eprintln!("sent {:>3}  {kind}", sent.len());
    }
    eprintln!(
        "garbage sent: {}; not stored (duplicate message id): {duplicates}; ignored by a real saga: {}",
        flood.sent.values().map(Vec::len).sum::<usize>(),
        ignored.len()
    );
    eprintln!(
        "dead-lettered: {} ({} inputs and commands, {} replies of a command for an unknown saga)",
        dlq.len(),
        want.len(),
        want_replies.len()
    );
    for (reason, count) in &reasons {
        eprintln!("  {count:>3}  {reason}");
    }
    eprintln!("dead letters cut to fit max_payload: {truncated}");
    eprintln!("real sagas completed: {} of {REAL_SAGAS}", ids.len());
}
