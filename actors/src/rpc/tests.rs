use super::*;
use crate::wire::{decode, encode};
use ringkv_storage::DvvSet;

/// The wire enum as it was before the typed calls (struct variants): the typed enum must
/// encode exactly as it did, so that nodes of both versions understand each other.
#[derive(Serialize, Deserialize)]
enum Legacy {
    Get {
        partition: u32,
        bucket: ByteBuf,
        key: ByteBuf,
    },
    Hint {
        owner: String,
        partition: u32,
        bucket: ByteBuf,
        key: ByteBuf,
        record: DvvSet,
    },
    MergeStored {
        partition: u32,
        entries: Vec<(ByteBuf, DvvSet)>,
    },
}

fn b(s: &str) -> ByteBuf {
    ByteBuf::from(s.as_bytes().to_vec())
}

#[test]
fn typed_requests_encode_as_the_struct_variants_did() {
    let mut record = DvvSet::new();
    record
        .update(&VersionVector::new(), 7, Some(b"v".to_vec()), 1, 10)
        .unwrap();
    let pairs = [
        (
            encode(&Legacy::Get {
                partition: 3,
                bucket: b("b"),
                key: b("k"),
            }),
            ReplicaRequest::Get(Get {
                partition: 3,
                bucket: b("b"),
                key: b("k"),
            }),
        ),
        (
            encode(&Legacy::Hint {
                owner: "n2".into(),
                partition: 1,
                bucket: b("b"),
                key: b("k"),
                record: record.clone(),
            }),
            ReplicaRequest::Hint(StoreHint {
                owner: "n2".into(),
                partition: 1,
                bucket: b("b"),
                key: b("k"),
                record: record.clone(),
            }),
        ),
        (
            encode(&Legacy::MergeStored {
                partition: 9,
                entries: vec![(b("\x01bk"), record.clone())],
            }),
            ReplicaRequest::MergeStored(MergeStored {
                partition: 9,
                entries: vec![(b("\x01bk"), record)],
            }),
        ),
    ];
    for (legacy, typed) in pairs {
        assert_eq!(legacy, encode(&typed));
        assert_eq!(decode::<ReplicaRequest>(&legacy).unwrap(), typed);
    }
}

#[test]
fn conditions_round_trip_and_old_encodings_decode_as_unconditional() {
    let mut record = DvvSet::new();
    record
        .update(&VersionVector::new(), 7, Some(b"v".to_vec()), 1, 10)
        .unwrap();
    let update = Update {
        partition: 2,
        bucket: b("b"),
        key: b("k"),
        context: record.context().clone(),
        value: Some(b("v")),
        timestamp_ms: 5,
        condition: Condition::IfMatch,
        codec: ringkv_storage::Codec::None,
        expires_at_ms: None,
    };
    let merge = Merge {
        partition: 2,
        bucket: b("b"),
        key: b("k"),
        record: record.clone(),
        condition: Condition::IfNoneMatch,
    };
    for request in [
        ReplicaRequest::Update(update.clone()),
        ReplicaRequest::Merge(merge.clone()),
    ] {
        let envelope = Envelope {
            from: "n1".into(),
            request: request.clone(),
        };
        assert_eq!(
            decode::<Envelope>(&encode(&envelope)).unwrap().request,
            request
        );
    }
    // The encodings of nodes from before conditions (no `condition` field).
    #[derive(Serialize)]
    enum Old {
        Update {
            partition: u32,
            bucket: ByteBuf,
            key: ByteBuf,
            context: VersionVector,
            value: Option<ByteBuf>,
            timestamp_ms: u64,
        },
        Merge {
            partition: u32,
            bucket: ByteBuf,
            key: ByteBuf,
            record: DvvSet,
        },
    }
    let old = encode(&Old::Update {
        partition: 2,
        bucket: b("b"),
        key: b("k"),
        context: record.context().clone(),
        value: Some(b("v")),
        timestamp_ms: 5,
    });
    assert_eq!(
        decode::<ReplicaRequest>(&old).unwrap(),
        ReplicaRequest::Update(Update {
            condition: Condition::None,
            ..update
        })
    );
    let old = encode(&Old::Merge {
        partition: 2,
        bucket: b("b"),
        key: b("k"),
        record,
    });
    assert_eq!(
        decode::<ReplicaRequest>(&old).unwrap(),
        ReplicaRequest::Merge(Merge {
            condition: Condition::None,
            ..merge
        })
    );
    // A refusal travels back as itself.
    let refused: Result<(), ReplicaFailure> =
        Err(ReplicaFailure::Storage(StorageError::ConditionFailed {
            condition: "if_none_match".into(),
            detail: "the key holds 1 live version(s)".into(),
        }));
    assert_eq!(
        decode::<Result<(), ReplicaFailure>>(&encode(&refused)).unwrap(),
        refused
    );
}

