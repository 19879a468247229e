//! The multi-threaded runtime the manager, the agent and the bench run on.
//!
//! One change from tokio's defaults: woken tasks run in the order they were
//! woken (no "LIFO slot"). By default the task woken last runs next, ahead
//! of the worker's queue. On a busy server that defeats batching on the
//! wire: when a commit finishes, the ~20 requests it made durable are woken
//! together; each one hands its answer to its HTTP/2 connection and wakes
//! the connection's task, which then ran at once and wrote that single
//! answer (one `writev` and one trip through the loopback or network stack
//! per answer). In arrival order the connection's task runs after the
//! requests woken before it and writes all their answers at once.
//!
//! The switch is part of tokio's unstable API: the workspace builds with
//! `--cfg tokio_unstable` (`.cargo/config.toml`). A build without it (a
//! `RUSTFLAGS` set in the environment replaces that file's flags) still
//! works, with tokio's default order; `built_in_arrival_order` says which.

use std::io;

use tokio::runtime::{Builder, Runtime};

/// Whether this build runs woken tasks in arrival order (see the module
/// documentation).
pub const fn built_in_arrival_order() -> bool {
    cfg!(tokio_unstable)
}

/// A multi-threaded runtime with I/O and timers, one worker per core,
/// woken tasks run in arrival order. `name` names its threads.
pub fn multi_thread(name: &str) -> io::Result<Runtime> {
    builder(name).build()
}

fn builder(name: &str) -> Builder {
    let mut builder = Builder::new_multi_thread();
    builder.enable_all().thread_name(name);
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::Notify;

    use super::*;

    #[test]
    fn the_workspace_builds_with_the_runtime_flag() {
        assert!(
            built_in_arrival_order(),
            "built without `--cfg tokio_unstable`: .cargo/config.toml sets it; a RUSTFLAGS in \
             the environment replaces it, so add `--cfg tokio_unstable` to it"
        );
    }

    /// What the batching relies on: a task woken first runs first. With
    /// tokio's default the last one woken (`b`) would run ahead of `a`.
    #[test]
    fn woken_tasks_run_in_the_order_they_were_woken() {
        // One worker, so that the order is the scheduler's and not a race.
        let rt = builder("runtime-test")
            .worker_threads(1)
            .build()
            .expect("runtime");
        let order = rt.block_on(async {
            let order = Arc::new(Mutex::new(Vec::new()));
            let (a, b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
            let wait = |name: &'static str, n: &Arc<Notify>| {
                let (n, order) = (Arc::clone(n), Arc::clone(&order));
                tokio::spawn(async move {
                    n.notified().await;
                    order.lock().expect("lock").push(name);
                })
            };
            let (ta, tb) = (wait("a", &a), wait("b", &b));
            // Let both park on their Notify, then wake them from one task.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let waker = tokio::spawn(async move {
                a.notify_one();
                b.notify_one();
            });
            waker.await.expect("waker");
            ta.await.expect("a");
            tb.await.expect("b");
            let v = order.lock().expect("lock").clone();
            v
        });
        assert_eq!(order, ["a", "b"]);
    }
}
