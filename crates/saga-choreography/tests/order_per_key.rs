//! The consumer loop with in-memory ports: events of one key wait behind a failing one
//! on its ladder while other keys go on; settlements and published messages as a user
//! of the broker would see them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_choreography::saga_proto::{self, Message};
use saga_choreography::{
    ConsumerStore, Event, EventConsumer, EventHandler, EventTx, HandleError, RetryLadder, Settings,
};
use saga_ports::memory::{memory_consumer, MemoryPublisher, Settled};
use saga_ports::{Headers, OutgoingMessage};

/// Records the order it handles events in; the first OrderConfirmed of `o-slow` fails.
#[derive(Default)]
struct Recorder {
    order: Mutex<Vec<String>>,
    failures: AtomicU32,
}

impl EventHandler for Recorder {
    fn trees(&self) -> &[&str] {
        &[]
    }
    fn handle(&self, _tx: &EventTx<'_>, e: &Event) -> Result<Vec<OutgoingMessage>, HandleError> {
        if e.key == "o-slow"
            && e.name == "OrderConfirmed"
            && self.failures.fetch_add(1, Ordering::SeqCst) == 0
        {
            return Err(HandleError::Technical("first attempt fails".into()));
        }
        self.order
            .lock()
            .unwrap()
            .push(format!("{}:{}", e.key, e.name));
        Ok(Vec::new())
    }
}

fn placed(order: &str) -> Vec<u8> {
    saga_proto::OrderPlaced {
        order_id: order.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn confirmed(order: &str) -> Vec<u8> {
    saga_proto::OrderConfirmed {
        order_id: order.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn cancelled(order: &str) -> Vec<u8> {
    saga_proto::OrderCancelled {
        order_id: order.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_key_waits_behind_its_failing_event_while_other_keys_go_on() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/order-events.yaml"
    );
    let (catalog, codec) = saga_choreography::load(std::path::Path::new(path)).unwrap();
    let handler = Arc::new(Recorder::default());
    let publisher = Arc::new(MemoryPublisher::default());
    let consumer = EventConsumer::new(
        "notification",
        Arc::new(catalog),
        codec,
        ConsumerStore::temporary().unwrap(),
        handler.clone(),
        publisher.clone(),
    )
    .unwrap()
    .with_settings(Settings {
        ladder: RetryLadder::new(vec![Duration::from_millis(300)]),
        fetch_wait: Duration::from_millis(20),
        heartbeat: Duration::from_millis(50),
        ..Settings::default()
    });
    let (feed, pull) = memory_consumer();
    let none = Headers::new;
    let s = |name: &str, key: &str| format!("events.orders.{name}.{key}");
    feed.deliver(&s("OrderPlaced", "o-slow"), none(), placed("o-slow"));
    feed.deliver(&s("OrderConfirmed", "o-slow"), none(), confirmed("o-slow"));
    feed.deliver(&s("OrderCancelled", "o-slow"), none(), cancelled("o-slow"));
    feed.deliver(&s("OrderPlaced", "o-fast"), none(), placed("o-fast"));
    feed.deliver(&s("OrderConfirmed", "o-fast"), none(), confirmed("o-fast"));
    let bad = feed.deliver(&s("OrderConfirmed", "o-bad"), none(), b"\x0a\xff".to_vec());

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(pull, async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while feed.settled().len() < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "settled: {:?}",
            feed.settled()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    run.await.unwrap().unwrap();

    let order = handler.order.lock().unwrap().clone();
    let pos = |x: &str| {
        order
            .iter()
            .position(|o| o == x)
            .unwrap_or_else(|| panic!("{x} missing from {order:?}"))
    };
    // o-fast finished while o-slow waited 300 ms on its ladder.
    assert!(
        pos("o-fast:OrderConfirmed") < pos("o-slow:OrderConfirmed"),
        "{order:?}"
    );
    // Within o-slow, stream order held: the cancel waited behind the failing confirm.
    assert!(pos("o-slow:OrderPlaced") < pos("o-slow:OrderConfirmed"));
    assert!(
        pos("o-slow:OrderConfirmed") < pos("o-slow:OrderCancelled"),
        "{order:?}"
    );
    assert_eq!(
        handler.failures.load(Ordering::SeqCst),
        2,
        "one failure, one success"
    );
    let settled = feed.settled();
    assert!(
        settled.contains(&(bad, Settled::Term)),
        "the undecodable one is dead-lettered"
    );
    assert_eq!(
        settled.iter().filter(|(_, s)| *s == Settled::Ack).count(),
        5
    );
    let dlq = publisher.on("dlq.");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].subject, "dlq.events.orders.OrderConfirmed.o-bad");
    assert!(dlq[0].headers["Saga-Dlq-Reason"].starts_with("schema: payload does not decode"));
}
