//! The verdict of a run: per client, what arrived against what committed; and the log's own invariants.

use crate::clients::{Client, ClientRecord, ClientSpec};
use crate::faults::{MembershipChange, Toggle};
use crate::writers::{Ledger, Origin};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// The contract gives an open stream 5 s to apply a membership change; the margin is for a busy machine.
const MEMBERSHIP_GRACE: Duration = Duration::from_secs(7);

/// An event as `event_log` holds it at the end of the run.
pub struct Logged {
    pub seq: i64,
    pub groups: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Findings {
    pub deliveries: usize,
    pub lost: usize,
    pub cross_group: usize,
    pub reordered: usize,
    pub dup_in_connection: usize,
    /// Resets, foreign epochs, openings elsewhere than asked, undecodable data, deliveries of unknown events.
    pub other: usize,
    /// Violations in order of discovery, each on one line, with its kind (lost, cross-group, ...).
    pub details: Vec<(&'static str, String)>,
}

impl Findings {
    pub fn fail(&mut self, kind: &'static str, text: String) {
        self.details.push((kind, text));
    }

    /// The first `per_kind` details of each kind, kinds in order of first appearance, and how many were left out.
    pub fn summary(&self, per_kind: usize) -> (Vec<&str>, usize) {
        let mut kinds: Vec<&str> = Vec::new();
        for (kind, _) in &self.details {
            if !kinds.contains(kind) {
                kinds.push(kind);
            }
        }
        let mut lines = Vec::new();
        for kind in kinds {
            lines.extend(self.details.iter().filter(|(k, _)| *k == kind).take(per_kind).map(|(_, t)| t.as_str()));
        }
        let left_out = self.details.len() - lines.len();
        (lines, left_out)
    }
}

/// Checks every client against the ledger and the log.
pub fn clients(
    findings: &mut Findings,
    ledger: &Ledger,
    log: &HashMap<Uuid, Logged>,
    clients: &[&Client],
    toggles: &[Toggle],
    timeline: &[MembershipChange],
) {
    let ledger_groups: HashMap<Uuid, (&[String], Origin)> =
        ledger.committed.iter().map(|e| (e.id, (e.groups.as_slice(), e.origin))).collect();
    let by_seq: BTreeMap<i64, (Uuid, &[String])> =
        log.iter().map(|(id, l)| (l.seq, (*id, l.groups.as_slice()))).collect();
    for client in clients {
        let record = client.record.lock().unwrap();
        check_client(findings, &client.spec, &record, &ledger_groups, log, &by_seq, toggles, timeline);
    }
}

#[allow(clippy::too_many_arguments)]
fn check_client(
    findings: &mut Findings,
    spec: &ClientSpec,
    record: &ClientRecord,
    ledger: &HashMap<Uuid, (&[String], Origin)>,
    log: &HashMap<Uuid, Logged>,
    by_seq: &BTreeMap<i64, (Uuid, &[String])>,
    toggles: &[Toggle],
    timeline: &[MembershipChange],
) {
    let name = &spec.name;
    let who = format!(
        "{name} (dispatcher {}, {} {})",
        spec.dispatcher,
        if spec.narrowed.is_some() { "?groups=" } else { "groups" },
        spec.required.join(",")
    );
    findings.deliveries += record.deliveries.len();
    findings.reordered += record.reordered;
    findings.dup_in_connection += record.dup_in_connection;
    findings.other += record.other;
    findings.details.extend(record.notes.iter().map(|n| ("connection", n.clone())));
    let Some(first) = record.first else {
        findings.other += 1;
        findings
            .fail("connection", format!("{who}: never opened a stream (last error: {:?})", record.last_connect_error));
        return;
    };
    let shares = |groups: &[String]| groups.iter().any(|g| spec.required.contains(g));

    // Nothing outside its groups, at any time.
    let mut received: HashMap<Uuid, usize> = HashMap::new();
    for (k, delivery) in record.deliveries.iter().enumerate() {
        if received.insert(delivery.event_id, k).is_some() {
            continue; // a repeat on another connection: allowed (at-least-once)
        }
        let groups: &[String] = match (log.get(&delivery.event_id), ledger.get(&delivery.event_id)) {
            (Some(l), _) => &l.groups,
            (None, Some((g, _))) => g,
            (None, None) => {
                findings.other += 1;
                findings.fail(
                    "phantom",
                    format!("{who}: received event {} (seq {}) that nobody committed", delivery.event_id, delivery.seq),
                );
                continue;
            }
        };
        // The envelope names only the event's groups that this stream delivers (never one it is not in):
        // every group of the event it requires, and the toggled one at most.
        let streamable = |g: &String| spec.required.contains(g) || spec.toggled.as_ref() == Some(g);
        let expected_groups = !delivery.groups.is_empty()
            && delivery.groups.iter().all(|g| groups.contains(g) && streamable(g))
            && groups.iter().filter(|g| spec.required.contains(g)).all(|g| delivery.groups.contains(g));
        if !expected_groups {
            findings.other += 1;
            findings.fail(
                "groups",
                format!(
                    "{who}: event seq {} arrived with groups {:?}, committed with {:?} (the stream's: {:?} and {:?})",
                    delivery.seq, delivery.groups, groups, spec.required, spec.toggled
                ),
            );
        }
        if shares(groups) {
            continue;
        }
        let toggled_ok = spec
            .toggled
            .as_ref()
            .is_some_and(|g| groups.contains(g) && held_near(toggles, timeline, &spec.dispatcher, g, delivery.at));
        if !toggled_ok {
            findings.cross_group += 1;
            if findings.cross_group <= 5 {
                findings.fail(
                    "cross-group",
                    format!(
                        "{who}: cross-group event seq {} groups {:?} at {:.1}s on conn #{}",
                        delivery.seq,
                        groups,
                        delivery.at.as_secs_f64(),
                        delivery.connection
                    ),
                );
            }
        }
    }

    // Everything of its groups: the committed events (regular clients), or the log's events in the range it
    // resumed over (burst clients).
    let mut expected: Vec<(Option<i64>, Uuid, Origin)> = Vec::new();
    match spec.until {
        None => {
            for (id, (groups, origin)) in ledger {
                if !shares(groups) {
                    continue;
                }
                match log.get(id) {
                    Some(l) if l.seq > first => expected.push((Some(l.seq), *id, *origin)),
                    Some(_) => {}
                    None if *origin == Origin::Poison => {} // parked or refused after commit: reported globally
                    None => expected.push((None, *id, *origin)),
                }
            }
        }
        Some(until) => {
            let range = if first < until { by_seq.range(first + 1..=until) } else { by_seq.range(0..0) };
            for (seq, (id, groups)) in range {
                if shares(groups) {
                    let origin = ledger.get(id).map_or(Origin::Writer, |(_, o)| *o);
                    expected.push((Some(*seq), *id, origin));
                }
            }
            if record.position.is_none_or(|p| p < until) {
                findings.other += 1;
                findings.fail("burst", format!(
                    "{who}: resumed from seq {first} to reach {until} but stopped at {:?} after {} connection(s) (last error: {:?})",
                    record.position,
                    record.connections.len(),
                    record.last_connect_error
                ));
            }
        }
    }
    expected.sort_by_key(|(seq, _, _)| seq.unwrap_or(i64::MAX));
    let lost: Vec<&(Option<i64>, Uuid, Origin)> =
        expected.iter().filter(|(_, id, _)| !received.contains_key(id)).collect();
    if lost.is_empty() {
        return;
    }
    findings.lost += lost.len();
    // Report the lost events as runs of consecutive expected events, each with the connection that moved the
    // client's position over it.
    let mut runs: Vec<Vec<&(Option<i64>, Uuid, Origin)>> = Vec::new();
    let mut previous_lost = false;
    for (k, entry) in expected.iter().enumerate() {
        let is_lost = !received.contains_key(&entry.1);
        // Published and never-published events make separate runs.
        let same_kind = k > 0 && expected[k - 1].0.is_some() == entry.0.is_some();
        if is_lost {
            if previous_lost && same_kind {
                runs.last_mut().expect("a run was started").push(entry);
            } else {
                runs.push(vec![entry]);
            }
        }
        previous_lost = is_lost;
    }
    for run in runs.iter().take(3) {
        let mut origins: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, _, origin) in run {
            *origins.entry(origin.name()).or_default() += 1;
        }
        let (first_seq, last_seq) = (run[0].0, run[run.len() - 1].0);
        let span = match (first_seq, last_seq) {
            (Some(a), Some(b)) if a == b => format!("seq {a}"),
            (Some(a), Some(b)) => format!("seq {a}..={b}"),
            _ => "never published".to_owned(),
        };
        let passed = first_seq.and_then(|s| {
            record
                .connections
                .iter()
                .enumerate()
                .find(|(_, c)| c.opening.is_some_and(|o| o < s) && c.last.is_some_and(|l| l >= s))
        });
        let how = match passed {
            Some((k, c)) => format!(
                "its position passed them on conn #{k} to instance {} opened at {:.1}s from seq {:?} that reached {:?}",
                c.instance,
                c.opened_at.as_secs_f64(),
                c.opening,
                c.last
            ),
            None => format!("the client never got past them (position {:?})", record.position),
        };
        findings.fail("lost", format!("{who}: lost {} event(s) {span} {origins:?}; {how}", run.len()));
    }
    if runs.len() > 3 {
        findings.fail(
            "lost",
            format!("{who}: ... and {} more run(s) of lost events ({} events in all)", runs.len() - 3, lost.len()),
        );
    }
}

/// Whether `dispatcher` held `group` at some instant of [at - grace, at].
fn held_near(toggles: &[Toggle], timeline: &[MembershipChange], dispatcher: &str, group: &str, at: Duration) -> bool {
    let Some(toggle) = toggles.iter().find(|t| t.dispatcher == dispatcher && t.group == group) else {
        return false;
    };
    let window_start = at.saturating_sub(MEMBERSHIP_GRACE);
    // Held intervals, widened over the moment of each change (the commit lands somewhere in [before, after]).
    let mut held_since = toggle.initially_held.then_some(Duration::ZERO);
    let mut intervals = Vec::new();
    for change in timeline.iter().filter(|c| c.dispatcher == dispatcher && c.group == group) {
        if change.held_after {
            held_since.get_or_insert(change.before);
        } else if let Some(since) = held_since.take() {
            intervals.push((since, change.after));
        }
    }
    if let Some(since) = held_since {
        intervals.push((since, Duration::MAX));
    }
    intervals.iter().any(|(from, to)| *from <= at && *to >= window_start)
}

/// Distinct event ids (a sanity check for the ledger: no id is in it twice).
pub fn ledger_duplicates(ledger: &Ledger) -> usize {
    let mut seen = HashSet::new();
    ledger.committed.iter().filter(|e| !seen.insert(e.id)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::{ConnectionRecord, Delivery};
    use crate::writers::LedgerEvent;

    fn spec(required: &[&str], toggled: Option<&str>) -> ClientSpec {
        ClientSpec {
            name: "c0".to_owned(),
            dispatcher: "d".to_owned(),
            token: String::new(),
            narrowed: None,
            required: required.iter().map(|g| (*g).to_owned()).collect(),
            toggled: toggled.map(str::to_owned),
            resume_from: None,
            until: None,
            voluntary_reconnects: true,
        }
    }

    fn groups(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Ten events alternating north and east, at seq 1..=10.
    fn world() -> (Ledger, HashMap<Uuid, Logged>, Vec<Uuid>) {
        let mut ledger = Ledger::default();
        let mut log = HashMap::new();
        let mut ids = Vec::new();
        for seq in 1..=10 {
            let g = groups(if seq % 2 == 0 { &["region:north"] } else { &["region:east"] });
            let id = Uuid::new_v4();
            ledger.committed.push(LedgerEvent { id, groups: g.clone(), origin: Origin::Writer });
            log.insert(id, Logged { seq, groups: g });
            ids.push(id);
        }
        (ledger, log, ids)
    }

    fn delivery(ids: &[Uuid], seq: i64, g: &[&str], at_s: u64) -> Delivery {
        Delivery {
            event_id: ids[seq as usize - 1],
            seq,
            groups: groups(g),
            connection: 0,
            at: Duration::from_secs(at_s),
        }
    }

    fn check(
        world: &(Ledger, HashMap<Uuid, Logged>, Vec<Uuid>),
        spec: &ClientSpec,
        record: &ClientRecord,
        toggles: &[Toggle],
        timeline: &[MembershipChange],
    ) -> Findings {
        let (ledger, log, _) = world;
        let mut findings = Findings::default();
        let client = Client { spec: spec.clone(), record: std::sync::Mutex::new(ClientRecord::default()) };
        *client.record.lock().unwrap() = ClientRecord {
            first: record.first,
            position: record.position,
            deliveries: record.deliveries.clone(),
            connections: record.connections.clone(),
            ..Default::default()
        };
        clients(&mut findings, ledger, log, &[&client], toggles, timeline);
        findings
    }

    #[test]
    fn a_client_that_got_every_event_of_its_groups_passes_and_repeats_across_connections_are_allowed() {
        let w = world();
        let ids = &w.2;
        let mut deliveries: Vec<Delivery> = (1..=5).map(|k| delivery(ids, 2 * k, &["region:north"], 1)).collect();
        deliveries.push(delivery(ids, 4, &["region:north"], 2));
        let record = ClientRecord { first: Some(0), position: Some(10), deliveries, ..Default::default() };
        let findings = check(&w, &spec(&["region:north"], None), &record, &[], &[]);
        assert_eq!((findings.lost, findings.cross_group), (0, 0));
        assert!(findings.details.is_empty(), "{:?}", findings.details);
    }

    #[test]
    fn lost_events_are_reported_as_runs_with_the_connection_that_passed_them() {
        let w = world();
        let ids = &w.2;
        let deliveries = vec![delivery(ids, 2, &["region:north"], 1), delivery(ids, 10, &["region:north"], 1)];
        let connections = vec![ConnectionRecord {
            instance: 1,
            opened_at: Duration::from_secs(1),
            opening: Some(0),
            last: Some(10),
            events: 2,
        }];
        let record = ClientRecord { first: Some(0), position: Some(10), deliveries, connections, ..Default::default() };
        let findings = check(&w, &spec(&["region:north"], None), &record, &[], &[]);
        assert_eq!(findings.lost, 3);
        assert_eq!(findings.details.len(), 1, "{:?}", findings.details);
        let line = &findings.details[0].1;
        assert!(line.contains("lost 3 event(s) seq 4..=8"), "{line}");
        assert!(line.contains("conn #0 to instance 1"), "{line}");
    }

    #[test]
    fn an_event_of_another_group_is_cross_group_unless_a_toggled_group_was_held_shortly_before() {
        let w = world();
        let ids = &w.2;
        let mut deliveries: Vec<Delivery> = (1..=5).map(|k| delivery(ids, 2 * k, &["region:north"], 1)).collect();
        // east at 20 s: held from 0 until removed at 15 s, within the grace.
        deliveries.push(delivery(ids, 3, &["region:east"], 20));
        let record =
            ClientRecord { first: Some(0), position: Some(10), deliveries: deliveries.clone(), ..Default::default() };
        let toggles = [Toggle { dispatcher: "d".to_owned(), group: "region:east".to_owned(), initially_held: true }];
        let removed = MembershipChange {
            dispatcher: "d".to_owned(),
            group: "region:east".to_owned(),
            held_after: false,
            before: Duration::from_secs(14),
            after: Duration::from_secs(15),
        };
        let toggled = spec(&["region:north"], Some("region:east"));
        assert_eq!(check(&w, &toggled, &record, &toggles, std::slice::from_ref(&removed)).cross_group, 0);
        // The same delivery 30 s after the removal is not allowed, nor for a client without that toggle.
        let mut late = deliveries.clone();
        late.last_mut().unwrap().at = Duration::from_secs(45);
        let record_late = ClientRecord { first: Some(0), position: Some(10), deliveries: late, ..Default::default() };
        assert_eq!(check(&w, &toggled, &record_late, &toggles, &[removed]).cross_group, 1);
        assert_eq!(check(&w, &spec(&["region:north"], None), &record, &[], &[]).cross_group, 1);
    }

    #[test]
    fn a_burst_client_is_held_to_the_log_between_its_resume_position_and_its_target() {
        let w = world();
        let ids = &w.2;
        let mut s = spec(&["region:east"], None);
        s.resume_from = Some(4);
        s.until = Some(8);
        let deliveries = vec![delivery(ids, 5, &["region:east"], 1), delivery(ids, 7, &["region:east"], 1)];
        let record = ClientRecord { first: Some(4), position: Some(8), deliveries, ..Default::default() };
        let findings = check(&w, &s, &record, &[], &[]);
        assert_eq!(findings.lost, 0, "{:?}", findings.details);
        let short = ClientRecord {
            first: Some(4),
            position: Some(5),
            deliveries: vec![delivery(ids, 5, &["region:east"], 1)],
            ..Default::default()
        };
        let findings = check(&w, &s, &short, &[], &[]);
        assert_eq!(findings.lost, 1);
        assert!(findings.details.iter().any(|(kind, _)| *kind == "burst"), "{:?}", findings.details);
    }

    #[test]
    fn fault_lists_parse() {
        assert_eq!(crate::faults::Fault::parse_list("all").unwrap().len(), 6);
        assert_eq!(
            crate::faults::Fault::parse_list("clock,kill,kill").unwrap(),
            vec![crate::faults::Fault::Kill, crate::faults::Fault::ClockStep]
        );
        assert!(crate::faults::Fault::parse_list("nope").is_err());
        assert!(crate::faults::Fault::parse_list("").is_err());
    }
}
