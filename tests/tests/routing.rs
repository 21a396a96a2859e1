//! Partition-aware routing (`ClusterClient`, op `layout`) on real processes, in one scenario
//! on one cluster (about 15 s):
//!
//! 1. three nodes: the routed client and a client through n1 run the same seeded mix of gets,
//!    puts with contexts, blind puts (siblings) and deletes over 300 keys, each on a bucket of
//!    its own, and every answer of both matches one model; then each reads the other's
//!    bucket. On a strong bucket routed operations are never forwarded (the first replica is
//!    the key's proposer), while the same operations through n2 are;
//! 2. a fourth node joins and `cluster commit`: the client learns the new layout version from
//!    an answer (no node is down, so nothing else makes it refresh), and sends the keys of the
//!    partitions n4 now leads to n4. Every request goes to the first replica of its key, as
//!    the client's counters show, and the client's preference lists are those `explain`
//!    reports on a node;
//! 3. n1, the first replica of most partitions, is killed (-9): every routed get and put
//!    still succeeds, on the next replicas.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv_api::client::{CallOptions, CasOutcome, Client, ClusterClient, ClusterOptions};
use ringkv_api::protocol::{RequestFrame, ResponseFrame};
use ringkv_tests::{runtime, Cluster, NodeProcess, TEST_COOKIE};
use std::collections::BTreeMap;
use std::time::Duration;

const KEYS: usize = 300;
const WORKERS: usize = 16;
const SEED: u64 = 16;

fn key(k: usize) -> Vec<u8> {
    format!("key-{k:04}").into_bytes()
}

/// What a key holds in the model: each live value and whether the context of the last get
/// covers it.
type Model = BTreeMap<usize, Vec<(Vec<u8>, bool)>>;

/// One step of the mix, as both clients run it.
#[derive(Clone, Copy, Debug)]
enum Step {
    Get,
    PutWithContext,
    BlindPut,
    Delete,
}

fn steps(seed: u64) -> Vec<(usize, Step)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..KEYS * 4)
        .map(|_| {
            let step = match rng.gen_range(0..10) {
                0..=3 => Step::Get,
                4..=6 => Step::PutWithContext,
                7..=8 => Step::BlindPut,
                _ => Step::Delete,
            };
            (rng.gen_range(0..KEYS), step)
        })
        .collect()
}

/// The two ways in: routed, or everything through one node.
#[derive(Clone)]
enum Way {
    Routed(ClusterClient),
    Direct(Client),
}

impl Way {
    async fn get(&self, b: &[u8], k: &[u8]) -> Result<ringkv_api::client::Fetched, String> {
        let o = CallOptions::default();
        match self {
            Way::Routed(c) => c.get_with(b, k, &o).await,
            Way::Direct(c) => c.get_with(b, k, &o).await,
        }
        .map_err(|e| e.to_string())
    }

    async fn put(&self, b: &[u8], k: &[u8], v: Vec<u8>, ctx: &[u8]) -> Result<(), String> {
        let o = CallOptions::default();
        match self {
            Way::Routed(c) => c.put_with(b, k, v, ctx, &o).await,
            Way::Direct(c) => c.put_with(b, k, v, ctx, &o).await,
        }
        .map_err(|e| e.to_string())
    }

