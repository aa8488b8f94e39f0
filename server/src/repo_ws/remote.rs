//! Changes committed through other instances on the same database
//! ([`crate::storage::Storage::watch_documents`]: PostgreSQL `LISTEN`/`NOTIFY`) reach this
//! process's WebSocket clients as its own commits do: the document is read as committed and
//! pushed to every connection that has it open ([`RepoHub::document_changed`]). When the
//! watch has lost its connection and listens again, every open case is pushed as committed:
//! announcements made meanwhile are lost.
//!
//! [`RepoHub::document_changed`]: super::RepoHub::document_changed

use std::collections::BTreeSet;

use doorstep_sync_core::{ActorId, CaseFile};

use crate::app::AppState;
use crate::storage::DocumentChange;

/// Runs until the storage stops reporting (never, while the server runs). Returns at once
/// where no other process writes the database.
pub(crate) async fn push_other_instances_changes(state: AppState) {
    let mut announced = match state.storage.watch_documents().await {
        Ok(Some(announced)) => announced,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(
                error = %e,
                "cannot listen for other instances' changes: WebSocket clients get them only when they next sync"
            );
            return;
        }
    };
    while let Some(first) = announced.recv().await {
        // Another instance's burst (a mass reconnect) announces each case many times: each is
        // read once for all the announcements that have come.
        let mut changed = BTreeSet::new();
        let mut resumed = false;
        for change in std::iter::once(first).chain(std::iter::from_fn(|| announced.try_recv().ok()))
        {
            match change {
                DocumentChange::Changed(case_id) => {
                    changed.insert(case_id);
                }
                DocumentChange::Resumed => resumed = true,
            }
        }
        if resumed {
            // Announcements were lost: any open case may have changed (a push finds nothing
            // to send where it has not).
            changed.extend(state.repo.open_cases());
        }
        for case_id in changed {
            if state.repo.has_subscribers(&case_id) {
                push_committed(&state, case_id).await;
            }
        }
    }
}

/// Reads the document as committed and pushes it, within a compute turn (a parsed document
/// takes megabytes: as many at once as for syncs).
async fn push_committed(state: &AppState, case_id: String) {
    let Some(_turn) = crate::sync::compute_turn(state).await else {
        return;
    };
    let document = match state.storage.document(&case_id).await {
        Ok(Some(document)) => document,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(case = %case_id, error = %e, "reading a document another instance changed");
            return;
        }
    };
    let cached = state.documents.take(&case_id, &document.heads);
    let parsed = tokio::task::spawn_blocking(move || match cached {
        Some(file) => Ok(file),
        None => CaseFile::load(
            &document.snapshot,
            crate::sync::server_reader(),
            ActorId::random(),
        ),
    })
    .await;
    match parsed {
        Ok(Ok(file)) => {
            state
                .repo
                .document_changed(&state.documents, case_id, file)
                .await;
        }
        Ok(Err(e)) => {
            tracing::error!(case = %case_id, error = %e, "stored case file does not load");
        }
        Err(e) => tracing::error!(error = %e, "loading a changed document failed"),
    }
}
