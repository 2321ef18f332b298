//! The execution buckets against a real nats-server: failure counts of two replicas at once
//! both count, and rollout state writes are compare-and-set.

use baton_bus::Bus;
use baton_bus::testing::TestNats;
use baton_execution::store::Stored;
use baton_execution::{Attempts, Store};
use baton_proto::Execution;

/// Two replicas (two connections) count a failure of the same task at the same moment, many
/// times over: every failure is counted, and each call returns a distinct count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_failures_of_two_replicas_both_count() {
    let nats = TestNats::start().await;
    let one = Attempts::open(&nats.bus).await.unwrap();
    let other_bus = Bus::connect(nats.config.clone()).await.unwrap();
    let two = Attempts::open(&other_bus).await.unwrap();
    const ROUNDS: u64 = 20;
    for round in 0..ROUNDS {
        let (a, b) = tokio::join!(one.record_failure("t-race"), two.record_failure("t-race"));
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut seen = [a, b];
        seen.sort();
        assert_eq!(
            seen,
            [2 * round + 1, 2 * round + 2],
            "round {round}: both failures counted"
        );
    }
    assert_eq!(one.get("t-race").await.unwrap(), 2 * ROUNDS);
    assert_eq!(two.get("t-race").await.unwrap(), 2 * ROUNDS);

    one.reset("t-race").await.unwrap();
    assert_eq!(two.get("t-race").await.unwrap(), 0);
    assert_eq!(
        two.record_failure("t-race").await.unwrap(),
        1,
        "counts again after a reset"
    );
}

#[tokio::test]
async fn rollout_state_writes_are_compare_and_set() {
    let nats = TestNats::start().await;
    let store = Store::open(&nats.bus).await.unwrap();
    let exec = Execution {
        task_id: "t-cas".into(),
        tenant: "acme".into(),
        ..Default::default()
    };
    let Stored::Created(first) = store.create_or_load(&exec).await.unwrap() else {
        panic!("a new execution is created")
    };
    let Stored::Existing(loaded, at) = store.create_or_load(&exec).await.unwrap() else {
        panic!("a second start finds the first")
    };
    assert_eq!((loaded.tenant.as_str(), at), ("acme", first));
    let second = store.update(&exec, first).await.unwrap();
    let stale = store.update(&exec, first).await.unwrap_err();
    assert!(
        matches!(&stale, baton_execution::Error::Conflict { task_id } if task_id == "t-cas"),
        "{stale:?}"
    );
    assert_eq!(store.load("t-cas").await.unwrap().unwrap().1, second);
    assert_eq!(store.load("no such task").await.unwrap(), None);
}