    async fn delete(&self, b: &[u8], k: &[u8], ctx: &[u8]) -> Result<(), String> {
        let o = CallOptions::default();
        match self {
            Way::Routed(c) => c.delete_with(b, k, ctx, &o).await,
            Way::Direct(c) => c.delete_with(b, k, ctx, &o).await,
        }
        .map_err(|e| e.to_string())
    }
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

/// Runs the seeded mix on `bucket` through `way`, `WORKERS` keys at a time (each key's steps
/// in order, by one worker), checking every get against the model. Returns the model and, per
/// key, the transcript of results (values read, errors), which must be the same for both ways.
async fn run_mix(way: Way, bucket: &'static [u8]) -> (Model, BTreeMap<usize, Vec<String>>) {
    let all = steps(SEED);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let mine: Vec<(usize, Step)> = all
            .iter()
            .copied()
            .filter(|(k, _)| k % WORKERS == w)
            .collect();
        let way = way.clone();
        tasks.spawn(async move {
            let mut model: Model = BTreeMap::new();
            let mut contexts: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
            let mut transcript: BTreeMap<usize, Vec<String>> = BTreeMap::new();
            for (n, (k, step)) in mine.into_iter().enumerate() {
                let value = format!("v{n}-{k}").into_bytes();
                let held = model.entry(k).or_default();
                let ctx = contexts.get(&k).cloned().unwrap_or_default();
                let record = match step {
                    Step::Get => match way.get(bucket, &key(k)).await {
                        Ok(f) => {
                            let want = sorted(held.iter().map(|(v, _)| v.clone()).collect());
                            assert_eq!(sorted(f.values.clone()), want, "get of key {k}");
                            held.iter_mut().for_each(|(_, seen)| *seen = true);
                            contexts.insert(k, f.context);
                            format!("get {:?}", want.len())
                        }
                        Err(e) => panic!("get of key {k}: {e}"),
                    },
                    Step::PutWithContext => {
                        way.put(bucket, &key(k), value.clone(), &ctx).await.unwrap();
                        if !ctx.is_empty() {
                            held.retain(|(_, seen)| !seen);
                        }
                        held.push((value, false));
                        "put".into()
                    }
                    Step::BlindPut => {
                        way.put(bucket, &key(k), value.clone(), &[]).await.unwrap();
                        held.push((value, false));
                        "blind put".into()
                    }
                    Step::Delete => {
                        way.delete(bucket, &key(k), &ctx).await.unwrap();
                        if !ctx.is_empty() {
                            held.retain(|(_, seen)| !seen);
                        }
                        "delete".into()
                    }
                };
                transcript.entry(k).or_default().push(record);
            }
            (model, transcript)
        });
    }
    let (mut model, mut transcript) = (Model::new(), BTreeMap::new());
    while let Some(r) = tasks.join_next().await {
        let (m, t) = r.expect("a worker of the mix panicked");
        model.extend(m);
        transcript.extend(t);
    }
    (model, transcript)
}

/// Every key of `bucket` read through `way` holds what `model` says.
async fn check_all(way: &Way, bucket: &[u8], model: &Model) {
    for (k, held) in model {
        let got = way.get(bucket, &key(*k)).await.unwrap();
        let want = sorted(held.iter().map(|(v, _)| v.clone()).collect());
        assert_eq!(sorted(got.values), want, "key {k} of {:?}", bucket);
    }
}

fn sum_forwarded(cluster: &Cluster) -> u64 {
    cluster.counter_sum("strong", "forwarded")
}

/// Request counters of the client, by node.
fn counts(c: &ClusterClient) -> BTreeMap<String, u64> {
    c.requests_by_node()
}

