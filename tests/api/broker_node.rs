//! Broker-fed SSE nodes: events come from JetStream, not from LISTEN and `event_log`; the contract is the
//! same (ids, resume, no gap, no duplicate), also for a browser that moves between the two kinds of node,
//! and across a NATS outage.

use crate::app::*;
use crate::helpers::*;
use crate::nats::NatsServer;
use smartscheduler::broker::{self, BrokerConfig, PublisherConfig};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn broker_config(nats: &NatsServer) -> BrokerConfig {
    BrokerConfig {
        urls: vec![nats.url()],
        publisher: PublisherConfig { poll_interval: Duration::from_millis(20), ..PublisherConfig::default() },
    }
}

/// The relay's process: relay + publisher (its own hub is broker-fed too).
async fn relay_node(db: &TestDb, nats: &NatsServer) -> TestApp {
    let broker = broker_config(nats);
    TestApp::spawn_named(db, "relay-node", move |c| {
        c.hub = test_hub_config();
        c.broker = Some(broker);
    })
    .await
}

/// An edge node: no relay, broker-fed, a pool of 2.
async fn edge_node(db: &TestDb, nats: &NatsServer) -> TestApp {
    let broker = broker_config(nats);
    TestApp::spawn_pool(db.pool_named("edge-node", 2).await, move |c| {
        c.hub = HubConfig { catchup_reads: 1, ..test_hub_config() };
        c.run_relay = false;
        c.broker = Some(broker);
    })
    .await
}

use smartscheduler::stream::HubConfig;

fn seqs(events: &[eventsource_stream::Event]) -> Vec<i64> {
    events.iter().map(seq_of).collect()
}

#[tokio::test]
async fn an_edge_node_streams_from_jetstream_without_listen_and_with_the_same_ids() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let _relay = relay_node(&db, &nats).await;
    let edge = edge_node(&db, &nats).await;
    crate::faults::until_ready(&edge, true).await;
    let mut stream = Connect::new(&alice).open(&edge.base).await;

    write_events(&db.pool, 5, &["region:south"]).await; // not alice's
    write_events(&db.pool, 10, &["region:north"]).await;
    let events = stream.take(10, WAIT).await;
    assert_eq!(seqs(&events), (6..=15).collect::<Vec<_>>(), "her group's events, in order, nothing else");
    let epoch = epoch(&db).await;
    assert!(events.iter().all(|e| e.id.starts_with(&format!("{epoch}-"))), "ids are <epoch>-<seq>");

    let listens: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'edge-node' AND datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(listens, 0, "a broker-fed node does not LISTEN");
    let connections: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'edge-node' AND datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(connections <= 2, "an edge node holds at most 2 connections, has {connections}");
}

#[tokio::test]
async fn a_browser_moving_between_a_postgres_fed_and_a_broker_fed_node_gets_no_gap_and_no_duplicate() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let _relay = relay_node(&db, &nats).await;
    let edge = edge_node(&db, &nats).await;
    let plain = TestApp::spawn_with(&db, |c| {
        c.hub = test_hub_config();
        c.run_relay = false;
    })
    .await;
    crate::faults::until_ready(&edge, true).await;

    let mut on_plain = Connect::new(&alice).open(&plain.base).await;
    write_events(&db.pool, 6, &["region:north"]).await;
    let first = on_plain.take(6, WAIT).await;
    drop(on_plain);
    write_events(&db.pool, 4, &["region:north"]).await; // while the browser moves
    let last_id = first.last().unwrap().id.clone();
    let mut on_edge = Connect::new(&alice).header(&last_id).open(&edge.base).await;
    write_events(&db.pool, 3, &["region:north"]).await;
    let second = on_edge.take(7, WAIT).await;
    drop(on_edge);
    write_events(&db.pool, 2, &["region:north"]).await;
    let back_id = second.last().unwrap().id.clone();
    let mut back_on_plain = Connect::new(&alice).header(&back_id).open(&plain.base).await;
    let third = back_on_plain.take(2, WAIT).await;

    let all: Vec<i64> = [seqs(&first), seqs(&second), seqs(&third)].concat();
    assert_eq!(all, (1..=15).collect::<Vec<_>>(), "no gap, no duplicate across the moves");
}

