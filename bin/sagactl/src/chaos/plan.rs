//! Every random choice of a chaos run, made up front from the seed: which orders are
//! declined or cancelled and what they buy; which faults hit which process, when, and
//! for how long. The same seed and flags give the same plan (what the run then meets is
//! timing, which no seed fixes).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use saga_proto::{OrderItem, PlaceOrderRequest};

use crate::args::FaultKind;

/// Customers whose id starts with this are declined by the example payment service
/// (bin/participants/src/payment.rs).
const DECLINED_PREFIX: &str = "decline-";

/// One order of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderPlan {
    pub index: u64,
    pub idempotency_key: String,
    pub customer_id: String,
    pub items: Vec<OrderItem>,
    /// The payment service declines this customer.
    pub declined: bool,
    /// CancelSaga right after PlaceOrder answered.
    pub cancel: bool,
}

impl OrderPlan {
    pub fn request(&self) -> PlaceOrderRequest {
        PlaceOrderRequest {
            customer_id: self.customer_id.clone(),
            items: self.items.clone(),
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}

/// Separate streams, so that adding faults does not change the orders and back.
fn rng(seed: u64, stream: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The `n` orders of a run with `seed`.
pub fn orders(
    seed: u64,
    n: u64,
    decline_share: f64,
    cancel_share: f64,
    skus: u32,
) -> Vec<OrderPlan> {
    let mut rng = rng(seed, 1);
    (0..n)
        .map(|index| {
            let declined = rng.gen_bool(decline_share);
            let cancel = rng.gen_bool(cancel_share);
            let lines = rng.gen_range(1..=2u32);
            let items = (0..lines)
                .map(|_| OrderItem {
                    sku: format!("chaos-sku-{}", rng.gen_range(0..skus)),
                    quantity: rng.gen_range(1..=3),
                    unit_price_cents: rng.gen_range(100..=5_000),
                })
                .collect();
            let customer_id = if declined {
                format!("{DECLINED_PREFIX}chaos-{index}")
            } else {
                format!("chaos-{index}")
            };
            OrderPlan {
                index,
                idempotency_key: format!("chaos-{seed}-{index}"),
                customer_id,
                items,
                declined,
                cancel,
            }
        })
        .collect()
}

/// What a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `saga-worker-<i+1>`.
    Worker(usize),
    /// The i-th participant.
    Participant(usize),
    Gateway,
    Nats,
}

/// One fault of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedFault {
    /// 1, 2, ...
    pub number: u32,
    pub kind: FaultKind,
    pub target: Target,
    /// When, counted from the start of the load (later if the fault before it is not
    /// over yet).
    pub at: Duration,
    /// How long the process stays down (kill) or stopped (pause).
    pub hold: Duration,
}

/// What the fault plan is drawn over.
#[derive(Debug, Clone)]
pub struct FaultSpace {
    pub count: u32,
    /// Kinds to take turns among (never empty).
    pub kinds: Vec<FaultKind>,
    pub workers: usize,
    pub participants: usize,
    /// The faults are spread over this window (the load's planned length).
    pub window: Duration,
    pub lease_ttl: Duration,
}

/// The faults of a run with `seed`: every kind gets `count / kinds` turns, the rest go
/// to kinds drawn without repeats, and the order is shuffled. Fault `i` falls in the
/// i-th of `count` equal slices of the window, in its first half.
pub fn faults(seed: u64, space: &FaultSpace) -> Vec<PlannedFault> {
    let mut rng = rng(seed, 2);
    let k = space.kinds.len().max(1);
    let count = space.count as usize;
    let mut kinds: Vec<FaultKind> = space
        .kinds
        .iter()
        .copied()
        .cycle()
        .take(count / k * k)
        .collect();
    let mut extra = space.kinds.clone();
    extra.shuffle(&mut rng);
    kinds.extend(extra.into_iter().take(count % k));
    kinds.shuffle(&mut rng);

    let slice = space.window.div_f64(count.max(1) as f64);
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            let target = match kind {
                FaultKind::KillWorker | FaultKind::PauseWorker => {
                    Target::Worker(rng.gen_range(0..space.workers.max(1)))
                }
                FaultKind::KillParticipant => {
                    Target::Participant(rng.gen_range(0..space.participants.max(1)))
                }
                FaultKind::KillGateway => Target::Gateway,
                FaultKind::KillNats => Target::Nats,
            };
            let extra = Duration::from_millis(rng.gen_range(1_000..=3_000));
            let hold = match kind {
                FaultKind::PauseWorker => space.lease_ttl + extra,
                _ => extra,
            };
            let at = slice.mul_f64(i as f64 + rng.gen_range(0.0..0.5));
            PlannedFault {
                number: i as u32 + 1,
                kind,
                target,
                at,
                hold,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(count: u32) -> FaultSpace {
        FaultSpace {
            count,
            kinds: FaultKind::ALL.to_vec(),
            workers: 3,
            participants: 3,
            window: Duration::from_secs(100),
            lease_ttl: Duration::from_millis(3000),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_another() {
        assert_eq!(orders(7, 200, 0.2, 0.05, 8), orders(7, 200, 0.2, 0.05, 8));
        assert_ne!(orders(7, 200, 0.2, 0.05, 8), orders(8, 200, 0.2, 0.05, 8));
        assert_eq!(faults(7, &space(20)), faults(7, &space(20)));
        assert_ne!(faults(7, &space(20)), faults(8, &space(20)));
        // The orders do not depend on the faults.
        let a = orders(7, 50, 0.2, 0.05, 8);
        let _ = faults(7, &space(3));
        assert_eq!(a, orders(7, 50, 0.2, 0.05, 8));
    }

    #[test]
    fn orders_follow_the_shares_and_carry_stable_keys() {
        let o = orders(3, 10_000, 0.2, 0.05, 8);
        let declined = o.iter().filter(|o| o.declined).count();
        let cancelled = o.iter().filter(|o| o.cancel).count();
        assert!((1_700..2_300).contains(&declined), "{declined}");
        assert!((350..650).contains(&cancelled), "{cancelled}");
        assert!(o
            .iter()
            .all(|o| o.declined == o.customer_id.starts_with("decline-")));
        assert_eq!(o[42].idempotency_key, "chaos-3-42");
        assert!(o.iter().all(|o| !o.items.is_empty()
            && o.items
                .iter()
                .all(|i| i.quantity > 0 && i.sku.starts_with("chaos-sku-"))));
        assert!(orders(3, 100, 0.0, 0.0, 1)
            .iter()
            .all(|o| !o.declined && !o.cancel));
    }

    #[test]
    fn every_kind_takes_its_turn_and_holds_are_in_range() {
        for count in [5u32, 7, 250] {
            let plan = faults(11, &space(count));
            assert_eq!(plan.len(), count as usize);
            for kind in FaultKind::ALL {
                let n = plan.iter().filter(|f| f.kind == kind).count();
                assert!(n >= count as usize / 5, "{count}: {kind:?} {n}");
            }
            let mut last = Duration::ZERO;
            for f in &plan {
                assert!(f.at >= last && f.at < Duration::from_secs(100), "{f:?}");
                last = f.at;
                let (lo, hi) = match f.kind {
                    FaultKind::PauseWorker => (4_000, 6_000),
                    _ => (1_000, 3_000),
                };
                let ms = f.hold.as_millis() as u64;
                assert!((lo..=hi).contains(&ms), "{f:?}");
                match (f.kind, f.target) {
                    (FaultKind::KillWorker | FaultKind::PauseWorker, Target::Worker(w)) => {
                        assert!(w < 3)
                    }
                    (FaultKind::KillParticipant, Target::Participant(p)) => assert!(p < 3),
                    (FaultKind::KillGateway, Target::Gateway)
                    | (FaultKind::KillNats, Target::Nats) => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        let only = FaultSpace {
            kinds: vec![FaultKind::KillNats],
            ..space(4)
        };
        assert!(faults(1, &only)
            .iter()
            .all(|f| f.kind == FaultKind::KillNats));
    }
}