/// The node whose counter rose between `before` and `after`, if exactly one rose by one.
fn one_more(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Option<String> {
    let moved: Vec<(&String, u64)> = after
        .iter()
        .map(|(n, a)| (n, a - before.get(n).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    match moved.as_slice() {
        [(n, 1)] => Some(n.to_string()),
        _ => None,
    }
}

#[test]
fn routed_requests_agree_reach_replicas_follow_a_join_and_survive_a_kill() {
    let mut cluster = Cluster::start(3, &[]);
    let rt = runtime();
    let addrs: Vec<String> = cluster.addrs().iter().map(|a| a.to_string()).collect();
    let opts = ClusterOptions {
        refresh_every: Duration::from_millis(200),
        ..ClusterOptions::default()
    };
    let seeds: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let routed = rt
        .block_on(ClusterClient::connect(&seeds, None, opts))
        .expect("connect_cluster");
    let direct = rt.block_on(Client::connect(&addrs[0])).expect("connect n1");
    let v1 = routed.layout_version();
    assert!(v1 > 0);

    // 1. Both ways answer the same, and each sees the other's writes.
    let (m_routed, t_routed) = rt.block_on(run_mix(Way::Routed(routed.clone()), b"routed"));
    let (m_direct, t_direct) = rt.block_on(run_mix(Way::Direct(direct.clone()), b"direct"));
    assert_eq!(t_routed, t_direct, "the two ways' transcripts differ");
    assert_eq!(m_routed.len(), m_direct.len());
    let siblings = m_routed.values().filter(|h| h.len() > 1).count();
    assert!(
        siblings > 10,
        "the mix made siblings on {siblings} keys only"
    );
    rt.block_on(check_all(
        &Way::Direct(direct.clone()),
        b"routed",
        &m_routed,
    ));
    rt.block_on(check_all(
        &Way::Routed(routed.clone()),
        b"direct",
        &m_direct,
    ));
    // One request per call: no node failed, nothing was sent twice.
    let sent: u64 = counts(&routed).values().sum();
    assert_eq!(
        sent,
        (KEYS * 4 + m_direct.len()) as u64,
        "{:?}",
        counts(&routed)
    );

    // Strong keys: the routed client reaches each key's proposer, so nothing is forwarded.
    let (code, _, err) = cluster.nodes[0].cli(&["bucket", "set", "sb", "consistency=strong"], None);
    assert_eq!(code, 0, "{err}");
    cluster.wait_for(
        "every node to see sb strong",
        Duration::from_secs(10),
        || {
            let strong = (0..3).all(|i| {
                let f = RequestFrame {
                    op: "bucket_get".into(),
                    bucket: Some(b"sb".to_vec().into()),
                    ..Default::default()
                };
                cluster
                    .request(i, f, Duration::from_secs(5))
                    .ok()
                    .and_then(|a| a.info)
                    .is_some_and(|i| i["consistency"] == "strong")
            });
            strong.then_some(()).ok_or_else(|| "not yet".to_string())
        },
    );
    let before = sum_forwarded(&cluster);
    rt.block_on(async {
        let o = CallOptions::default();
        for k in 0..20 {
            let k = key(k);
            let put = routed.cas(b"sb", &k, None, Some(b"one"), &o).await.unwrap();
            assert_eq!(put, CasOutcome::Swapped);
            let again = routed.cas(b"sb", &k, None, Some(b"two"), &o).await.unwrap();
            assert_eq!(
                again,
                CasOutcome::ConditionFailed {
                    current: Some(b"one".to_vec())
                }
            );
            assert_eq!(
                routed.get(b"sb", &k).await.unwrap().values,
                vec![b"one".to_vec()]
            );
        }
    });
    assert_eq!(
        sum_forwarded(&cluster),
        before,
        "a routed strong op was forwarded"
    );
    // The same reads through a node that is not the proposer of some of them are forwarded.
    let not_first = (0..3usize)
        .find(|&i| (0..20).any(|k| routed.replicas_of(b"sb", &key(k))[0] != cluster.name(i)))
        .expect("some node is not the first replica of some key");
    let through = rt.block_on(Client::connect(&addrs[not_first])).unwrap();
    rt.block_on(async {
        for k in 0..20 {
            through.get(b"sb", &key(k)).await.unwrap();
        }
    });
    assert!(sum_forwarded(&cluster) > before, "the check cannot fail");

    // 2. A fourth node joins; the client learns the new layout from an answer.
    let seed = cluster.status(0)["members"][0]["cluster_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let cluster_addr = format!("127.0.0.4:{}", ringkv_tests::free_port("127.0.0.4"));
    let n4 = NodeProcess::start_on(
        "127.0.0.4",
        &ringkv_tests::node_args(4, &cluster_addr, Some(&seed))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[("RINGKV_COOKIE", TEST_COOKIE)],
    );
    cluster.nodes.push(n4);
    cluster.wait_members(0, 4, Duration::from_secs(20));
    let (code, out, err) = cluster.nodes[0].cli(&["cluster", "commit", "--json"], None);
    assert_eq!(code, 0, "{err}");
    let committed: serde_json::Value = serde_json::from_slice(&out).expect("commit --json");
    let v2 = committed["version"].as_u64().expect("version");
    assert!(v2 > v1);
    let refreshes = routed.refreshes();
    cluster.wait_for(
        "the routed client to route by the new layout",
        Duration::from_secs(30),
        || {
            // Requests carry the client's version; answers say when the node's differs.
            rt.block_on(routed.get(b"routed", &key(0)))
                .map_err(|e| e.to_string())?;
            match routed.layout_version() {
                v if v >= v2 => Ok(()),
                v => Err(format!("the client still routes by version {v}")),
            }
        },
    );
    assert!(routed.refreshes() > refreshes);
    assert!(routed.requests_by_node().contains_key("n4"));

    // Every request goes to the first replica of its key, and the client's preference lists
    // are the nodes'.
    let led_by_n4: Vec<usize> = (0..KEYS)
        .filter(|&k| routed.replicas_of(b"routed", &key(k))[0] == "n4")
        .collect();
    assert!(
        !led_by_n4.is_empty(),
        "n4 leads no partition of the 300 keys"
    );
    for k in (0..KEYS).step_by(7).chain(led_by_n4.iter().copied()) {
        let replicas = routed.replicas_of(b"routed", &key(k));
        let before = counts(&routed);
        let got = rt.block_on(routed.get(b"routed", &key(k))).unwrap();
        assert_eq!(
            sorted(got.values),
            sorted(
                m_routed
                    .get(&k)
                    .map_or_else(Vec::new, |vs| vs.iter().map(|(v, _)| v.clone()).collect())
            )
        );
        assert_eq!(
            one_more(&before, &counts(&routed)).as_deref(),
            Some(replicas[0].as_str()),
            "key {k}: replicas {replicas:?}, counters {before:?} -> {:?}",
            counts(&routed)
        );
        if k % 21 == 0 || replicas[0] == "n4" {
            // n2's view, once it reads from the layout version the client routes by (gossip
            // brings each node there in its own time).
            let names = cluster.wait_for(
                "n2's explain to use the client's layout version",
                Duration::from_secs(10),
                || {
                    let explained = cluster.request(
                        1,
                        RequestFrame {
                            op: "explain".into(),
                            bucket: Some(b"routed".to_vec().into()),
                            key: Some(key(k).into()),
                            ..Default::default()
                        },
                        Duration::from_secs(10),
                    )?;
                    let info = explained.info.ok_or("explain answered no info")?;
                    if info["layout_version"].as_u64() != Some(routed.layout_version()) {
                        return Err(format!("n2 reads from {}", info["layout_version"]));
                    }
                    Ok(info["preference_list"]
                        .as_array()
                        .ok_or("no preference_list")?
                        .iter()
                        .filter_map(|n| n["node"].as_str().map(str::to_string))
                        .collect::<Vec<String>>())
                },
            );
            assert_eq!(replicas[..names.len()], names[..], "key {k}");
        }
    }

    // 3. The first replica of most partitions dies: routed requests go to the next ones.
    cluster.nodes[0].kill9();
    rt.block_on(async {
        let way = Way::Routed(routed.clone());
        check_all(&way, b"routed", &m_routed).await;
        for k in (0..KEYS).step_by(3) {
            let got = routed.get(b"routed", &key(k)).await.unwrap();
            routed
                .put(b"routed", &key(k), b"after".to_vec(), &got.context)
                .await
                .unwrap_or_else(|e| panic!("put of key {k} with n1 down: {e}"));
            let got = routed.get(b"routed", &key(k)).await.unwrap();
            assert_eq!(got.values, vec![b"after".to_vec()], "key {k}");
        }
    });
    let answer: ResponseFrame = cluster
        .request(
            1,
            RequestFrame {
                op: "layout".into(),
                ..Default::default()
            },
            Duration::from_secs(5),
        )
        .expect("n2 answers");
    assert!(answer.ok, "{answer:?}");
}
