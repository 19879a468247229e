//! The stored form of a task: the public `Task` plus manager-only fields.
use std::collections::HashMap;
use std::sync::Arc;

use minkube::pb;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

/// A task as stored: the API object plus what only the manager needs.
///
/// Its encoding is what `#[derive(prost::Message)]` would give these three
/// fields; it is written out by hand only so that the trace context, set
/// once at creation, is shared (`Arc`) by the live entry and every record
/// of the task put since, instead of copied into each.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct StoredTask {
    /// The task as clients see it (field 1).
    pub task: Option<pb::Task>,
    /// Highest agent sequence applied for the current attempt; older or
    /// repeated updates are ignored (field 2).
    pub last_sequence: u64,
    /// W3C trace context of the request that created the task: the parent
    /// of its scheduling spans and of the agent's work for it (field 3, a
    /// `map<string, string>`).
    pub trace_context: Arc<HashMap<String, String>>,
}

impl prost::Message for StoredTask {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(task) = &self.task {
            encoding::message::encode(1, task, buf);
        }
        if self.last_sequence != 0 {
            encoding::uint64::encode(2, &self.last_sequence, buf);
        }
        encoding::hash_map::encode(
            encoding::string::encode,
            encoding::string::encoded_len,
            encoding::string::encode,
            encoding::string::encoded_len,
            3,
            &self.trace_context,
            buf,
        );
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::message::merge(
                wire_type,
                self.task.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            2 => encoding::uint64::merge(wire_type, &mut self.last_sequence, buf, ctx),
            3 => {
                encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                encoding::hash_map::merge(
                    encoding::string::merge,
                    encoding::string::merge,
                    Arc::make_mut(&mut self.trace_context),
                    buf,
                    ctx,
                )
            }
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.task
            .as_ref()
            .map_or(0, |t| encoding::message::encoded_len(1, t))
            + if self.last_sequence != 0 {
                encoding::uint64::encoded_len(2, &self.last_sequence)
            } else {
                0
            }
            + encoding::hash_map::encoded_len(
                encoding::string::encoded_len,
                encoding::string::encoded_len,
                3,
                &self.trace_context,
            )
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// An API token as stored: never its secret, only the secret's SHA-256.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredToken {
    /// Unique name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `pb::Role` value.
    #[prost(int32, tag = "2")]
    pub role: i32,
    /// Hex SHA-256 of the secret.
    #[prost(string, tag = "3")]
    pub sha256: String,
    /// When it was created.
    #[prost(message, optional, tag = "4")]
    pub created_at: Option<prost_types::Timestamp>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use prost::Message;

    use super::*;

    /// The same fields as [`StoredTask`], encoded by prost's derive: the
    /// form records were written in before the hand-written encoding.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Derived {
        #[prost(message, optional, tag = "1")]
        task: Option<pb::Task>,
        #[prost(uint64, tag = "2")]
        last_sequence: u64,
        #[prost(map = "string, string", tag = "3")]
        trace_context: HashMap<String, String>,
    }

    fn sample(last_sequence: u64, context: &[(&str, &str)]) -> (StoredTask, Derived) {
        let task = pb::Task {
            id: "0193-task".into(),
            spec: Some(pb::TaskSpec {
                image: "busybox".into(),
                command: vec!["true".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let map: HashMap<String, String> = context
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        (
            StoredTask {
                task: Some(task.clone()),
                last_sequence,
                trace_context: Arc::new(map.clone()),
            },
            Derived {
                task: Some(task),
                last_sequence,
                trace_context: map,
            },
        )
    }

    #[test]
    fn records_encode_and_decode_as_the_derived_form_did() {
        // One key at most: a map's entries encode in its iteration order.
        for (seq, context) in [
            (0, &[][..]),
            (
                7,
                &[(
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )][..],
            ),
            (3, &[("", "")][..]),
        ] {
            let (stored, derived) = sample(seq, context);
            let bytes = stored.encode_to_vec();
            assert_eq!(bytes, derived.encode_to_vec(), "{context:?}");
            assert_eq!(stored.encoded_len(), bytes.len());
            assert_eq!(StoredTask::decode(&*bytes).unwrap(), stored);
        }
        // Records written by the derived form, with several keys, read back.
        let (stored, derived) = sample(9, &[("traceparent", "a"), ("tracestate", "b=c")]);
        assert_eq!(
            StoredTask::decode(&*derived.encode_to_vec()).unwrap(),
            stored
        );
    }

    #[test]
    fn a_trace_context_of_the_wrong_wire_type_is_refused() {
        // Field 3 as a varint: not a map entry.
        let bytes = [3 << 3, 1];
        assert!(StoredTask::decode(&bytes[..]).is_err());
    }
}
