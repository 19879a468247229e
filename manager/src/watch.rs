//! Live task watching (`WatchTasks`). Every durable write publishes the
//! tasks it changed on one bounded broadcast channel; each watcher first
//! sends the current matching tasks, then the changes that match its filter.
//!
//! Order: a write takes a sequence number under the state lock (so sequence
//! order is state-change order) and its changes are broadcast only once it
//! is durable AND every earlier sequence is settled, so watchers see changes
//! in the order memory saw them even though writers wake up in any order.
//! A watcher that falls behind the channel is told so and its stream ends:
//! it never slows writers down.
mod changes;
mod hub;
mod stream;

pub use changes::{changes_from, WatchFilter};
pub use hub::{Published, WatchHub};
pub use stream::WatchStream;

/// Changes buffered for the slowest watcher before it counts as lagging.
pub const HUB_CAPACITY: usize = 16_384;
/// Messages queued per watcher stream.
const WATCHER_BUFFER: usize = 256;
/// Tasks looked at per hold of the state lock while sending the snapshot.
const SCAN_PER_LOCK: usize = 1024;
/// Tasks sent per snapshot page.
const PAGE_SIZE: usize = 256;
