//! Convergence, by property test: random operations on several replicas of one case file,
//! exchanged in random orders through Automerge's sync protocol (with syncs cut off part way),
//! end with identical heads and identical typed views, lose no record, and change finalised
//! records only through amendments.
#![allow(clippy::unwrap_used, reason = "a test fails loudly on purpose")]

use std::collections::{BTreeMap, BTreeSet};

use doorstep_sync_core::records::{HomeVisit, StageChange};
use doorstep_sync_core::testing::{self, at};
use doorstep_sync_core::{CaseFile, CaseFileError, Collection, PeerState};
use proptest::prelude::*;
use serde_json::{Value as Json, json};

const REPLICAS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    AddVisit {
        replica: usize,
    },
    EditVisit {
        replica: usize,
        record: usize,
        field: usize,
        value: u8,
    },
    Finalise {
        replica: usize,
        record: usize,
    },
    Amend {
        replica: usize,
        record: usize,
        field: usize,
        value: u8,
    },
    SetStage {
        replica: usize,
        value: u8,
    },
    AddStageChange {
        replica: usize,
    },
    Resolve {
        replica: usize,
        conflict: usize,
        pick: usize,
    },
    Sync {
        a: usize,
        b: usize,
    },
    /// A sync cut off after `messages` messages; both sides keep only what they persisted.
    CutSync {
        a: usize,
        b: usize,
        messages: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..REPLICAS;
    prop_oneof![
        3 => r.clone().prop_map(|replica| Op::AddVisit { replica }),
        4 => (r.clone(), 0..8usize, 0..3usize, 0..4u8)
            .prop_map(|(replica, record, field, value)| Op::EditVisit { replica, record, field, value }),
        2 => (r.clone(), 0..8usize).prop_map(|(replica, record)| Op::Finalise { replica, record }),
        2 => (r.clone(), 0..8usize, 0..3usize, 0..4u8)
            .prop_map(|(replica, record, field, value)| Op::Amend { replica, record, field, value }),
        1 => (r.clone(), 0..3u8).prop_map(|(replica, value)| Op::SetStage { replica, value }),
        1 => r.clone().prop_map(|replica| Op::AddStageChange { replica }),
        2 => (r.clone(), 0..4usize, 0..3usize)
            .prop_map(|(replica, conflict, pick)| Op::Resolve { replica, conflict, pick }),
        4 => (r.clone(), r.clone()).prop_map(|(a, b)| Op::Sync { a, b }),
        2 => (r.clone(), r, 0..4usize).prop_map(|(a, b, messages)| Op::CutSync { a, b, messages }),
    ]
}

const FIELDS: [&str; 3] = ["concerns", "discussed", "safeguarding_flag"];

fn field_value(field: usize, value: u8) -> Json {
    match FIELDS[field] {
        "safeguarding_flag" => json!(value.is_multiple_of(2)),
        name => json!(format!("{name} v{value}")),
    }
}

struct World {
    replicas: Vec<CaseFile>,
    /// Per ordered pair (from, to): what `from` knows of `to`, persisted between sessions.
    states: BTreeMap<(usize, usize), PeerState>,
    created: BTreeSet<String>,
    /// The bodies each finaliser saw when it finalised, per record.
    finalised_as: BTreeMap<String, Vec<serde_json::Map<String, Json>>>,
    clock: i64,
}

impl World {
    fn new() -> Self {
        let mut origin = testing::new_case("case-prop");
        let replicas = (0..REPLICAS)
            .map(|n| {
                let n = n as u32 + 1;
                testing::replica(
                    &mut origin,
                    testing::author(&format!("user-{n}"), &format!("device-{n}")),
                    testing::actor(n),
                )
                .unwrap()
            })
            .collect();
        World {
            replicas,
            states: BTreeMap::new(),
            created: BTreeSet::new(),
            finalised_as: BTreeMap::new(),
            clock: 0,
        }
    }

