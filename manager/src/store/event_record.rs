//! The stored form of a task's event: the event without its task id, which
//! the key it is stored under already holds (38 of its ~140 bytes, in the
//! journal and in the B-tree). Events stored whole, as earlier versions
//! did, read the same.
use std::ops::Range;

use minkube::pb;
use prost::encoding::{decode_key, decode_varint, WireType};
use prost::{DecodeError, Message};

/// Field number of `TaskEvent.task_id`.
const TASK_ID_FIELD: u32 = 2;

/// Appends `event` as stored.
pub fn encode(event: &pb::TaskEvent, buf: &mut Vec<u8>) {
    let start = buf.len();
    event.encode_raw(buf);
    if event.task_id.is_empty() {
        return;
    }
    // Cut the field out of the encoding rather than encode the others one
    // by one: a field added to `TaskEvent` later is stored without a change
    // here.
    if let Some(r) = field_range(&buf[start..], TASK_ID_FIELD) {
        buf.drain(start + r.start..start + r.end);
    }
}

/// Decodes an event stored under task `task_id`.
pub fn decode(task_id: &str, bytes: &[u8]) -> Result<pb::TaskEvent, DecodeError> {
    let mut event = pb::TaskEvent::decode(bytes)?;
    if event.task_id.is_empty() {
        event.task_id = task_id.to_string();
    }
    Ok(event)
}

/// Where the first field `number` lies in the encoded message `msg`.
fn field_range(msg: &[u8], number: u32) -> Option<Range<usize>> {
    let mut rest = msg;
    while !rest.is_empty() {
        let at = msg.len() - rest.len();
        let (tag, wire) = decode_key(&mut rest).ok()?;
        match wire {
            WireType::Varint => {
                decode_varint(&mut rest).ok()?;
            }
            WireType::SixtyFourBit => rest = rest.get(8..)?,
            WireType::ThirtyTwoBit => rest = rest.get(4..)?,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                rest = rest.get(len..)?;
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        }
        if tag == number {
            return Some(at..msg.len() - rest.len());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event() -> pb::TaskEvent {
        pb::TaskEvent {
            id: "9c1d7c0e-5d2b-4f5e-9a43-0f6d1f1b2c3d".into(),
            task_id: "01a245e4-9f90-7446-a716-22456e0ba02d".into(),
            state: pb::TaskState::Running as i32,
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_796_000_000,
                nanos: 5,
            }),
            reason: "started".into(),
            node_id: "fb413b64-49b0-4cee-b972-ceb31b85a52b".into(),
            attempt: 3,
        }
    }

    #[test]
    fn an_event_is_stored_without_its_task_id_and_read_back_whole() {
        let e = event();
        let mut buf = vec![0xAA]; // what the buffer held before stays
        encode(&e, &mut buf);
        assert_eq!(buf[0], 0xAA);
        let stored = &buf[1..];
        assert_eq!(stored.len(), e.encoded_len() - 38);
        let bare = pb::TaskEvent::decode(stored).unwrap();
        assert_eq!(bare.task_id, "");
        assert_eq!(bare.node_id, e.node_id);
        assert_eq!(decode(&e.task_id, stored).unwrap(), e);
    }

    #[test]
    fn an_event_stored_whole_reads_the_same() {
        let e = event();
        let whole = e.encode_to_vec();
        // The key's id is not taken over one the record holds.
        assert_eq!(decode("another-id", &whole).unwrap(), e);
    }

    #[test]
    fn every_other_field_survives_whatever_is_set() {
        let mut e = event();
        e.id.clear();
        e.reason.clear();
        e.timestamp = None;
        let mut buf = Vec::new();
        encode(&e, &mut buf);
        assert_eq!(decode(&e.task_id, &buf).unwrap(), e);
        let mut no_task = event();
        no_task.task_id.clear();
        let mut buf = Vec::new();
        encode(&no_task, &mut buf);
        assert_eq!(buf, no_task.encode_to_vec());
    }

    #[test]
    fn a_field_is_found_past_fields_of_every_wire_type() {
        // 1: varint 150, 2: fixed64, 3: fixed32, 4: bytes "ab"
        let msg = [
            0x08, 0x96, 0x01, 0x11, 1, 2, 3, 4, 5, 6, 7, 8, 0x1D, 1, 2, 3, 4, 0x22, 2, b'a', b'b',
        ];
        assert_eq!(field_range(&msg, 4), Some(17..21));
        assert_eq!(field_range(&msg, 3), Some(12..17));
        assert_eq!(field_range(&msg, 5), None);
        assert_eq!(field_range(&msg[..19], 4), None);
    }
}
