//! The one storage suite every backend must pass, run against SQLite and PostgreSQL.

use doorstep_server::cases;
use std::time::Duration;

use doorstep_server::storage::{
    Device, DocumentChange, DocumentChanges, DocumentWrite, LISTENER_APPLICATION_NAME, NewChange,
    Provenance, RefreshToken, Role, Rotation, School, Storage, StorageError, User,
};
use doorstep_sync_core::{ChangeGraph, ChangeHash, GraphChange, testing};

use crate::helpers::{Backend, both_backends, test_storage};

both_backends!(
    migrations_are_idempotent,
    users_and_devices_round_trip_with_unique_names_and_actors,
    refresh_tokens_rotate_and_reuse_revokes_the_family,
    revoking_devices_and_users_revokes_their_tokens,
    cases_allocations_and_documents,
    sync_transaction_commits_idempotently_and_rolls_back_when_dropped,
    appended_changes_are_written_once_and_read_after_the_last_full_save,
    a_change_graph_reads_a_changes_bytes_only_where_its_dependencies_were_not_stored,
);

fn user(id: &str, username: &str, role: Role) -> User {
    User {
        id: id.into(),
        school_id: Some("school-a".into()),
        username: username.into(),
        display_name: format!("Invented {username}"),
        role,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        created_at: 1_000,
        disabled_at: None,
    }
}

fn device(id: &str, user_id: &str, actor: &str) -> Device {
    Device {
        id: id.into(),
        user_id: user_id.into(),
        actor_id: actor.into(),
        name: "phone".into(),
        created_at: 2_000,
        revoked_at: None,
    }
}

fn token(id: &str, device_id: &str, family: &str, hash: &str, expires_at: i64) -> RefreshToken {
    RefreshToken {
        id: id.into(),
        device_id: device_id.into(),
        family_id: family.into(),
        token_hash: hash.into(),
        created_at: 3_000,
        expires_at,
        used_at: None,
        revoked_at: None,
    }
}

async fn seed_people(storage: &dyn Storage) {
    storage
        .create_school(&School {
            id: "school-a".into(),
            name: "Invented School A".into(),
            created_at: 1,
        })
        .await
        .unwrap();
    storage
        .create_user(&user("u1", "ash", Role::AttendanceOfficer))
        .await
        .unwrap();
    storage
        .create_user(&user("u2", "bay", Role::DesignatedSafeguardingLead))
        .await
        .unwrap();
    storage
        .create_device(&device("d1", "u1", "aa01"))
        .await
        .unwrap();
    storage
        .create_device(&device("d2", "u2", "bb02"))
        .await
        .unwrap();
}

/// The people of `seed_people` and case c1, created by u2.
async fn seed_case_c1(storage: &dyn Storage) {
    seed_people(storage).await;
    cases::create_case(
        storage,
        "c1",
        "school-a",
        &testing::case_details(),
        "u2",
        testing::at(0),
        |_| Ok(()),
    )
    .await
    .unwrap();
}

async fn migrations_are_idempotent(backend: Backend) {
    let test = test_storage(backend).await;
    seed_people(test.storage.as_ref()).await;
    // Opening the same database again runs the migrator again: nothing breaks, nothing is lost.
    let reopened = doorstep_server::storage::open(&test.url).await.unwrap();
    reopened.ping().await.unwrap();
    assert_eq!(reopened.count_users().await.unwrap(), 2);
}