#[tokio::test]
async fn an_edge_node_cut_off_from_nats_is_not_ready_and_delivers_what_committed_meanwhile_when_it_returns() {
    let db = TestDb::new().await;
    let mut nats = NatsServer::start().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let _relay = relay_node(&db, &nats).await;
    let edge = edge_node(&db, &nats).await;
    crate::faults::until_ready(&edge, true).await;
    let mut stream = Connect::new(&alice).open(&edge.base).await;
    write_events(&db.pool, 3, &["region:north"]).await;
    let before = stream.take(3, WAIT).await;

    nats.kill();
    let body = crate::faults::until_ready(&edge, false).await;
    assert_eq!(body["listener"], "down", "readyz says the feed is cut off: {body}");
    write_events(&db.pool, 8, &["region:north"]).await;

    nats.restart().await;
    crate::faults::until_ready(&edge, true).await;
    let after = stream.take(8, Duration::from_secs(20)).await;
    let all: Vec<i64> = [seqs(&before), seqs(&after)].concat();
    assert_eq!(all, (1..=11).collect::<Vec<_>>(), "the open stream goes on with no gap and no duplicate");
    let _ = broker::wire::EXPIRED_HEADER;
}

#[tokio::test]
async fn a_nats_node_killed_in_a_three_node_cluster_costs_an_r3_stream_nothing() {
    let db = TestDb::new().await;
    let mut cluster = crate::nats::NatsCluster::start().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let urls = cluster.urls();
    let publisher =
        PublisherConfig { replicas: 3, poll_interval: Duration::from_millis(20), ..PublisherConfig::default() };
    let relay_broker = BrokerConfig { urls: urls.clone(), publisher };
    let _relay = TestApp::spawn_named(&db, "relay-node", move |c| c.broker = Some(relay_broker)).await;
    let edge_broker = BrokerConfig { urls, publisher: PublisherConfig::default() };
    let edge = TestApp::spawn_pool(db.pool_named("edge-node", 2).await, move |c| {
        c.hub = HubConfig { catchup_reads: 1, ..test_hub_config() };
        c.run_relay = false;
        c.broker = Some(edge_broker);
    })
    .await;
    // Electing the cluster's JetStream leader and creating the R3 stream takes a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while http().get(edge.url("/readyz")).send().await.unwrap().status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the edge node never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stream = Connect::new(&alice).open(&edge.base).await;
    write_events(&db.pool, 10, &["region:north"]).await;
    let mut received = stream.take(10, Duration::from_secs(20)).await;

    cluster.nodes[0].kill(); // kill -9 of one member while events flow
    for _ in 0..10 {
        write_events(&db.pool, 3, &["region:north"]).await;
    }
    received.extend(stream.take(30, Duration::from_secs(30)).await);
    assert_eq!(seqs(&received), (1..=40).collect::<Vec<_>>(), "0 lost, 0 duplicated, 0 reordered");
}

/// The consumers on the event stream: name → the cluster member (`n0`..`n2`) that hosts it. An ordered
/// consumer has one replica, so killing its host is the fault that takes the consumer with it.
async fn consumers(cluster: &crate::nats::NatsCluster) -> std::collections::HashMap<String, String> {
    use futures::TryStreamExt;
    let client = async_nats::connect(cluster.urls().as_slice()).await.expect("connect to the cluster");
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap_or_default();
    let mut hosts = std::collections::HashMap::new();
    for name in names.iter().filter(|n| n.starts_with("SS_EVENTS_")) {
        let Ok(stream) = js.get_stream(name).await else { continue };
        let infos: Vec<_> = stream.consumers().try_collect().await.unwrap_or_default();
        for info in infos {
            if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                hosts.insert(info.name, leader);
            }
        }
    }
    hosts
}

