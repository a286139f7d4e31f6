use super::*;
use chrono::Utc;

fn event(body: EventBody) -> Event {
    Event {
        ts: Utc::now(),
        host: "h".into(),
        body,
    }
}

fn probe_like(i: u64) -> Event {
    use crate::event::{Connection, Endpoint, Family, Proto};
    event(EventBody::Listen(Connection {
        proto: Proto::Tcp,
        family: Family::Ipv4,
        direction: None,
        src: None,
        dst: Endpoint::new([127, 0, 0, 1].into(), i as u16),
        process: None,
        backend: "tracepoint".into(),
        netns: None,
        failed: false,
        bytes: None,
        existing: false,
    }))
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_stalled_consumer_loses_only_its_own_events_and_they_are_counted() {
    run(async {
        let mut hub = Hub::new();
        let mut sink = hub.subscribe_lossless("sink", 4);
        let _stalled = hub.subscribe("stalled", 3);
        let mut fast = hub.subscribe("fast", 100);
        // The sink is drained by a thread of its own, as in `netmon run`.
        let reader = std::thread::spawn(move || {
            let mut n = 0u64;
            while sink.blocking_recv().is_some() {
                n += 1;
            }
            n
        });
        for i in 0..50 {
            hub.emit(probe_like(i)).await.unwrap();
        }
        hub.flush().await.unwrap();
        let stats = hub.consumer_stats();
        assert_eq!(
            stats["stalled"],
            ConsumerStats {
                queued: 3,
                dropped: 47
            }
        );
        assert_eq!(stats["fast"].dropped, 0);
        assert_eq!(stats["sink"].dropped, 0);
        assert_eq!(hub.event_counts(&[])["listen"], 50);
        let mut got = 0;
        while fast.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 50);
        hub.close();
        assert_eq!(reader.join().unwrap(), 50, "the sink got every event");
    });
}

#[test]
fn counts_every_type_but_stats_and_lists_the_always_types() {
    run(async {
        let mut hub = Hub::new();
        hub.emit(event(EventBody::Stats(Default::default())))
            .await
            .unwrap();
        hub.emit(probe_like(0)).await.unwrap();
        let counts = hub.event_counts(&["connect"]);
        assert_eq!(counts.get("connect"), Some(&0));
        assert_eq!(counts.get("listen"), Some(&1));
        assert_eq!(counts.get("stats"), None);
    });
}

#[test]
fn a_lossless_consumer_that_stopped_stops_the_pipeline_a_lossy_one_does_not() {
    run(async {
        let mut hub = Hub::new();
        drop(hub.subscribe("gone", 8));
        hub.emit(probe_like(0)).await.unwrap();
        hub.flush().await.unwrap();
        assert_eq!(hub.consumer_stats()["gone"].dropped, 1);
        drop(hub.subscribe_lossless("sink", 8));
        hub.emit(probe_like(1)).await.unwrap();
        let err = hub.flush().await.unwrap_err();
        assert_eq!(err.0, "sink");
    });
}

#[test]
fn nothing_reaches_a_consumer_before_the_flush_and_everything_after_in_order() {
    run(async {
        let mut hub = Hub::new();
        let mut rx = hub.subscribe("c", 10_000);
        for i in 0..10 {
            hub.emit(probe_like(i)).await.unwrap();
        }
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(
            hub.consumer_stats()["c"].queued,
            10,
            "pending counts as queued"
        );
        hub.flush().await.unwrap();
        // A full batch is handed over without waiting for the flush.
        for i in 10..(10 + BATCH as u64) {
            hub.emit(probe_like(i)).await.unwrap();
        }
        let mut ports = Vec::new();
        while let Ok(e) = rx.try_recv() {
            ports.push(e.body.connection().unwrap().dst.port);
        }
        assert_eq!(ports, (0..(10 + BATCH as u16)).collect::<Vec<_>>());
        assert_eq!(hub.consumer_stats()["c"].queued, 0);
        hub.close();
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    });
}

#[test]
fn a_lossy_queue_keeps_the_oldest_events_that_fit_and_counts_the_rest() {
    run(async {
        let mut hub = Hub::new();
        let mut rx = hub.subscribe("c", 5);
        for i in 0..3 {
            hub.emit(probe_like(i)).await.unwrap();
        }
        hub.flush().await.unwrap();
        for i in 3..7 {
            hub.emit(probe_like(i)).await.unwrap();
        }
        hub.flush().await.unwrap();
        assert_eq!(
            hub.consumer_stats()["c"],
            ConsumerStats {
                queued: 5,
                dropped: 2
            }
        );
        let mut ports = Vec::new();
        while let Ok(e) = rx.try_recv() {
            ports.push(e.body.connection().unwrap().dst.port);
        }
        assert_eq!(ports, vec![0, 1, 2, 3, 4]);
        // Taken events free their room.
        hub.emit(probe_like(9)).await.unwrap();
        hub.flush().await.unwrap();
        assert_eq!(
            rx.try_recv().unwrap().body.connection().unwrap().dst.port,
            9
        );
        assert_eq!(hub.consumer_stats()["c"].dropped, 2);
    });
}

#[test]
fn a_stalled_lossless_consumer_makes_the_hub_wait_and_loses_nothing() {
    run(async {
        let mut hub = Hub::new();
        let mut sink = hub.subscribe_lossless("sink", 2 * BATCH);
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            go_rx.recv().unwrap();
            let mut n = 0u64;
            while sink.blocking_recv().is_some() {
                n += 1;
            }
            n
        });
        let total = 10 * BATCH as u64;
        // Released only after the hub had to wait for room.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            go_tx.send(()).unwrap();
        });
        for i in 0..total {
            hub.emit(probe_like(i)).await.unwrap();
        }
        hub.flush().await.unwrap();
        hub.close();
        releaser.join().unwrap();
        assert_eq!(reader.join().unwrap(), total);
    });
}

#[test]
fn events_are_numbered_on_from_the_start_and_a_drop_leaves_a_gap() {
    run(async {
        let mut hub = Hub::numbered_after(100);
        let mut rx = hub.subscribe("c", 3);
        let mut all = hub.subscribe("all", 100);
        assert_eq!(rx.seq(), 100, "before any event: the one before the first");
        for i in 0..5 {
            hub.emit(probe_like(i)).await.unwrap();
        }
        // 101 to 103 fit; 104 and 105 are dropped for this consumer.
        hub.flush().await.unwrap();
        let mut seqs = Vec::new();
        while rx.try_recv().is_ok() {
            seqs.push(rx.seq());
        }
        assert_eq!(seqs, [101, 102, 103]);
        hub.emit(probe_like(9)).await.unwrap();
        hub.flush().await.unwrap();
        assert_eq!(
            rx.try_recv().unwrap().body.connection().unwrap().dst.port,
            9
        );
        assert_eq!(rx.seq(), 106);
        let mut seqs = Vec::new();
        while all.try_recv().is_ok() {
            seqs.push(all.seq());
        }
        assert_eq!(seqs, [101, 102, 103, 104, 105, 106]);
    });
}