    fn tick(&mut self) -> chrono::DateTime<chrono::Utc> {
        self.clock += 1;
        at(self.clock)
    }

    fn visit_id(&self, replica: usize, record: usize) -> Option<String> {
        let ids = self.replicas[replica]
            .record_ids(Collection::Visits)
            .unwrap();
        (!ids.is_empty()).then(|| ids[record % ids.len()].clone())
    }

    fn apply(&mut self, op: &Op) {
        let now = self.tick();
        match *op {
            Op::AddVisit { replica } => {
                let id = self.replicas[replica]
                    .add(&testing::visit("u", now, 40), now)
                    .unwrap();
                self.created.insert(id);
            }
            Op::EditVisit {
                replica,
                record,
                field,
                value,
            } => {
                let Some(id) = self.visit_id(replica, record) else {
                    return;
                };
                let file = &mut self.replicas[replica];
                let current = file.get::<HomeVisit>(&id).unwrap();
                let mut body = serde_json::to_value(&current.body).unwrap();
                body[FIELDS[field]] = field_value(field, value);
                let body: HomeVisit = serde_json::from_value(body).unwrap();
                let outcome = file.update(&id, &body, now);
                if current.finalised.is_some() {
                    assert!(
                        matches!(outcome, Err(CaseFileError::Finalised { .. })),
                        "a finalised record refused a direct edit"
                    );
                } else {
                    outcome.unwrap();
                }
            }
            Op::Finalise { replica, record } => {
                let Some(id) = self.visit_id(replica, record) else {
                    return;
                };
                let file = &mut self.replicas[replica];
                let body = file.raw_record(Collection::Visits, &id).unwrap().body;
                match file.finalise(Collection::Visits, &id, now) {
                    Ok(()) => self.finalised_as.entry(id).or_default().push(body),
                    Err(
                        CaseFileError::Finalised { .. } | CaseFileError::FieldInConflict { .. },
                    ) => {}
                    Err(e) => panic!("finalise failed: {e}"),
                }
            }
            Op::Amend {
                replica,
                record,
                field,
                value,
            } => {
                let Some(id) = self.visit_id(replica, record) else {
                    return;
                };
                let outcome = self.replicas[replica].amend(
                    Collection::Visits,
                    &id,
                    FIELDS[field],
                    field_value(field, value),
                    "correction",
                    now,
                );
                match outcome {
                    Ok(_)
                    | Err(
                        CaseFileError::NotFinalised { .. } | CaseFileError::FieldInConflict { .. },
                    ) => {}
                    Err(e) => panic!("amend failed: {e}"),
                }
            }
            Op::SetStage { replica, value } => {
                let file = &mut self.replicas[replica];
                let mut details = file.details().unwrap();
                details.stage = format!("level {value}");
                file.update_details(&details, now).unwrap();
            }
            Op::AddStageChange { replica } => {
                let change = StageChange {
                    from_stage: "level 1".into(),
                    to_stage: "level 2".into(),
                    changed_on: now.date_naive(),
                    reason: "no improvement after letter 2".into(),
                };
                let id = self.replicas[replica].add(&change, now).unwrap();
                self.created.insert(id);
            }
            Op::Resolve {
                replica,
                conflict,
                pick,
            } => {
                let file = &mut self.replicas[replica];
                let conflicts = file.conflicts().unwrap();
                if conflicts.is_empty() {
                    return;
                }
                let conflict = &conflicts[conflict % conflicts.len()];
                let chosen = conflict.values[pick % conflict.values.len()].value.clone();
                let resolution = file.resolve_conflict(&conflict.id, &chosen, now).unwrap();
                assert_eq!(resolution.chosen, chosen);
                assert!(
                    file.conflicts()
                        .unwrap()
                        .iter()
                        .all(|c| c.id != conflict.id),
                    "a resolved conflict is gone locally at once"
                );
            }
            Op::Sync { a, b } if a != b => self.sync(a, b, usize::MAX),
            Op::CutSync { a, b, messages } if a != b => {
                self.sync(a, b, messages);
                // The connection dropped: each side keeps only its persisted state.
                for key in [(a, b), (b, a)] {
                    if let Some(state) = self.states.get(&key) {
                        let persisted = PeerState::decode(&state.encode()).unwrap();
                        self.states.insert(key, persisted);
                    }
                }
            }
            Op::Sync { .. } | Op::CutSync { .. } => {}
        }
    }

