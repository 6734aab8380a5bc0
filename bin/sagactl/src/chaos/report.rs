//! The end of a chaos run as people and machines read it: what was done (load, faults),
//! how long the stack took to settle, and each invariant with its count and result.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::check::Verdict;
use super::faults::{FaultRecord, UnexpectedExit};
use super::load::{Ack, OrderRecord};
use crate::args::FaultKind;
use crate::render::{state_name, Table};
use saga_proto::SagaState;

/// Everything the report says.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub orders: u64,
    pub rate: f64,
    pub workers: u32,
    pub lease_ttl_ms: u64,
    pub data_dir: PathBuf,
    /// From the first order to the last answer (or give-up).
    pub load_took: Duration,
    pub records: Vec<OrderRecord>,
    pub faults_planned: usize,
    pub faults: Vec<FaultRecord>,
    /// From the start of the load to the end of the last fault.
    pub faults_over_at: Duration,
    pub quiescence_reached: bool,
    /// From the end of the load and of the last fault.
    pub quiescence_took: Duration,
    pub quiescence_timeout: Duration,
    pub quiescence_error: Option<String>,
    /// Sagas by final state.
    pub states: BTreeMap<String, u64>,
    /// SAGA_DLQ by reason: how many, and the saga of the first (or why it was not read).
    pub dead_letters: Result<BTreeMap<String, (u64, String)>, String>,
    pub verdicts: Vec<Verdict>,
    pub exits: Vec<UnexpectedExit>,
}

impl Report {
    pub fn pass(&self) -> bool {
        self.verdicts.iter().all(|v| v.pass)
    }

    fn acks(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for r in &self.records {
            match r.ack {
                Ack::Acked { .. } => c.0 += 1,
                Ack::NeverAcked { .. } => c.1 += 1,
                Ack::Refused { .. } => c.2 += 1,
            }
        }
        c
    }

    /// What the cancels met: sent, answered OK, the saga PENDING/RUNNING per GetSaga just
    /// before, and per CancelSaga's answer (the state the invariant goes by).
    fn cancels(&self) -> Value {
        let running = |s: Option<i32>| {
            matches!(
                s.map(SagaState::try_from),
                Some(Ok(SagaState::Pending | SagaState::Running))
            )
        };
        let cancels: Vec<_> = self
            .records
            .iter()
            .filter_map(|r| r.cancel.as_ref())
            .collect();
        json!({
            "sent": cancels.len(),
            "answeredOk": cancels.iter().filter(|c| c.answered.is_ok()).count(),
            "runningPerGetSagaBefore": cancels.iter().filter(|c| running(c.state_before)).count(),
            "runningPerCancelAnswer": cancels.iter().filter(|c| c.on_running_saga()).count(),
            "errors": cancels
                .iter()
                .filter_map(|c| c.answered.as_ref().err())
                .take(10)
                .collect::<Vec<_>>(),
        })
    }

    /// From the start of the load to quiescence (or to the deadline).
    fn settled_at(&self) -> Duration {
        self.load_took.max(self.faults_over_at) + self.quiescence_took
    }

    fn retries(&self) -> u64 {
        self.records
            .iter()
            .map(|r| u64::from(r.attempts.saturating_sub(1)))
            .sum()
    }

    /// Kind -> (injected, failed to inject).
    fn faults_by_kind(&self) -> BTreeMap<FaultKind, (u32, u32)> {
        let mut out: BTreeMap<FaultKind, (u32, u32)> = BTreeMap::new();
        for f in &self.faults {
            let e = out.entry(f.planned.kind).or_default();
            e.0 += 1;
            e.1 += u32::from(f.error.is_some());
        }
        out
    }