async fn users_and_devices_round_trip_with_unique_names_and_actors(backend: Backend) {
    let test = test_storage(backend).await;
    let storage = test.storage.as_ref();
    seed_people(storage).await;

    let ash = storage.user_by_username("ash").await.unwrap().unwrap();
    assert_eq!(ash, user("u1", "ash", Role::AttendanceOfficer));
    assert_eq!(
        storage.user("u2").await.unwrap().unwrap().role,
        Role::DesignatedSafeguardingLead
    );
    assert!(storage.user("nobody").await.unwrap().is_none());
    assert_eq!(storage.count_users().await.unwrap(), 2);

    let duplicate = storage.create_user(&user("u3", "ash", Role::Admin)).await;
    assert!(
        matches!(duplicate, Err(StorageError::Conflict(_))),
        "{duplicate:?}"
    );
    let duplicate = storage.create_device(&device("d3", "u2", "aa01")).await;
    assert!(
        matches!(duplicate, Err(StorageError::Conflict(_))),
        "{duplicate:?}"
    );

    assert_eq!(
        storage.device("d1").await.unwrap().unwrap(),
        device("d1", "u1", "aa01")
    );
    assert_eq!(
        storage.device_by_actor("bb02").await.unwrap().unwrap().id,
        "d2"
    );
    assert!(storage.device_by_actor("cc03").await.unwrap().is_none());
    assert_eq!(
        storage.school("school-a").await.unwrap().unwrap().name,
        "Invented School A"
    );
}

async fn refresh_tokens_rotate_and_reuse_revokes_the_family(backend: Backend) {
    let test = test_storage(backend).await;
    let storage = test.storage.as_ref();
    seed_people(storage).await;
    storage
        .insert_refresh_token(&token("t1", "d1", "f1", "h1", 10_000))
        .await
        .unwrap();
    storage
        .insert_refresh_token(&token("x1", "d2", "f2", "hx", 10_000))
        .await
        .unwrap();

    // Device and family come from the presented token, whatever the replacement says.
    let rotation = storage
        .rotate_refresh_token("h1", &token("t2", "", "", "h2", 10_000), 5_000)
        .await
        .unwrap();
    assert_eq!(
        rotation,
        Rotation::Rotated {
            device_id: "d1".into()
        }
    );
    let rotation = storage
        .rotate_refresh_token("h2", &token("t3", "", "", "h3", 10_000), 5_001)
        .await
        .unwrap();
    assert_eq!(
        rotation,
        Rotation::Rotated {
            device_id: "d1".into()
        }
    );

    // h1 again: reuse. The family (h3 included) is revoked; the other family is not.
    let rotation = storage
        .rotate_refresh_token("h1", &token("t4", "", "", "h4", 10_000), 5_002)
        .await
        .unwrap();
    assert_eq!(
        rotation,
        Rotation::Reused {
            device_id: "d1".into()
        }
    );
    let rotation = storage
        .rotate_refresh_token("h3", &token("t5", "", "", "h5", 10_000), 5_003)
        .await
        .unwrap();
    assert_eq!(
        rotation,
        Rotation::Reused {
            device_id: "d1".into()
        }
    );
    let rotation = storage
        .rotate_refresh_token("hx", &token("x2", "", "", "hx2", 10_000), 5_004)
        .await
        .unwrap();
    assert_eq!(
        rotation,
        Rotation::Rotated {
            device_id: "d2".into()
        }
    );

    let rotation = storage
        .rotate_refresh_token("hx2", &token("x3", "", "", "hx3", 10_000), 20_000)
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Expired);
    let rotation = storage
        .rotate_refresh_token("never", &token("y", "", "", "hy", 10_000), 1)
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Unknown);
}

async fn revoking_devices_and_users_revokes_their_tokens(backend: Backend) {
    let test = test_storage(backend).await;
    let storage = test.storage.as_ref();
    seed_people(storage).await;
    storage
        .insert_refresh_token(&token("t1", "d1", "f1", "h1", 10_000))
        .await
        .unwrap();
    storage
        .insert_refresh_token(&token("t2", "d2", "f2", "h2", 10_000))
        .await
        .unwrap();

    storage.revoke_device("d1", 4_000).await.unwrap();
    assert_eq!(
        storage.device("d1").await.unwrap().unwrap().revoked_at,
        Some(4_000)
    );
    // Revoking twice keeps the first time.
    storage.revoke_device("d1", 4_500).await.unwrap();
    assert_eq!(
        storage.device("d1").await.unwrap().unwrap().revoked_at,
        Some(4_000)
    );
    let rotation = storage
        .rotate_refresh_token("h1", &token("t3", "", "", "h3", 10_000), 5_000)
        .await
        .unwrap();
    assert_eq!(
        rotation,
        Rotation::Reused {
            device_id: "d1".into()
        }
    );

    storage.disable_user("u2", 6_000).await.unwrap();
    assert_eq!(
        storage.user("u2").await.unwrap().unwrap().disabled_at,
        Some(6_000)
    );
    let rotation = storage
        .rotate_refresh_token("h2", &token("t4", "", "", "h4", 10_000), 6_001)
        .await
        .unwrap();
    assert_eq!(
        rotation,
        Rotation::Reused {
            device_id: "d2".into()
        }
    );

    assert!(matches!(
        storage.revoke_device("nope", 1).await,
        Err(StorageError::NotFound)
    ));
    assert!(matches!(
        storage.disable_user("nope", 1).await,
        Err(StorageError::NotFound)
    ));
}

