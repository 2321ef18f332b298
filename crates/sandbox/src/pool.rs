//! The warm pool: per image, up to `warm_pool` containers created ahead (created, not started),
//! so a run skips container creation. A pooled container serves exactly one run and is then
//! removed like any other; a background task per image creates a replacement whenever one is
//! taken. Pooled containers have network `none`: a policy-approved run with network creates its
//! own. They carry the sandbox's owner label, so [`crate::Sandbox::shutdown`] removes them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::docker;
use crate::run::Shared;

/// Ready containers of one image, and the signal that one was taken.
#[derive(Default)]
struct Slot {
    /// Created, never started container ids; front is the oldest.
    ready: Mutex<VecDeque<String>>,
    /// Wakes the image's refill task after a take.
    taken: Notify,
}

/// The pool of every configured image.
pub(crate) struct Pool {
    /// Image reference → its ready containers.
    slots: HashMap<String, Arc<Slot>>,
}

impl Pool {
    /// Starts a refill task per configured image (none when `warm_pool` is 0); the tasks stop
    /// when the sandbox shuts down, removing a container they were creating at that moment.
    pub(crate) fn start(shared: &Arc<Shared>) -> Pool {
        let mut slots = HashMap::new();
        if shared.config.warm_pool == 0 {
            return Pool { slots };
        }
        for image in shared.config.images.values() {
            if slots.contains_key(image) {
                continue;
            }
            let slot = Arc::new(Slot::default());
            slots.insert(image.clone(), slot.clone());
            shared
                .tasks
                .spawn(refill(shared.clone(), slot, image.clone()));
        }
        Pool { slots }
    }

    /// A ready container of `image`, if the pool has one; wakes the refill task.
    pub(crate) fn take(&self, image: &str) -> Option<String> {
        let slot = self.slots.get(image)?;
        let id = slot.ready.lock().expect("pool lock").pop_front();
        slot.taken.notify_one();
        id
    }

    /// Ready containers of `image` now.
    pub(crate) fn ready(&self, image: &str) -> usize {
        self.slots
            .get(image)
            .map_or(0, |s| s.ready.lock().expect("pool lock").len())
    }
}

/// Keeps `slot` at `warm_pool` containers of `image` until shutdown.
async fn refill(shared: Arc<Shared>, slot: Arc<Slot>, image: String) {
    let target = shared.config.warm_pool;
    loop {
        while slot.ready.lock().expect("pool lock").len() < target {
            if shared.shutdown.is_cancelled() {
                return;
            }
            match docker::create(&shared.docker, &shared.config, &shared.owner, &image, false).await
            {
                Ok(id) if shared.shutdown.is_cancelled() => {
                    let _ = docker::remove(&shared.docker, &id).await;
                    return;
                }
                Ok(id) => slot.ready.lock().expect("pool lock").push_back(id),
                Err(e) => {
                    tracing::warn!(image = %image, error = %e, "sandbox: warm pool could not create a container; retrying in 1s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shared.shutdown.cancelled() => return,
                    }
                }
            }
        }
        tokio::select! {
            _ = slot.taken.notified() => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}