    /// Exchanges up to `limit` messages between `a` and `b` over the sync protocol.
    fn sync(&mut self, a: usize, b: usize, limit: usize) {
        let mut sent = 0;
        let mut quiet_rounds = 0;
        let (mut from, mut to) = (a, b);
        while sent < limit && quiet_rounds < 2 {
            let mut state = self.states.remove(&(from, to)).unwrap_or_default();
            let message = self.replicas[from].generate_sync_message(&mut state);
            self.states.insert((from, to), state);
            match message {
                Some(message) => {
                    quiet_rounds = 0;
                    sent += 1;
                    let mut state = self.states.remove(&(to, from)).unwrap_or_default();
                    self.replicas[to]
                        .receive_sync_message(&mut state, &message)
                        .unwrap();
                    self.states.insert((to, from), state);
                }
                None => quiet_rounds += 1,
            }
            std::mem::swap(&mut from, &mut to);
            assert!(sent < 100, "sync between {a} and {b} did not settle");
        }
    }

    fn sync_everyone(&mut self) {
        // Twice round a ring reaches every replica from every other.
        for _ in 0..2 {
            for a in 0..REPLICAS {
                self.sync(a, (a + 1) % REPLICAS, usize::MAX);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge(ops in prop::collection::vec(op(), 1..45)) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op);
        }
        world.sync_everyone();

        let heads: Vec<_> = world.replicas.iter_mut().map(|r| r.heads()).collect();
        prop_assert!(heads.windows(2).all(|w| w[0] == w[1]), "heads differ");
        let views: Vec<_> = world.replicas.iter().map(|r| r.view().unwrap()).collect();
        for view in &views[1..] {
            prop_assert_eq!(view, &views[0]);
        }
        let view = &views[0];

        // No record lost.
        let present: BTreeSet<String> = view
            .visits
            .iter()
            .map(|r| r.id.clone())
            .chain(view.stage_changes.iter().map(|r| r.id.clone()))
            .collect();
        prop_assert_eq!(&present, &world.created);

        // Finalised records changed only through amendments: every field holds what some
        // finaliser saw, or the new value of an amendment of that field.
        for record in &view.visits {
            let Some(snapshots) = world.finalised_as.get(&record.id) else {
                prop_assert!(record.finalised.is_none());
                continue;
            };
            prop_assert!(record.finalised.is_some());
            let raw = world.replicas[0].raw_record(Collection::Visits, &record.id).unwrap();
            for (field, value) in &raw.body {
                let finalised_value = snapshots.iter().any(|s| s.get(field) == Some(value));
                let amended_value = raw
                    .amendments
                    .iter()
                    .any(|a| &a.field == field && &a.new == value);
                prop_assert!(
                    finalised_value || amended_value,
                    "{}.{} = {} came from neither finalisation nor amendment",
                    record.id, field, value
                );
            }
        }

        // Resolving every conflict on one replica clears it everywhere after sync.
        let mut guard = 0;
        while let Some(conflict) = world.replicas[0].conflicts().unwrap().into_iter().next() {
            let chosen = conflict.values[0].value.clone();
            let now = world.tick();
            world.replicas[0].resolve_conflict(&conflict.id, &chosen, now).unwrap();
            guard += 1;
            prop_assert!(guard < 50, "conflicts did not go away");
        }
        world.sync_everyone();
        for replica in &world.replicas {
            prop_assert!(replica.conflicts().unwrap().is_empty());
        }
    }
}