async fn cases_allocations_and_documents(backend: Backend) {
    let test = test_storage(backend).await;
    let storage = test.storage.as_ref();
    seed_people(storage).await;
    let details = testing::case_details();
    for case_id in ["c2", "c1"] {
        cases::create_case(
            storage,
            case_id,
            "school-a",
            &details,
            "u2",
            testing::at(0),
            |_| Ok(()),
        )
        .await
        .unwrap();
    }
    let case = storage.case("c1").await.unwrap().unwrap();
    assert_eq!(case.school_id, "school-a");
    assert!(storage.case("c9").await.unwrap().is_none());

    let document = storage.document("c1").await.unwrap().unwrap();
    let mut file = doorstep_sync_core::CaseFile::load(
        &document.snapshot,
        testing::author("t", "t"),
        testing::actor(5),
    )
    .unwrap();
    assert_eq!(file.case_id().as_deref(), Some("c1"));
    assert_eq!(
        doorstep_server::storage::heads_key(&file.heads()),
        document.heads
    );
    let changes = storage.changes("c1").await.unwrap();
    assert!(!changes.is_empty());
    assert!(
        changes
            .iter()
            .all(|c| c.device_id.is_none() && c.user_id.as_deref() == Some("u2"))
    );

    storage.allocate("c2", "u1", 1).await.unwrap();
    storage.allocate("c1", "u1", 1).await.unwrap();
    storage.allocate("c1", "u1", 2).await.unwrap(); // twice is once
    assert_eq!(
        storage.allocated_case_ids("u1").await.unwrap(),
        ["c1", "c2"]
    );
    storage.deallocate("c2", "u1").await.unwrap();
    assert_eq!(storage.allocated_case_ids("u1").await.unwrap(), ["c1"]);
    assert!(storage.allocated_case_ids("u2").await.unwrap().is_empty());

    let duplicate = cases::create_case(
        storage,
        "c1",
        "school-a",
        &details,
        "u2",
        testing::at(0),
        |_| Ok(()),
    )
    .await;
    assert!(duplicate.is_err());
}

