//! Batching of reconciler output: whatever is queued goes up as one
//! StatusBatch, so bursts cost few messages while a lone update leaves at
//! once.
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
/// other sessions are stale and dropped.
pub(super) fn to_messages(batch: Vec<Outbound>, session: u64) -> Vec<pb::AgentMessage> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn update(seq: u64) -> Outbound {
        Outbound::Update(pb::TaskStatusUpdate {
            task_id: "t".into(),
            sequence: seq,
            ..Default::default()
        })
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