async fn until_ready(app: &TestApp) {
    // Electing the cluster's JetStream leader and creating the R3 stream takes a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while http().get(app.url("/readyz")).send().await.unwrap().status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "{} never became ready", app.base);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn killing_the_nats_node_that_hosts_the_edge_nodes_consumer_only_delays_its_events() {
    let db = TestDb::new().await;
    let mut cluster = crate::nats::NatsCluster::start().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let urls = cluster.urls();
    let publisher =
        PublisherConfig { replicas: 3, poll_interval: Duration::from_millis(20), ..PublisherConfig::default() };
    let relay_broker = BrokerConfig { urls: urls.clone(), publisher };
    let relay = TestApp::spawn_named(&db, "relay-node", move |c| c.broker = Some(relay_broker)).await;
    until_ready(&relay).await;
    let relays_consumers = consumers(&cluster).await;
    let edge_broker = BrokerConfig { urls, publisher: PublisherConfig::default() };
    let edge = TestApp::spawn_pool(db.pool_named("edge-node", 2).await, move |c| {
        c.hub = HubConfig { catchup_reads: 1, ..test_hub_config() };
        c.run_relay = false;
        c.broker = Some(edge_broker);
    })
    .await;
    until_ready(&edge).await;
    let mut stream = Connect::new(&alice).open(&edge.base).await;
    write_events(&db.pool, 3, &["region:north"]).await;
    let mut received = stream.take(3, Duration::from_secs(20)).await;

    let edges_consumer = consumers(&cluster).await.into_iter().find(|(name, _)| !relays_consumers.contains_key(name));
    let (_, host) = edges_consumer.expect("the edge node's consumer is on the stream");
    let index: usize = host.trim_start_matches('n').parse().expect("member names are n0..n2");
    cluster.nodes[index].kill(); // the consumer's only replica goes with it
    write_events(&db.pool, 3, &["region:north"]).await;
    // The feed must notice that its consumer went away with its node and follow again from its head. Without
    // the idle check this took 60-80 s (the client library's own recreation); with it 6-8 s, and up to 16 s
    // when the dead node also led the cluster's JetStream meta group, since a new consumer needs the new
    // meta leader (nats-server 2.9 elects one within its election timeout).
    let after_kill = tokio::time::Instant::now();
    received.extend(stream.take(3, Duration::from_secs(20)).await);
    let recovered_in = after_kill.elapsed();
    eprintln!("the edge node delivered again {recovered_in:?} after {host} (its consumer's host) died");
    assert_eq!(seqs(&received), (1..=6).collect::<Vec<_>>(), "0 lost, 0 duplicated, 0 reordered after {host} died");
    assert!(
        recovered_in < Duration::from_secs(25),
        "the edge node took {recovered_in:?} to deliver again after {host} died"
    );
}

/// Reports `position` for `dispatcher` on `node` and waits on `stream` for its hint (skipping `stale` ones).
async fn assert_hint_arrives(node: &TestApp, token: &str, dispatcher: &str, position: &str, stream: &mut SseClient) {
    let body = serde_json::json!({ "position": position });
    let response = http().post(node.url("/api/receipts")).bearer_auth(token).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let hint = loop {
        let hint = data_json(&stream.next_named("receipt", WAIT).await);
        if hint["stale"] != true {
            break hint;
        }
    };
    assert_eq!((hint["dispatcherId"].as_str(), hint["position"].as_str()), (Some(dispatcher), Some(position)));
}

/// Broker-fed nodes hear no NOTIFY: a receipt stored on one reaches the open streams of another over NATS,
/// and a stream that opens on a node whose subscription just started is told its receipts may be stale.
#[tokio::test]
async fn a_receipt_stored_on_one_edge_node_reaches_streams_on_another_over_nats() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let carol = dispatcher_token(&db, "carol", &["region:north"]).await;
    let _relay = relay_node(&db, &nats).await;
    let (a, b) = (edge_node(&db, &nats).await, edge_node(&db, &nats).await);
    for node in [&a, &b] {
        crate::faults::until_ready(node, true).await;
    }
    let mut stream = Connect::new(&alice).open(&b.base).await;
    write_events(&db.pool, 3, &["region:north"]).await;
    let position = stream.take(3, WAIT).await.pop().expect("three events").id;

    assert_hint_arrives(&a, &carol, "carol", &position, &mut stream).await;
}

/// A mixed fleet: a receipt stored by a PostgreSQL-fed node (which knows no NATS) reaches a broker-fed
/// node's streams live, bridged by the process that relays with the broker.
#[tokio::test]
async fn a_receipt_stored_on_a_postgres_fed_node_reaches_a_broker_fed_nodes_streams() {
    let db = TestDb::new().await;
    let nats = NatsServer::start().await;
    let alice = dispatcher_token(&db, "alice", &["region:north"]).await;
    let carol = dispatcher_token(&db, "carol", &["region:north"]).await;
    let relay = relay_node(&db, &nats).await;
    let postgres_fed = TestApp::spawn_named(&db, "postgres-fed-node", |c| {
        c.hub = test_hub_config();
        c.run_relay = false;
    })
    .await;
    let edge = edge_node(&db, &nats).await;
    for node in [&relay, &edge] {
        crate::faults::until_ready(node, true).await;
    }
    let mut stream = Connect::new(&alice).open(&edge.base).await;
    write_events(&db.pool, 2, &["region:north"]).await;
    let position = stream.take(2, WAIT).await.pop().expect("two events").id;

    assert_hint_arrives(&postgres_fed, &carol, "carol", &position, &mut stream).await;
}