async fn sync_transaction_commits_idempotently_and_rolls_back_when_dropped(backend: Backend) {
    let test = test_storage(backend).await;
    let storage = test.storage.as_ref();
    seed_case_c1(storage).await;
    storage.allocate("c1", "u1", 1).await.unwrap();
    let provenance = Provenance {
        device_id: "d1".into(),
        user_id: "u1".into(),
        received_at: 7_000,
    };
    let created_heads = storage.document("c1").await.unwrap().unwrap().heads;
    let write = DocumentWrite {
        case_id: "c1".into(),
        loaded_heads: created_heads.clone(),
        appended_changes: 0,
        snapshot: Some((vec![1, 2, 3], "h-new".into())),
        changes: vec![NewChange {
            hash: "ab".repeat(32),
            actor_id: "aa01".into(),
            deps: vec![ChangeHash([7; 32]), ChangeHash([8; 32])],
            bytes: vec![9],
        }],
        sync_state: (vec![4, 5], "h-new".into()),
    };

    // Dropped without commit: nothing is stored.
    {
        let mut tx = storage.begin_sync().await.unwrap();
        tx.write_documents(&provenance, std::slice::from_ref(&write))
            .await
            .unwrap();
    }
    assert_ne!(
        storage.document("c1").await.unwrap().unwrap().heads,
        "h-new"
    );
    let before = storage.changes("c1").await.unwrap().len();

    let mut tx = storage.begin_sync().await.unwrap();
    let allocated = tx.allocated_documents("u1", "d1").await.unwrap();
    assert_eq!(allocated.len(), 1);
    assert_eq!(allocated[0].peer_heads, None);
    let loaded = tx.load_documents("d1", &["c1".to_string()]).await.unwrap();
    assert_eq!(loaded[0].sync_state, None);
    tx.write_documents(&provenance, std::slice::from_ref(&write))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Every change comes back for the change graph with its hash and dependencies: the one
    // written above, and those of the case's creation.
    let mut tx = storage.begin_sync_read().await.unwrap();
    let graph_changes = tx.graph_changes("c1").await.unwrap();
    drop(tx);
    assert_eq!(graph_changes.len(), before + 1);
    assert!(
        graph_changes
            .iter()
            .all(|c| matches!(c, GraphChange::Known { .. })),
        "no change's bytes are read"
    );
    assert!(graph_changes.contains(&GraphChange::Known {
        hash: ChangeHash([0xab; 32]),
        deps: vec![ChangeHash([7; 32]), ChangeHash([8; 32])]
    }));

    // A write over heads that are no longer stored (someone wrote meanwhile) is refused and
    // writes nothing, not even its changes.
    let mut tx = storage.begin_sync().await.unwrap();
    let stale = DocumentWrite {
        snapshot: Some((vec![7], "h-stale".into())),
        changes: vec![NewChange {
            hash: "def".into(),
            actor_id: "aa01".into(),
            deps: Vec::new(),
            bytes: vec![8],
        }],
        ..write.clone()
    };
    assert!(matches!(
        tx.write_documents(&provenance, std::slice::from_ref(&stale))
            .await,
        Err(StorageError::DocumentChanged(case)) if case == "c1"
    ));
    drop(tx);
    assert_eq!(
        storage.document("c1").await.unwrap().unwrap().heads,
        "h-new"
    );
    assert!(
        !storage
            .changes("c1")
            .await
            .unwrap()
            .iter()
            .any(|c| c.hash == "def")
    );

    // The same write again (a retry, read at the new heads) with a later time: the change
    // keeps its first provenance.
    let mut tx = storage.begin_sync().await.unwrap();
    let later = Provenance {
        received_at: 8_000,
        ..provenance.clone()
    };
    let retry = DocumentWrite {
        loaded_heads: "h-new".into(),
        ..write.clone()
    };
    tx.write_documents(&later, std::slice::from_ref(&retry))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let changes = storage.changes("c1").await.unwrap();
    assert_eq!(changes.len(), before + 1);
    let stored = changes.iter().find(|c| c.hash == "ab".repeat(32)).unwrap();
    assert_eq!(stored.received_at, 7_000);
    assert_eq!(stored.device_id.as_deref(), Some("d1"));
    assert_eq!(
        storage.document("c1").await.unwrap().unwrap().heads,
        "h-new"
    );

    let mut tx = storage.begin_sync().await.unwrap();
    let allocated = tx.allocated_documents("u1", "d1").await.unwrap();
    assert_eq!(allocated[0].peer_heads.as_deref(), Some("h-new"));
    assert_eq!(tx.synced_cases("d1").await.unwrap(), ["c1"]);
    let loaded = tx.load_documents("d1", &["c1".to_string()]).await.unwrap();
    assert_eq!(loaded[0].sync_state.as_deref(), Some(&[4u8, 5][..]));
    tx.forget_sync_states("d1", &["c1".to_string()])
        .await
        .unwrap();
    assert!(tx.synced_cases("d1").await.unwrap().is_empty());
    assert!(matches!(
        tx.load_documents("d1", &["c9".to_string()]).await,
        Err(StorageError::NotFound)
    ));
    tx.commit().await.unwrap();
}

