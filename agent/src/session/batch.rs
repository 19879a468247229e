//! Batching of reconciler output: whatever is queued goes up as one
//! StatusBatch, so bursts cost few messages while a lone update leaves at
//! once.
use std::collections::HashMap;

use minkube::pb::{self, agent_message};
use tokio::sync::mpsc;

use crate::reconciler::Outbound;

/// Most items in one batch.
pub(super) const MAX_BATCH: usize = 256;
/// `first` plus whatever is already queued, up to `max` items. No timer:
/// a lone update leaves at once (it is part of container exit -> watcher),
/// and under load batches fill from what queued during the previous send.
/// One yield lets updates that other ready tasks are about to queue (a burst
/// of events handled in the same tick) join the batch.
pub(super) async fn collect(
    first: Outbound,
    rx: &mut mpsc::Receiver<Outbound>,
    max: usize,
) -> Vec<Outbound> {
    let mut batch = vec![first];
    let mut yielded = false;
    while batch.len() < max {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) if !yielded => {
                yielded = true;
                tokio::task::yield_now().await;
            }
            Err(mpsc::error::TryRecvError::Empty) => break,
        }
    }
    batch
}

/// Turns a batch into stream messages, keeping the order: consecutive
/// updates share one StatusBatch, acks go alone. Full-sync snapshots of
/// other sessions are stale and dropped, and so is what a later item of
/// the batch supersedes (see [`superseded`]).
pub(super) fn to_messages(batch: Vec<Outbound>, session: u64) -> Vec<pb::AgentMessage> {
    let left_out = superseded(&batch);
    let batch = batch
        .into_iter()
        .zip(left_out)
        .filter_map(|(item, out)| (!out).then_some(item));
    let mut out = Vec::new();
    let mut updates = Vec::new();
    let flush = |updates: &mut Vec<pb::TaskStatusUpdate>, out: &mut Vec<pb::AgentMessage>| {
        if !updates.is_empty() {
            out.push(pb::AgentMessage {
                msg: Some(agent_message::Msg::Status(pb::StatusBatch {
                    updates: std::mem::take(updates),
                    full_sync: false,
                })),
            });
        }
    };
    for item in batch {
        match item {
            Outbound::Update(u) => updates.push(u),
            Outbound::Ack(a) => {
                flush(&mut updates, &mut out);
                out.push(pb::AgentMessage {
                    msg: Some(agent_message::Msg::Ack(a)),
                });
            }
            Outbound::FullSync { session: s, .. } => {
                tracing::debug!(stale = s, current = session, "dropping a stale full sync");
            }
        }
    }
    flush(&mut updates, &mut out);
    out
}

/// Which items of a batch say nothing that a later item of the same
/// attempt does not say too; leaving them out spares the manager a message
/// or a write (a task's history keeps every state it was in):
/// - an Ack followed by an update: the agent records an assignment before
///   it reports on it, so the update confirms the record as well;
/// - an update followed by one in the same state, or a SCHEDULED one (a
///   progress note: "preparing", "pulling image") followed by any: each
///   update carries every fact known so far (container, ports, start time).
///
/// RUNNING followed by COMPLETED or FAILED keeps both: the task ran.
fn superseded(batch: &[Outbound]) -> Vec<bool> {
    let mut dropped = vec![false; batch.len()];
    if batch.len() < 2 {
        return dropped;
    }
    // Walking back: the state of the next update kept for each attempt.
    let mut next: HashMap<(&str, u32), i32> = HashMap::new();
    for (i, item) in batch.iter().enumerate().rev() {
        match item {
            Outbound::Update(u) => {
                let key = (u.task_id.as_str(), u.attempt);
                match next.get(&key) {
                    Some(&later) if u.state == later || u.state == SCHEDULED => dropped[i] = true,
                    _ => {
                        next.insert(key, u.state);
                    }
                }
            }
            Outbound::Ack(a) => dropped[i] = next.contains_key(&(a.task_id.as_str(), a.attempt)),
            Outbound::FullSync { .. } => {}
        }
    }
    dropped
}

