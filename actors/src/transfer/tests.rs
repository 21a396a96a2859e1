use super::*;

#[test]
fn progress_records_round_trip() {
    for p in [
        Progress::Streaming {
            after: None,
            bytes: 0,
            keys: 0,
        },
        Progress::Streaming {
            after: Some(vec![0, 7, 1, b'b', b'k']),
            bytes: 1 << 40,
            keys: 12,
        },
        Progress::Streamed { bytes: 5, keys: 1 },
        Progress::Done { bytes: 9, keys: 2 },
    ] {
        assert_eq!(Progress::decode(&p.encode()).unwrap(), p);
    }
    assert!(Progress::decode(&[2; 18]).is_err());
    assert!(Progress::decode(&[1, 9]).is_err());
}

#[test]
fn states_serialize_in_snake_case() {
    let row = TransferRow {
        version: 3,
        partition: 7,
        from: "n1".into(),
        to: "n2".into(),
        bytes_sent: 10,
        bytes_total: 20,
        keys: 1,
        resumed_bytes: 0,
        state: TransferState::Failed {
            reason: "n1 is unreachable".into(),
        },
    };
    let json = serde_json::to_string(&row).unwrap();
    assert!(
        json.contains(r#""state":{"failed":{"reason":"n1 is unreachable"}}"#),
        "{json}"
    );
    let queued = serde_json::to_string(&TransferState::Queued).unwrap();
    assert_eq!(queued, r#""queued""#);
}

#[tokio::test]
async fn the_bucket_holds_the_rate() {
    let bucket = TokenBucket::new(20_000);
    let started = tokio::time::Instant::now();
    // 2000 bytes of burst, then 20000 per second: 6000 bytes take about 0.2 s.
    for _ in 0..6 {
        bucket.take(1000).await;
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(190), "{took:?}");
    assert!(took <= Duration::from_millis(1000), "{took:?}");
}