/// Runs one statement on the test database directly (to set up what old versions stored).
async fn execute(url: &str, backend: Backend, sql: &str) {
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
    }
}

/// Change rows stored before their dependencies were (a NULL `deps`) give their bytes, from
/// which the graph reads hash and dependencies; the others give only those. Malformed stored
/// dependencies are reported as corrupt, not guessed at.
async fn a_change_graph_reads_a_changes_bytes_only_where_its_dependencies_were_not_stored(
    backend: Backend,
) {
    let test = test_storage(backend).await;
    let storage = test.storage.as_ref();
    seed_case_c1(storage).await;
    let heads = storage.document("c1").await.unwrap().unwrap().heads;
    let known = graph_changes(storage, "c1").await.unwrap();
    assert!(known.iter().all(|c| matches!(c, GraphChange::Known { .. })));

    execute(
        &test.url,
        backend,
        "UPDATE changes SET deps = NULL WHERE case_id = 'c1'",
    )
    .await;
    let chunks = graph_changes(storage, "c1").await.unwrap();
    assert_eq!(chunks.len(), known.len());
    assert!(
        chunks
            .iter()
            .all(|c| matches!(c, GraphChange::Chunk(bytes) if !bytes.is_empty()))
    );
    let graph = ChangeGraph::from_graph_changes(chunks).unwrap();
    assert_eq!(doorstep_server::storage::heads_key(&graph.heads()), heads);

    let malformed = match backend {
        Backend::Sqlite => "UPDATE changes SET deps = x'0102' WHERE case_id = 'c1'",
        Backend::Postgres => "UPDATE changes SET deps = decode('0102', 'hex') WHERE case_id = 'c1'",
    };
    execute(&test.url, backend, malformed).await;
    assert!(matches!(
        graph_changes(storage, "c1").await,
        Err(StorageError::Corrupt(_))
    ));
}

async fn graph_changes(
    storage: &dyn Storage,
    case_id: &str,
) -> Result<Vec<GraphChange>, StorageError> {
    let mut tx = storage.begin_sync_read().await.unwrap();
    tx.graph_changes(case_id).await
}

