//! Several phones editing offline and syncing at once or in random orders converge, on one
//! server or on two server instances sharing one PostgreSQL database.

use doorstep_server::storage::heads_key;
use doorstep_sync_core::records::HomeVisit;
use doorstep_sync_core::testing;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::helpers::{
    Backend, Phone, TestApp, both_backends, counter, new_case, spawn_app, spawn_second_instance,
};

both_backends!(
    several_phones_sync_at_once_and_in_random_orders_and_converge,
    two_phones_syncing_many_shared_cases_at_once_lose_nothing,
    phones_uploading_to_one_case_at_once_are_received_together_and_lose_nothing,
);

/// Each phone records one visit in every case it holds.
fn record_visits(phones: &mut [Phone], round: i64) -> usize {
    let mut recorded = 0;
    for phone in phones.iter_mut() {
        let user = phone.tokens.user.id.clone();
        for doc in phone.docs.values_mut() {
            let at = testing::at(round * 60 + recorded as i64);
            doc.add(&testing::visit(&user, at, 120), at).unwrap();
            recorded += 1;
        }
    }
    recorded
}

async fn assert_converged(app: &TestApp, phones: &mut [Phone]) {
    for phone in phones.iter_mut() {
        for (case_id, doc) in &mut phone.docs {
            let stored = app.storage().document(case_id).await.unwrap().unwrap();
            assert_eq!(
                heads_key(&doc.heads()),
                stored.heads,
                "{} on {case_id}",
                phone.username
            );
        }
    }
}

/// Rounds in random order, one phone at a time, until a whole pass is quiet.
async fn sync_in_random_order(servers: &[&TestApp], phones: &mut [Phone], rng: &mut StdRng) {
    for _ in 0..20 {
        let mut order: Vec<usize> = (0..phones.len()).collect();
        order.shuffle(rng);
        let mut busy = false;
        for i in order {
            let server = servers.choose(rng).unwrap();
            busy |= phones[i].sync_round(*server).await.1;
        }
        if !busy {
            return;
        }
    }
    panic!("phones did not converge within 20 passes");
}

async fn several_phones_sync_at_once_and_in_random_orders_and_converge(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut rng = StdRng::seed_from_u64(7);
    // Two phones each for the officer and the worker; all four share case-demo-2.
    let mut phones = vec![
        Phone::sign_in(&app, "officer", 1).await,
        Phone::sign_in(&app, "officer", 2).await,
        Phone::sign_in(&app, "worker", 3).await,
        Phone::sign_in(&app, "worker", 4).await,
    ];
    for phone in &mut phones {
        phone.sync_until_quiet(&app).await;
    }

    let mut recorded = 0;
    for round in 0..3 {
        recorded += record_visits(&mut phones, round);
        // All four at once: concurrent transactions on the same documents.
        for _ in 0..2 {
            let [a, b, c, d] = &mut phones[..] else {
                unreachable!()
            };
            let replies = tokio::join!(
                a.sync_round(&app),
                b.sync_round(&app),
                c.sync_round(&app),
                d.sync_round(&app)
            );
            // Concurrent syncs of one case wait or retry; none is refused. (On PostgreSQL a
            // read transaction once saw a document and its changes at different commits, and
            // answered "unavailable"; the phone then never resent what it had sent.)
            for (reply, _) in [&replies.0, &replies.1, &replies.2, &replies.3] {
                for document in &reply.documents {
                    assert!(
                        document.error.is_none(),
                        "{}: {:?}",
                        document.case_id,
                        document.error
                    );
                }
            }
        }
        sync_in_random_order(&[&app], &mut phones, &mut rng).await;
    }
    assert_converged(&app, &mut phones).await;

    // Every visit recorded anywhere is in the server's copy of its case.
    let mut on_server = 0;
    for case_id in ["case-demo-1", "case-demo-2", "case-demo-3"] {
        let stored = app.storage().document(case_id).await.unwrap().unwrap();
        let file = doorstep_sync_core::CaseFile::load(
            &stored.snapshot,
            testing::author("t", "t"),
            testing::actor(77),
        )
        .unwrap();
        on_server += file.list::<HomeVisit>().unwrap().len();
    }
    assert_eq!(on_server, recorded);
    // case-demo-2: 3 rounds x 4 phones.
    let mut phone = phones.remove(0);
    assert_eq!(
        phone.doc("case-demo-2").list::<HomeVisit>().unwrap().len(),
        12
    );
}

/// Two phones share more cases than a sync reads and commits at once (groups of eight) and
/// sync all of them at the same moment, round after round: whichever commits a group second
/// finds a document moved and runs again (the groups it committed before stay committed).
/// Every visit lands; both phones end with what the server holds.
async fn two_phones_syncing_many_shared_cases_at_once_lose_nothing(backend: Backend) {
    const CASES: usize = 19;
    const ROUNDS: i64 = 3;
    let app = spawn_app(backend).await;
    let mut shared = Vec::with_capacity(CASES);
    for _ in 0..CASES {
        shared.push(new_case(&app, &["officer", "worker"]).await);
    }
    let mut phones = vec![
        Phone::sign_in(&app, "officer", 1).await,
        Phone::sign_in(&app, "worker", 2).await,
    ];
    for phone in &mut phones {
        phone.sync_until_quiet(&app).await;
        assert!(
            phone.docs.len() >= CASES,
            "{} holds every case",
            phone.username
        );
    }
    let mut recorded = 0;
    for round in 0..ROUNDS {
        recorded += record_visits(&mut phones, round);
        let [a, b] = &mut phones[..] else {
            unreachable!()
        };
        let (ra, rb) = tokio::join!(a.sync_round(&app), b.sync_round(&app));
        for document in ra.0.documents.iter().chain(&rb.0.documents) {
            assert!(
                document.error.is_none(),
                "{}: {:?}",
                document.case_id,
                document.error
            );
        }
        let mut rng = StdRng::seed_from_u64(round as u64);
        sync_in_random_order(&[&app], &mut phones, &mut rng).await;
    }
    assert_converged(&app, &mut phones).await;
    let mut on_server = 0;
    for phone in &mut phones {
        for (case_id, doc) in &mut phone.docs {
            if shared.contains(case_id) {
                on_server += doc.list::<HomeVisit>().unwrap().len();
            }
        }
    }
    // Each phone holds every visit of every shared case: both phones' visits, twice over.
    let shared_recorded = 2 * CASES * ROUNDS as usize;
    assert_eq!(on_server, 2 * shared_recorded);
    assert!(recorded >= shared_recorded);
}

