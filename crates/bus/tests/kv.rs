//! The typed, versioned key-value bucket against a real nats-server: compare-and-set on create
//! and update, decode errors that name the key, and a read-modify-write that loses no count
//! under concurrent writers.

use baton_bus::kv::{Entry, Kv, KvError};
use baton_bus::testing::TestNats;
use baton_bus::{Bus, Revision};
use baton_proto::Task;

fn task(id: &str, text: &str) -> Task {
    Task {
        task_id: id.into(),
        tenant: "acme".into(),
        submitted_by: text.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_refuses_a_key_that_holds_a_value() {
    let nats = TestNats::start().await;
    let kv: Kv<Task> = nats.bus.kv("baton_test_create", 3).await.unwrap();
    let first = kv.create("t-1", &task("t-1", "alice")).await.unwrap();
    let err = kv.create("t-1", &task("t-1", "bob")).await.unwrap_err();
    assert_eq!(
        err,
        KvError::Conflict {
            bucket: "baton_test_create".into(),
            key: "t-1".into(),
            revision: 0,
        }
    );
    assert!(err.to_string().contains("another writer"), "{err}");
    let (stored, revision) = kv.get("t-1").await.unwrap().unwrap();
    assert_eq!(stored.submitted_by, "alice", "the first create stands");
    assert_eq!(revision, first);
    assert_eq!(kv.get("t-2").await.unwrap(), None);
}

#[tokio::test]
async fn update_at_a_stale_revision_is_a_conflict() {
    let nats = TestNats::start().await;
    let kv: Kv<Task> = nats.bus.kv("baton_test_update", 3).await.unwrap();
    let r1 = kv.create("t-1", &task("t-1", "v1")).await.unwrap();
    let r2 = kv.update("t-1", &task("t-1", "v2"), r1).await.unwrap();
    assert!(r2 > r1);
    // A second writer that read r1 loses.
    let err = kv
        .update("t-1", &task("t-1", "stale"), r1)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, KvError::Conflict { key, revision, .. } if key == "t-1" && *revision == r1),
        "{err:?}"
    );
    assert_eq!(kv.get("t-1").await.unwrap().unwrap().0.submitted_by, "v2");
    // Revision 0 means "never written": refused for an existing key, accepted for a new one.
    assert!(matches!(
        kv.update("t-1", &task("t-1", "x"), 0).await,
        Err(KvError::Conflict { .. })
    ));
    let fresh = kv.update("t-3", &task("t-3", "new"), 0).await.unwrap();
    assert_eq!(kv.get("t-3").await.unwrap().unwrap().1, fresh);
}

#[tokio::test]
async fn an_undecodable_value_names_its_bucket_and_key() {
    let nats = TestNats::start().await;
    let raw = nats.bus.key_value("baton_test_decode", 1).await.unwrap();
    let revision = raw
        .put("t-bad", vec![0xff, 0xff, 0xff].into())
        .await
        .unwrap();
    let kv: Kv<Task> = nats.bus.kv("baton_test_decode", 1).await.unwrap();
    let err = kv.get("t-bad").await.unwrap_err();
    let KvError::Decode {
        bucket,
        key,
        revision: at,
        ..
    } = &err
    else {
        panic!("not a decode error: {err:?}")
    };
    assert_eq!(
        (bucket.as_str(), key.as_str(), *at),
        ("baton_test_decode", "t-bad", revision)
    );
    let message = err.to_string();
    assert!(
        message.contains("t-bad") && message.contains("baton_test_decode"),
        "{message}"
    );
}

#[tokio::test]
async fn purged_keys_read_as_deleted_and_can_be_created_again() {
    let nats = TestNats::start().await;
    let kv: Kv<Task> = nats.bus.kv("baton_test_purge", 3).await.unwrap();
    assert_eq!(kv.entry("t-1").await.unwrap(), Entry::Vacant);
    kv.create("t-1", &task("t-1", "a")).await.unwrap();
    kv.create("t-2", &task("t-2", "b")).await.unwrap();
    kv.purge("t-1").await.unwrap();
    let Entry::Deleted { revision } = kv.entry("t-1").await.unwrap() else {
        panic!("a purged key is deleted")
    };
    assert!(revision > 0);
    assert_eq!(kv.get("t-1").await.unwrap(), None);
    assert_eq!(kv.keys().await.unwrap(), ["t-2"]);
    kv.create("t-1", &task("t-1", "again")).await.unwrap();
    let mut keys = kv.keys().await.unwrap();
    keys.sort();
    assert_eq!(keys, ["t-1", "t-2"]);
}

#[tokio::test]
async fn an_invalid_key_is_refused_before_reaching_the_server() {
    let nats = TestNats::start().await;
    let kv: Kv<Task> = nats.bus.kv("baton_test_keys", 1).await.unwrap();
    for key in ["", ".lead", "has space", "a*b"] {
        let err = kv.get(key).await.unwrap_err();
        assert!(
            matches!(&err, KvError::InvalidKey { key: k, .. } if k == key),
            "{key:?}: {err:?}"
        );
    }
    assert!(matches!(
        kv.create(".lead", &task("x", "y")).await,
        Err(KvError::InvalidKey { .. })
    ));
}

/// Many writers on two connections (as two replicas would be) each add one to a counter: with
/// compare-and-set and retries, every increment counts.
#[tokio::test]
async fn concurrent_read_modify_writes_lose_no_update() {
    let nats = TestNats::start().await;
    let other = Bus::connect(nats.config.clone()).await.unwrap();
    let a: Kv<u64> = nats.bus.kv("baton_test_counter", 1).await.unwrap();
    let b: Kv<u64> = other.kv("baton_test_counter", 1).await.unwrap();
    const WRITERS: u64 = 16;
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..WRITERS {
        let kv = if i % 2 == 0 { a.clone() } else { b.clone() };
        writers.spawn(async move {
            kv.update_with("count", WRITERS as usize + 1, |n| n.unwrap_or(0) + 1)
                .await
        });
    }
    let mut seen: Vec<u64> = Vec::new();
    let mut revisions: Vec<Revision> = Vec::new();
    while let Some(result) = writers.join_next().await {
        let (n, revision) = result.unwrap().unwrap();
        seen.push(n);
        revisions.push(revision);
    }
    seen.sort();
    assert_eq!(
        seen,
        (1..=WRITERS).collect::<Vec<_>>(),
        "each writer saw its own count"
    );
    assert_eq!(a.get("count").await.unwrap().unwrap().0, WRITERS);
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len() as u64, WRITERS, "one revision per write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_with_gives_up_after_its_attempts() {
    let nats = TestNats::start().await;
    let kv: Kv<u64> = nats.bus.kv("baton_test_give_up", 1).await.unwrap();
    kv.create("count", &1).await.unwrap();
    // Every attempt's change is overtaken by another write before it lands.
    let racer = kv.clone();
    let err = kv
        .update_with("count", 3, |n| {
            // Another writer lands between this attempt's read and its update.
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    let (v, r) = racer.get("count").await.unwrap().unwrap();
                    racer.update("count", &(v + 100), r).await.unwrap();
                })
            });
            n.unwrap_or(0) + 1
        })
        .await
        .unwrap_err();
    assert!(matches!(err, KvError::Conflict { .. }), "{err:?}");
    assert_eq!(
        kv.get("count").await.unwrap().unwrap().0,
        301,
        "three attempts, each overtaken"
    );
}