/// The `snapshot` column itself, as the database holds it (not the document's bytes).
async fn snapshot_column(url: &str, backend: Backend, case_id: &str) -> Vec<u8> {
    let sql = "SELECT snapshot FROM documents WHERE case_id = $1";
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query_scalar(&sql.replace('$', "?"))
                .bind(case_id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query_scalar(sql)
                .bind(case_id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    }
}

async fn appended_changes_are_written_once_and_read_after_the_last_full_save(backend: Backend) {
    let test = test_storage(backend).await;
    let storage = test.storage.as_ref();
    seed_case_c1(storage).await;
    let created = storage.document("c1").await.unwrap().unwrap();
    let provenance = &Provenance {
        device_id: "d1".into(),
        user_id: "u1".into(),
        received_at: 7_000,
    };
    let change = |n: u8, bytes: Vec<u8>| NewChange {
        hash: format!("{n:02x}").repeat(32),
        actor_id: "aa01".into(),
        deps: Vec::new(),
        bytes,
    };
    let write = |loaded: &str, heads: &str, appended: i64, bytes: Vec<u8>, changes| DocumentWrite {
        case_id: "c1".into(),
        loaded_heads: loaded.into(),
        appended_changes: appended,
        snapshot: Some((bytes, heads.into())),
        changes,
        sync_state: (vec![1], heads.into()),
    };
    let commit = |write: DocumentWrite| async move {
        let mut tx = storage.begin_sync().await.unwrap();
        tx.write_documents(provenance, &[write]).await.unwrap();
        tx.commit().await.unwrap();
    };
    let read = || async {
        let stored = storage.document("c1").await.unwrap().unwrap().snapshot;
        let mut tx = storage.begin_sync_read().await.unwrap();
        let loaded = tx.load_documents("d1", &["c1".to_string()]).await.unwrap();
        assert_eq!(loaded[0].snapshot, stored, "both reads give the same bytes");
        stored
    };

    // Two syncs append changes: the stored bytes are the full save and the changes in the
    // order appended, and the full save is not written again.
    let mut expected = created.snapshot.clone();
    expected.extend([0xa1, 0xa2, 0xa3]);
    commit(write(
        &created.heads,
        "h1",
        2,
        expected.clone(),
        vec![change(1, vec![0xa1]), change(2, vec![0xa2, 0xa3])],
    ))
    .await;
    assert_eq!(read().await, expected);
    expected.push(0xa4);
    commit(write(
        "h1",
        "h2",
        3,
        expected.clone(),
        vec![change(3, vec![0xa4])],
    ))
    .await;
    assert_eq!(read().await, expected);
    assert_eq!(
        snapshot_column(&test.url, backend, "c1").await,
        created.snapshot
    );

    // A full save replaces everything.
    commit(write(
        "h2",
        "h3",
        0,
        vec![5, 5, 5],
        vec![change(4, vec![0xa5])],
    ))
    .await;
    assert_eq!(read().await, [5, 5, 5]);
    assert_eq!(snapshot_column(&test.url, backend, "c1").await, [5, 5, 5]);
    // Appending goes on after it.
    commit(write(
        "h3",
        "h4",
        1,
        vec![5, 5, 5, 0xa6],
        vec![change(6, vec![0xa6])],
    ))
    .await;
    assert_eq!(read().await, [5, 5, 5, 0xa6]);
}

/// SQLite has one writer, this process: nothing to watch.
#[tokio::test]
async fn sqlite_has_no_other_writers_to_watch() {
    let test = test_storage(Backend::Sqlite).await;
    assert!(test.storage.watch_documents().await.unwrap().is_none());
}

/// PostgreSQL reports the documents other writers change, not this instance's own writes;
/// after its listening connection is lost it listens again, says so, and reports again.
#[tokio::test]
async fn postgres_watch_reports_other_writers_and_resumes_after_a_lost_connection() {
    let test = test_storage(Backend::Postgres).await;
    let storage = test.storage.as_ref();
    seed_case_c1(storage).await;
    let mut changes = storage
        .watch_documents()
        .await
        .unwrap()
        .expect("PostgreSQL reports other writers");

    // This instance's own write, then another writer's: only the second is reported
    // (notifications arrive in commit order).
    let loaded_heads = storage.document("c1").await.unwrap().unwrap().heads;
    let own = DocumentWrite {
        case_id: "c1".into(),
        loaded_heads,
        appended_changes: 0,
        snapshot: Some((vec![1, 2, 3], "h-own".into())),
        changes: Vec::new(),
        sync_state: (vec![4, 5], "h-own".into()),
    };
    let provenance = Provenance {
        device_id: "d1".into(),
        user_id: "u1".into(),
        received_at: 7_000,
    };
    let mut tx = storage.begin_sync().await.unwrap();
    tx.write_documents(&provenance, std::slice::from_ref(&own))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let other_write = "UPDATE documents SET heads = heads || '-other' WHERE case_id = 'c1'";
    execute(&test.url, Backend::Postgres, other_write).await;
    assert_eq!(
        next_change(&mut changes).await,
        DocumentChange::Changed("c1".into())
    );

    execute(
        &test.url,
        Backend::Postgres,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = '{LISTENER_APPLICATION_NAME}'"
        ),
    )
    .await;
    assert_eq!(next_change(&mut changes).await, DocumentChange::Resumed);
    execute(&test.url, Backend::Postgres, other_write).await;
    assert_eq!(
        next_change(&mut changes).await,
        DocumentChange::Changed("c1".into())
    );
}

async fn next_change(changes: &mut DocumentChanges) -> DocumentChange {
    tokio::time::timeout(Duration::from_secs(20), changes.recv())
        .await
        .expect("a change reported within 20 s")
        .expect("the watch still runs")
}
