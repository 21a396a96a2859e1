//! Requests on strong buckets ([`ringkv_actors::strong`]): `get`, `put`, `delete` and `cas`
//! as single-key linearizable operations, and refusals of what strong buckets do not take.

use crate::protocol::{error_of, ErrorCode, ProtocolError, Request, ResponseFrame};
use ringkv_actors::strong::{StrongError, StrongOp};
use ringkv_actors::{KvError, Node};
use ringkv_storage::Condition;
use serde_bytes::ByteBuf;
use std::sync::Arc;

fn refuse(id: u64, what: &str) -> ResponseFrame {
    ResponseFrame::error(
        id,
        &ProtocolError::new(ErrorCode::WrongConsistency, what.to_string()),
    )
}

/// The answer of a strong operation that failed; `condition_failed` carries the key's
/// current value in `values` (empty: absent).
fn failed(id: u64, e: KvError) -> ResponseFrame {
    let current = match &e {
        KvError::Strong(StrongError::ConditionFailed { current }) => {
            Some(current.iter().cloned().collect::<Vec<ByteBuf>>())
        }
        _ => None,
    };
    let mut frame = ResponseFrame::error(id, &error_of(e));
    if let Some(values) = current {
        frame.values = Some(values);
    }
    frame
}

/// Runs `request` if it concerns a strong bucket (or is a `cas`); gives it back otherwise.
pub(super) async fn execute(
    node: &Arc<Node>,
    id: u64,
    request: Request,
) -> Result<ResponseFrame, Request> {
    let (bucket, key, op, opts, return_value) = match request {
        Request::Cas {
            bucket,
            key,
            expect,
            value,
            opts,
        } => {
            if !node.is_strong(&bucket) {
                return Ok(refuse(
                    id,
                    "cas is an operation of strong buckets (bucket_set consistency=strong); eventual buckets have put with if_none_match or if_match",
                ));
            }
            if opts.ttl.is_some() || opts.local || opts.condition != Condition::None {
                return Ok(refuse(
                    id,
                    "cas takes no ttl_ms, local, if_none_match or if_match: expect says what the key must hold",
                ));
            }
            let op = StrongOp::Cas {
                expect: expect.map(ByteBuf::from),
                new: value.map(ByteBuf::from),
            };
            (bucket, key, op, opts, None)
        }
        Request::Get {
            bucket, key, opts, ..
        } if node.is_strong(&bucket) => {
            if opts.local {
                return Ok(refuse(
                    id,
                    "local reads do not apply to strong buckets: every read is a Paxos round",
                ));
            }
            (bucket, key, StrongOp::Get, opts, None)
        }
        Request::Put {
            bucket,
            key,
            value,
            return_body,
            opts,
            ..
        } if node.is_strong(&bucket) => {
            if opts.ttl.is_some() {
                return Ok(refuse(id, "strong buckets do not take ttl_ms"));
            }
            let answer = return_body.then(|| value.clone());
            let op = match opts.condition {
                Condition::None => StrongOp::Put {
                    value: ByteBuf::from(value),
                },
                Condition::IfNoneMatch => StrongOp::Cas {
                    expect: None,
                    new: Some(ByteBuf::from(value)),
                },
                Condition::IfMatch => {
                    return Ok(refuse(
                        id,
                        "if_match takes a causal context, which strong buckets do not have: use cas with expect",
                    ))
                }
            };
            (bucket, key, op, opts, answer)
        }
        Request::Delete {
            bucket, key, opts, ..
        } if node.is_strong(&bucket) => {
            if opts.condition != Condition::None {
                return Ok(refuse(
                    id,
                    "conditions on a delete of a strong bucket: use cas with expect and no value",
                ));
            }
            (bucket, key, StrongOp::Delete, opts, None)
        }
        Request::PutBegin { bucket, .. } | Request::GetRange { bucket, .. }
            if node.is_strong(&bucket) =>
        {
            return Ok(refuse(
                id,
                &format!(
                    "strong buckets keep values of at most {} bytes in one piece: streamed puts and get_range do not apply",
                    node.strong_value_limit()
                ),
            ));
        }
        other => return Err(other),
    };
    let is_get = matches!(op, StrongOp::Get);
    Ok(match node.strong(&bucket, &key, op, &opts).await {
        Ok(reply) => {
            let values = if is_get {
                Some(reply.value.into_iter().collect())
            } else {
                return_value.map(|v| vec![ByteBuf::from(v)])
            };
            ResponseFrame {
                values,
                context: is_get.then(|| ByteBuf::from(Vec::new())),
                ..ResponseFrame::ok(id)
            }
        }
        Err(e) => failed(id, e),
    })
}