#[test]
fn expiries_travel_in_updates_and_records_and_old_updates_decode_as_no_ttl() {
    let mut record = DvvSet::new();
    record
        .update_encoded(
            &VersionVector::new(),
            7,
            Some(b"v".to_vec()),
            ringkv_storage::Codec::None,
            5,
            Some(30_005),
            10,
        )
        .unwrap();
    let update = Update {
        partition: 2,
        bucket: b("b"),
        key: b("k"),
        context: VersionVector::new(),
        value: Some(b("v")),
        timestamp_ms: 5,
        condition: Condition::None,
        codec: ringkv_storage::Codec::None,
        expires_at_ms: Some(30_005),
    };
    let merge = Merge {
        partition: 2,
        bucket: b("b"),
        key: b("k"),
        record: record.clone(),
        condition: Condition::None,
    };
    for request in [
        ReplicaRequest::Update(update.clone()),
        ReplicaRequest::Merge(merge),
        ReplicaRequest::MergeStored(MergeStored {
            partition: 2,
            entries: vec![(b("\x01bk"), record.clone())],
        }),
    ] {
        assert_eq!(
            decode::<ReplicaRequest>(&encode(&request)).unwrap(),
            request
        );
    }
    // An update without a TTL is encoded as before (no `expires_at_ms` field), and the
    // encoding of a sender from before TTLs decodes as "never expires".
    let plain = Update {
        expires_at_ms: None,
        ..update.clone()
    };
    let bytes = encode(&ReplicaRequest::Update(plain.clone()));
    assert!(!bytes.windows(13).any(|w| w == b"expires_at_ms"));
    assert_eq!(
        decode::<ReplicaRequest>(&bytes).unwrap(),
        ReplicaRequest::Update(plain)
    );
}

#[test]
fn partition_sizes_round_trip_on_the_wire() {
    let request = Envelope {
        from: "n1".into(),
        request: PartitionSizes {}.into_request(),
    };
    let back: Envelope = decode(&encode(&request)).unwrap();
    assert_eq!(
        back.request,
        ReplicaRequest::PartitionSizes(PartitionSizes {})
    );
    let answer: Result<Vec<(u32, u64)>, ReplicaFailure> = Ok(vec![(0, 10), (63, u64::MAX)]);
    let back: Result<<PartitionSizes as Rpc>::Response, ReplicaFailure> =
        decode(&encode(&answer)).unwrap();
    assert_eq!(back, answer);
}

#[test]
fn an_update_answer_of_the_old_optional_shape_decodes() {
    let mut record = DvvSet::new();
    record
        .update(&VersionVector::new(), 7, Some(b"v".to_vec()), 1, 10)
        .unwrap();
    let old: Result<Option<DvvSet>, ReplicaFailure> = Ok(Some(record.clone()));
    let new: Result<DvvSet, ReplicaFailure> = decode(&encode(&old)).unwrap();
    assert_eq!(new, Ok(record));
}

#[test]
fn transfer_requests_and_answers_round_trip() {
    let mut record = DvvSet::new();
    record
        .update(&VersionVector::new(), 7, Some(b"v".to_vec()), 1, 10)
        .unwrap();
    for request in [
        ReplicaRequest::ScanChunk(ScanChunk {
            partition: 5,
            after: Some(b("\x00\x07\x01bk")),
            max_bytes: 1 << 20,
        }),
        ReplicaRequest::ScanChunk(ScanChunk {
            partition: 5,
            after: None,
            max_bytes: 1,
        }),
        ReplicaRequest::Stats(Stats { partition: 3 }),
    ] {
        let envelope = Envelope {
            from: "n1".into(),
            request: request.clone(),
        };
        let decoded: Envelope = decode(&encode(&envelope)).unwrap();
        assert_eq!(decoded.request, request);
    }
    let chunk: Result<Chunk, ReplicaFailure> = Ok(Chunk {
        entries: vec![(b("\x01bk"), record)],
        next: Some(b("\x00\x07\x01bk")),
        bytes: 42,
    });
    assert_eq!(
        decode::<Result<Chunk, ReplicaFailure>>(&encode(&chunk)).unwrap(),
        chunk
    );
    let stats: Result<PartitionStats, ReplicaFailure> = Ok(PartitionStats {
        keys: 3,
        bytes: 300,
    });
    assert_eq!(
        decode::<Result<PartitionStats, ReplicaFailure>>(&encode(&stats)).unwrap(),
        stats
    );
    // Byte strings travel as msgpack bin, not arrays of integers.
    let frame = encode(&ScanChunk {
        partition: 0,
        after: Some(ByteBuf::from(vec![0xAB; 40])),
        max_bytes: 1,
    });
    assert!(frame.len() < 80, "{} bytes", frame.len());
}

#[test]
fn undecodable_frames_are_errors_not_panics() {
    for frame in [&b""[..], b"\x02\x80", b"\x01\xc1", b"\x01\x81\xa3Get\x01"] {
        assert!(decode::<Envelope>(frame).is_err(), "{frame:x?}");
    }
    // An error answer decodes whatever the caller's answer type.
    let overloaded = encode(&Err::<(), _>(ReplicaFailure::Overloaded(8)));
    let as_get: Result<Option<DvvSet>, ReplicaFailure> = decode(&overloaded).unwrap();
    assert_eq!(as_get, Err(ReplicaFailure::Overloaded(8)));
}
