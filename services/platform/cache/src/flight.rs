//! Single flight: concurrent loads of one key in one process share a single execution.
//!
//! Without it, a popular entry expiring sends every request that misses it to the database at
//! once (a stampede). The first caller for a key runs the load; the others wait for its result.
//! If it fails, the next waiter runs its own load, so an error is never handed to callers that
//! did not cause it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

type Cell = Arc<OnceCell<String>>;

#[derive(Default)]
pub(crate) struct Flights {
    in_flight: Mutex<HashMap<String, Cell>>,
}

impl Flights {
    /// Runs `load` unless a load of `key` is already running, in which case its result (a
    /// serialized value) is shared.
    pub(crate) async fn run<E, F, Fut>(&self, key: &str, load: F) -> Result<String, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
    {
        let cell = self
            .in_flight
            .lock()
            .expect("never poisoned")
            .entry(key.to_owned())
            .or_default()
            .clone();
        let result = cell.get_or_try_init(load).await.cloned();
        // The flight is over; later callers find the value in the cache (or start anew).
        let mut in_flight = self.in_flight.lock().expect("never poisoned");
        if in_flight.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            in_flight.remove(key);
        }
        result
    }
}