/// Eight phones record visits in one case offline and sync at the same moment: uploads of the
/// case that wait in the upload queue together are received and committed together
/// (`doorstep_sync_uploads_taken_along_total`), each change stored with the provenance of the
/// device that sent it, and every phone ends with every visit. Whether uploads wait together
/// depends on timing: the burst is tried up to three times until some are taken along.
async fn phones_uploading_to_one_case_at_once_are_received_together_and_lose_nothing(
    backend: Backend,
) {
    const CASE: &str = "case-demo-2";
    const VISITS: i64 = 6;
    let app = spawn_app(backend).await;
    let mut phones = Vec::new();
    for n in 1..=8 {
        let user = if n % 2 == 0 { "officer" } else { "worker" };
        phones.push(Phone::sign_in(&app, user, n).await);
    }
    for phone in &mut phones {
        phone.sync_until_quiet(&app).await;
    }
    let mut recorded = phones[0].doc(CASE).list::<HomeVisit>().unwrap().len();
    let mut bursts = 0;
    for burst in 0..3 {
        bursts += 1;
        for (i, phone) in phones.iter_mut().enumerate() {
            for v in 0..VISITS {
                phone.record_visit(CASE, 1000 * burst + 100 * i as i64 + v, 300);
                recorded += 1;
            }
        }
        // All at once, round after round, until no phone has more to say.
        for _ in 0..6 {
            let requests: Vec<_> = phones.iter_mut().map(|p| p.next_request()).collect();
            if requests.iter().all(|(_, sent_any)| !sent_any) {
                break;
            }
            let app = &app;
            let sends = phones
                .iter_mut()
                .zip(&requests)
                .map(|(phone, (request, _))| async move {
                    let reply = phone.try_send(app, request).await.unwrap();
                    phone.apply(&reply);
                    reply
                });
            for reply in futures_util::future::join_all(sends).await {
                for document in &reply.documents {
                    assert!(document.error.is_none(), "{:?}", document.error);
                }
            }
        }
        if counter(&app, "doorstep_sync_uploads_taken_along_total").await > 0 {
            break;
        }
    }
    assert!(
        counter(&app, "doorstep_sync_uploads_taken_along_total").await > 0,
        "no upload was taken along in three bursts of eight"
    );
    for phone in &mut phones {
        phone.sync_until_quiet(&app).await;
    }
    assert_converged(&app, &mut phones).await;
    for phone in &mut phones {
        assert_eq!(
            phone.doc(CASE).list::<HomeVisit>().unwrap().len(),
            recorded,
            "{} holds every visit",
            phone.username
        );
    }
    // Each change is stored with the device and user of the phone whose actor made it.
    let changes = app.storage().changes(CASE).await.unwrap();
    for (n, phone) in (1..=8).zip(&phones) {
        let actor = testing::actor(n).to_hex_string();
        let made: Vec<_> = changes.iter().filter(|c| c.actor_id == actor).collect();
        assert!(
            made.len() >= bursts * VISITS as usize,
            "{} stored changes",
            made.len()
        );
        for change in made {
            assert_eq!(
                change.device_id.as_deref(),
                Some(phone.tokens.device_id.as_str())
            );
            assert_eq!(
                change.user_id.as_deref(),
                Some(phone.tokens.user.id.as_str())
            );
        }
    }
}

/// Two stateless instances on one PostgreSQL database, sharing the signing key: phones sync
/// through either at random and converge. Neither instance caches documents, so each
/// request sees what the other committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_database_converge() {
    let first = spawn_app(Backend::Postgres).await;
    let second = spawn_second_instance(&first).await;
    let mut rng = StdRng::seed_from_u64(11);
    let mut phones = vec![
        Phone::sign_in(&first, "officer", 1).await,
        Phone::sign_in(&second, "worker", 2).await,
        Phone::sign_in(&second, "officer", 3).await,
    ];
    for round in 0..3 {
        sync_in_random_order(&[&first, &second], &mut phones, &mut rng).await;
        record_visits(&mut phones, round);
    }
    sync_in_random_order(&[&first, &second], &mut phones, &mut rng).await;
    assert_converged(&first, &mut phones).await;
    let shared = heads_key(&phones[0].doc("case-demo-2").heads());
    assert_eq!(heads_key(&phones[1].doc("case-demo-2").heads()), shared);
    assert_eq!(heads_key(&phones[2].doc("case-demo-2").heads()), shared);
    // A token from one instance is good on the other.
    let me = second.get_me(phones[0].access_token()).await;
    assert_eq!(me.status(), reqwest::StatusCode::OK);
}