    /// The table people read.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let (acked, never, refused) = self.acks();
        let _ = writeln!(
            s,
            "chaos run: seed {}, {} workers, lease TTL {} ms; data and logs in {}",
            self.seed,
            self.workers,
            self.lease_ttl_ms,
            self.data_dir.display()
        );
        let _ = writeln!(
            s,
            "load        {} orders at {}/s in {:.1} s: {acked} acknowledged, {never} never \
             acknowledged, {refused} refused; {} retries",
            self.orders,
            self.rate,
            self.load_took.as_secs_f64(),
            self.retries()
        );
        let failed = self.faults.iter().filter(|f| f.error.is_some()).count();
        let _ = writeln!(
            s,
            "faults      {} of {} injected ({failed} failed to inject), the first at {:.1} s, \
             the last over at {:.1} s",
            self.faults.len(),
            self.faults_planned,
            self.faults
                .iter()
                .map(|f| f.at)
                .min()
                .unwrap_or_default()
                .as_secs_f64(),
            self.faults_over_at.as_secs_f64()
        );
        let mut kinds = Table::new(&["  fault", "injected", "failed"]);
        for (kind, (n, failed)) in self.faults_by_kind() {
            kinds.row(vec![
                format!("  {}", kind.name()),
                n.to_string(),
                failed.to_string(),
            ]);
        }
        s.push_str(&kinds.render());
        let settled = if self.quiescence_reached {
            format!(
                "{:.1} s after the load and the faults were over: every saga terminal at \
                 {:.1} s",
                self.quiescence_took.as_secs_f64(),
                self.settled_at().as_secs_f64()
            )
        } else {
            format!(
                "NOT reached within {:?} after the load and the last fault{}",
                self.quiescence_timeout,
                self.quiescence_error
                    .as_deref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )
        };
        let _ = writeln!(s, "quiescence  {settled}");
        let _ = writeln!(
            s,
            "sagas       {}",
            self.states
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let dead = match &self.dead_letters {
            Ok(d) if d.is_empty() => "none".to_string(),
            Ok(d) => d
                .iter()
                .map(|(why, (n, saga))| format!("{n} x {why} (e.g. saga {saga})"))
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => format!("not read: {e}"),
        };
        let _ = writeln!(s, "dead letters {dead}");
        s.push('\n');
        let mut t = Table::new(&["invariant", "count", "result"]);
        for v in &self.verdicts {
            t.row(vec![
                v.name.to_string(),
                v.count.clone(),
                if v.pass { "PASS" } else { "FAIL" }.to_string(),
            ]);
        }
        s.push_str(&t.render());
        for v in self.verdicts.iter().filter(|v| !v.pass) {
            let _ = writeln!(s, "\n{}:", v.name);
            for d in &v.details {
                let _ = writeln!(s, "  - {d}");
            }
        }
        for e in &self.exits {
            let _ = writeln!(
                s,
                "\n{} ended on its own at {:.1} s ({}{}); the end of its log:\n{}",
                e.name,
                e.at.as_secs_f64(),
                e.status,
                if e.during_nats_outage {
                    ", around a nats-server outage"
                } else {
                    ""
                },
                e.log_tail
            );
        }
        let broken = self.verdicts.iter().filter(|v| !v.pass).count();
        let _ = writeln!(
            s,
            "\nresult: {}",
            if broken == 0 {
                format!("PASS ({} invariants hold)", self.verdicts.len())
            } else {
                format!(
                    "FAIL ({broken} of {} invariants broken)",
                    self.verdicts.len()
                )
            }
        );
        s
    }

    /// The summary machines read.
    pub fn json(&self) -> Value {
        let (acked, never, refused) = self.acks();
        let never_samples: Vec<Value> = self
            .records
            .iter()
            .filter_map(|r| match &r.ack {
                Ack::NeverAcked { last_error } => Some(json!({
                    "idempotencyKey": r.plan.idempotency_key,
                    "lastError": last_error,
                })),
                _ => None,
            })
            .take(20)
            .collect();
        json!({
            "pass": self.pass(),
            "seed": self.seed,
            "dataDir": self.data_dir.display().to_string(),
            "workers": self.workers,
            "leaseTtlMs": self.lease_ttl_ms,
            "load": {
                "orders": self.orders,
                "rate": self.rate,
                "secs": self.load_took.as_secs_f64(),
                "acknowledged": acked,
                "neverAcknowledged": never,
                "neverAcknowledgedSamples": never_samples,
                "refused": refused,
                "retries": self.retries(),
                "cancels": self.cancels(),
                "declinedCustomers": self.records.iter().filter(|r| r.plan.declined).count(),
            },
            "faults": {
                "planned": self.faults_planned,
                "injected": self.faults.len(),
                "byKind": self.faults_by_kind().iter().map(|(k, (n, failed))| {
                    (k.name().to_string(), json!({ "injected": n, "failed": failed }))
                }).collect::<serde_json::Map<_, _>>(),
                "overAtSecs": self.faults_over_at.as_secs_f64(),
                "list": self.faults.iter().map(|f| json!({
                    "number": f.planned.number,
                    "kind": f.planned.kind.name(),
                    "target": f.target,
                    "pid": f.pid,
                    "atSecs": f.at.as_secs_f64(),
                    "overAtSecs": f.over_at.as_secs_f64(),
                    "holdSecs": f.planned.hold.as_secs_f64(),
                    "error": f.error,
                })).collect::<Vec<_>>(),
            },
            "quiescence": {
                "reached": self.quiescence_reached,
                "secs": self.quiescence_took.as_secs_f64(),
                "settledAtSecs": self.settled_at().as_secs_f64(),
                "timeoutSecs": self.quiescence_timeout.as_secs_f64(),
                "lastError": self.quiescence_error,
            },
            "sagas": self.states,
            "deadLetters": match &self.dead_letters {
                Ok(d) => json!(d.iter().map(|(why, (n, saga))| json!({
                    "reason": why, "count": n, "firstSaga": saga,
                })).collect::<Vec<_>>()),
                Err(e) => json!({ "error": e }),
            },
            "invariants": self.verdicts.iter().map(|v| json!({
                "name": v.name,
                "count": v.count,
                "pass": v.pass,
                "details": v.details,
            })).collect::<Vec<_>>(),
            "unexpectedExits": self.exits.iter().map(|e| json!({
                "name": e.name,
                "status": e.status,
                "atSecs": e.at.as_secs_f64(),
                "duringNatsOutage": e.during_nats_outage,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Sagas by final state (`COMPLETED` -> n).
pub fn states(sagas: &BTreeMap<String, i32>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for s in sagas.values() {
        *out.entry(state_name(*s)).or_default() += 1;
    }
    out
}