const SCHEDULED: i32 = pb::TaskState::Scheduled as i32;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An update of a task of its own.
    fn update(seq: u64) -> Outbound {
        report(&format!("t{seq}"), 1, pb::TaskState::Running, seq)
    }

    fn report(task_id: &str, attempt: u32, state: pb::TaskState, seq: u64) -> Outbound {
        Outbound::Update(pb::TaskStatusUpdate {
            task_id: task_id.into(),
            attempt,
            sequence: seq,
            state: state as i32,
            ..Default::default()
        })
    }

    fn ack_of(task_id: &str, attempt: u32) -> Outbound {
        Outbound::Ack(pb::Ack {
            task_id: task_id.into(),
            attempt,
        })
    }

    /// What goes up: `ack task/attempt` or `task/attempt state seq`.
    fn sent(batch: Vec<Outbound>) -> Vec<String> {
        to_messages(batch, 1)
            .into_iter()
            .flat_map(|m| match m.msg.unwrap() {
                agent_message::Msg::Status(b) => b
                    .updates
                    .iter()
                    .map(|u| {
                        let state = minkube::convert::task_state_name(u.state());
                        format!("{}/{} {state} {}", u.task_id, u.attempt, u.sequence)
                    })
                    .collect(),
                agent_message::Msg::Ack(a) => vec![format!("ack {}/{}", a.task_id, a.attempt)],
                other => vec![format!("{other:?}")],
            })
            .collect()
    }

    fn ack() -> Outbound {
        Outbound::Ack(pb::Ack {
            task_id: "t".into(),
            attempt: 1,
        })
    }

    fn kinds(msgs: &[pb::AgentMessage]) -> Vec<String> {
        msgs.iter()
            .map(|m| match m.msg.as_ref().unwrap() {
                agent_message::Msg::Status(b) => format!("status{}", b.updates.len()),
                agent_message::Msg::Ack(_) => "ack".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn order_is_kept_and_updates_are_grouped() {
        let msgs = to_messages(
            vec![
                update(1),
                ack(),
                update(2),
                update(3),
                Outbound::FullSync {
                    session: 1,
                    updates: vec![],
                },
                update(4),
            ],
            2,
        );
        assert_eq!(kinds(&msgs), vec!["status1", "ack", "status3"]);
    }

    #[test]
    fn an_ack_followed_by_a_report_of_its_attempt_is_left_out() {
        use pb::TaskState::Scheduled;
        assert_eq!(
            sent(vec![ack_of("a", 1), report("a", 1, Scheduled, 1)]),
            vec!["a/1 scheduled 1"]
        );
        // A report of another attempt or task, or one that came first,
        // does not confirm this assignment.
        assert_eq!(
            sent(vec![
                report("a", 1, Scheduled, 1),
                ack_of("a", 2),
                report("b", 2, Scheduled, 1),
                ack_of("a", 1),
            ]),
            vec!["a/1 scheduled 1", "ack a/2", "b/2 scheduled 1", "ack a/1"]
        );
        assert_eq!(sent(vec![ack_of("a", 1)]), vec!["ack a/1"]);
    }

    #[test]
    fn superseded_reports_are_left_out_but_every_state_the_task_was_in_stays() {
        use pb::TaskState::{Completed, Failed, Running, Scheduled};
        // A burst of a quick task: the progress note and the ack go.
        assert_eq!(
            sent(vec![
                ack_of("a", 1),
                report("a", 1, Scheduled, 1),
                report("b", 1, Running, 7),
                report("a", 1, Running, 2),
                report("a", 1, Completed, 3),
            ]),
            vec!["b/1 running 7", "a/1 running 2", "a/1 completed 3"]
        );
        // The same state twice: the later one carries every fact.
        assert_eq!(
            sent(vec![report("a", 1, Running, 4), report("a", 1, Running, 5)]),
            vec!["a/1 running 5"]
        );
        // Notes while preparing, then a failure before it ran.
        assert_eq!(
            sent(vec![
                report("a", 1, Scheduled, 1),
                report("a", 1, Scheduled, 2),
                report("a", 1, Failed, 3),
            ]),
            vec!["a/1 failed 3"]
        );
        // A new attempt is a task of its own here.
        assert_eq!(
            sent(vec![
                report("a", 1, Running, 4),
                report("a", 2, Scheduled, 5)
            ]),
            vec!["a/1 running 4", "a/2 scheduled 5"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn collects_what_is_ready_up_to_the_limit() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 2..=6 {
            tx.send(update(i)).await.unwrap();
        }
        let batch = collect(update(1), &mut rx, 4).await;
        assert_eq!(batch.len(), 4);
        let batch = collect(update(9), &mut rx, 4).await;
        assert_eq!(
            batch.len(),
            3,
            "two left plus the first; then nothing is queued"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn takes_what_a_ready_task_queues_but_never_waits_for_a_timer() {
        let (tx, mut rx) = mpsc::channel(16);
        let sender = tokio::spawn(async move {
            // Ready at once: runs during collect's one yield.
            tx.send(update(2)).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            tx.send(update(3)).await.unwrap();
        });
        let batch = collect(update(1), &mut rx, MAX_BATCH).await;
        assert_eq!(batch.len(), 2, "the first and what the ready task queued");
        sender.await.unwrap();
        let later = collect(update(9), &mut rx, MAX_BATCH).await;
        assert_eq!(later.len(), 2);
    }
}
