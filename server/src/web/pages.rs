//! The pages: my caseload, the case page, and the resolve action. The case file is read once
//! per page into [`CaseData`], which the case page and the evidence pack share.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDate, Utc};
use doorstep_sync_core::attendance::{AttendanceSummary, ThresholdWindow, penalty_notice_windows};
use doorstep_sync_core::readiness::{EvidenceReadiness, evidence_readiness};
use doorstep_sync_core::records::*;
use doorstep_sync_core::{
    Amendment, Author, CaseFile, CaseFileError, CaseView, Collection, Finalisation, Record,
};
use serde::{Deserialize, Serialize};

use super::provenance::{Provenance, Received};
use super::session::{SignedIn, WebForm};
use super::{WebError, render};
use crate::access::{self, Need};
use crate::api::cases::{EditError, load, server_edit};
use crate::app::AppState;
use crate::evidence::EvidenceError;
use crate::evidence::api::serve_file;
use crate::storage::{Case, StoredChange, StoredReceipt};

/// One child's attendance figures from the imported register marks (sync-core's rules).
#[derive(Debug)]
pub struct ChildFigures {
    pub name: String,
    pub subject_of_case: bool,
    pub summary: AttendanceSummary,
    /// Rolling periods in which the penalty-notice threshold is met; empty when it is not.
    pub penalty_windows: Vec<ThresholdWindow>,
}

/// Any record, with its envelope, its fields as text, and when the server received it.
#[derive(Debug)]
pub struct Item {
    pub collection: Collection,
    pub id: String,
    pub title: String,
    /// When it happened (a visit's start, a contact's time), else the device time.
    pub when: DateTime<Utc>,
    pub author: Author,
    pub device_time: DateTime<Utc>,
    pub received: Option<Received>,
    pub finalised: Option<Finalisation>,
    pub amendments: Vec<Amendment>,
    /// When the server received each amendment, in the same order.
    pub amendments_received: Vec<Option<Received>>,
    pub fields: Vec<(String, String)>,
    /// Received (or, failing that, made) after the user last opened the case.
    pub new_since_last_view: bool,
    /// Amendments received (or made) since then.
    pub new_amendments: usize,
}

impl Item {
    /// The id of its element on the case page, for links from the readiness checklist.
    pub fn anchor(&self) -> String {
        anchor(self.collection, &self.id)
    }
}

pub fn anchor(collection: Collection, id: &str) -> String {
    format!("{collection}-{id}")
}

/// A case file read for a page.
#[derive(Debug)]
pub struct CaseData {
    pub case: Case,
    pub heads: String,
    pub view: CaseView,
    pub today: NaiveDate,
    pub readiness: EvidenceReadiness,
    pub attendance: Vec<ChildFigures>,
    /// Visits, contacts, voice and evidence, oldest first.
    pub timeline: Vec<Item>,
    /// Children, household, plans, considerations and stage changes.
    pub other_records: Vec<Item>,
    pub changes: Vec<StoredChange>,
    /// Display names of the users the file mentions, by user id.
    pub names: BTreeMap<String, String>,
    /// The server's signed receipts for the case's evidence files, by SHA-256.
    pub receipts: BTreeMap<String, Vec<StoredReceipt>>,
}

impl CaseData {
    pub fn name_of(&self, user_id: &str) -> String {
        match self.names.get(user_id) {
            Some(name) => format!("{name} ({user_id})"),
            None => user_id.to_string(),
        }
    }

    /// The evidence item recorded as `record_id`.
    pub fn evidence(&self, record_id: &str) -> Option<&EvidenceItem> {
        self.view
            .evidence
            .iter()
            .find(|r| r.id == record_id)
            .map(|r| &r.body)
    }

    /// The link to an evidence file in the web view.
    pub fn evidence_url(&self, sha256: &str) -> String {
        format!("/cases/{}/evidence/{sha256}", self.case.id)
    }

    pub fn reference(&self) -> &str {
        &self.view.details.reference
    }

    pub fn last_contact(&self) -> Option<DateTime<Utc>> {
        self.timeline
            .iter()
            .filter(|i| matches!(i.collection, Collection::Visits | Collection::Contacts))
            .map(|i| i.when)
            .max()
    }

    /// Records and amendments new since the user last opened the case.
    pub fn new_records(&self) -> usize {
        self.timeline
            .iter()
            .chain(&self.other_records)
            .map(|i| usize::from(i.new_since_last_view) + i.new_amendments)
            .sum()
    }
}

/// A field value as a person reads it.
pub fn field_text(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "—".into(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        // Times are stored as RFC 3339 with nanoseconds; people read minutes.
        Value::String(s) => DateTime::parse_from_rfc3339(s).map_or_else(
            |_| s.clone(),
            |at| super::render::time(at.with_timezone(&Utc)),
        ),
        Value::Number(n) => n.to_string(),
        Value::Array(values) => {
            let separator = if values.iter().any(Value::is_object) {
                " | "
            } else {
                ", "
            };
            values
                .iter()
                .map(field_text)
                .collect::<Vec<_>>()
                .join(separator)
        }
        Value::Object(fields) => fields
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{}: {}", label(k), field_text(v)))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

fn label(key: &str) -> String {
    key.replace('_', " ")
}

fn snake(value: impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default()
}

struct Builder<'a> {
    provenance: &'a Provenance,
    last_viewed: Option<i64>,
}

impl Builder<'_> {
    fn items<T: RecordBody>(
        &self,
        records: &[Record<T>],
        title: impl Fn(&T) -> String,
        when: impl Fn(&Record<T>) -> DateTime<Utc>,
    ) -> Vec<Item> {
        records
            .iter()
            .map(|record| {
                let received = self.provenance.record(T::COLLECTION, &record.id).cloned();
                let arrived = received
                    .as_ref()
                    .map_or(record.device_time.timestamp_millis(), |r| r.at);
                let fields = match serde_json::to_value(&record.body) {
                    Ok(serde_json::Value::Object(map)) => map
                        .iter()
                        .filter(|(_, v)| {
                            !v.is_null()
                                && v.as_array().is_none_or(|a| !a.is_empty())
                                && v.as_str().is_none_or(|t| !t.is_empty())
                        })
                        .map(|(k, v)| (label(k), field_text(v)))
                        .collect(),
                    _ => Vec::new(),
                };
                Item {
                    collection: T::COLLECTION,
                    id: record.id.clone(),
                    title: title(&record.body),
                    when: when(record),
                    author: record.author.clone(),
                    device_time: record.device_time,
                    received,
                    finalised: record.finalised.clone(),
                    amendments: record.amendments.clone(),
                    amendments_received: record
                        .amendments
                        .iter()
                        .map(|a| self.provenance.amendment(&a.id).cloned())
                        .collect(),
                    fields,
                    new_since_last_view: self.last_viewed.is_some_and(|seen| arrived > seen),
                    new_amendments: record
                        .amendments
                        .iter()
                        .filter(|a| {
                            let arrived = self
                                .provenance
                                .amendment(&a.id)
                                .map_or(a.at.timestamp_millis(), |r| r.at);
                            self.last_viewed.is_some_and(|seen| arrived > seen)
                        })
                        .count(),
                }
            })
            .collect()
    }
}

/// Reads the case for a page: the view, readiness, figures, provenance and names.
pub async fn case_data(
    state: &AppState,
    case: Case,
    last_viewed: Option<i64>,
) -> Result<CaseData, WebError> {
    let mut file = load(state, &case).await?;
    let heads = file.heads.clone();
    let changes = state.storage.changes(&case.id).await?;
    let internal = |e: CaseFileError| WebError::Internal(format!("case {}: {e}", case.id));
    let view = file.view().map_err(internal)?;
    let provenance = Provenance::of(&mut file, &changes);
    let today = Utc::now().date_naive();
    let readiness = evidence_readiness(&view, today);
    let attendance = attendance_of(&file, &view).map_err(internal)?;
    let b = Builder {
        provenance: &provenance,
        last_viewed,
    };
    let mut timeline = b.items(
        &view.visits,
        |v| format!("Home visit: {} ({})", snake(v.outcome), snake(v.kind)),
        |r| r.body.started_at,
    );
    timeline.extend(b.items(
        &view.contacts,
        |c| {
            let what = match (c.kind, c.letter_number, c.meeting) {
                (ContactKind::Letter, Some(n), _) => format!("Letter {n}"),
                (ContactKind::Meeting, _, Some(m)) => format!("Meeting ({})", snake(m)),
                (kind, _, _) => snake(kind),
            };
            let engaged = if c.engaged {
                "engaged"
            } else {
                "did not engage"
            };
            format!("Contact: {what}, {engaged}")
        },
        |r| r.body.at,
    ));
    timeline.extend(b.items(
        &view.voice,
        |v| {
            format!(
                "{} voice ({})",
                capitalised(&snake(v.speaker)),
                snake(v.tool)
            )
        },
        |r| r.device_time,
    ));
    timeline.extend(b.items(
        &view.evidence,
        |e| format!("Evidence: {}", snake(e.kind)),
        |r| r.body.captured_at,
    ));
    timeline.sort_by(|a, b| (a.when, &a.id).cmp(&(b.when, &b.id)));
    let mut other_records = b.items(
        &view.children,
        |c| format!("Child: {}", c.name),
        |r| r.device_time,
    );
    other_records.extend(b.items(
        &view.household,
        |m| format!("Household: {} ({})", m.name, m.relationship),
        |r| r.device_time,
    ));
    other_records.extend(b.items(
        &view.targets,
        |t| format!("Target: {}", t.description),
        |r| r.device_time,
    ));
    other_records.extend(b.items(
        &view.contracts,
        |c| format!("Parenting contract: {}", snake(c.status)),
        |r| r.device_time,
    ));
    other_records.extend(b.items(
        &view.considerations,
        |c| format!("Considered: {}", snake(c.topic)),
        |r| r.device_time,
    ));
    other_records.extend(b.items(
        &view.stage_changes,
        |s| format!("Stage: {} to {}", s.from_stage, s.to_stage),
        |r| r.device_time,
    ));
    let mut names = BTreeMap::new();
    let mentioned = view
        .actors
        .values()
        .map(|a| a.user_id.clone())
        .chain(changes.iter().filter_map(|c| c.user_id.clone()))
        .chain(std::iter::once(view.details.lead_practitioner.clone()));
    for user_id in mentioned {
        if !names.contains_key(&user_id)
            && let Some(user) = state.storage.user(&user_id).await?
        {
            names.insert(user_id, user.display_name);
        }
    }
    let mut receipts: BTreeMap<String, Vec<StoredReceipt>> = BTreeMap::new();
    for receipt in state.storage.evidence_receipts(&case.id).await? {
        if !names.contains_key(&receipt.user_id)
            && let Some(user) = state.storage.user(&receipt.user_id).await?
        {
            names.insert(receipt.user_id.clone(), user.display_name);
        }
        receipts
            .entry(receipt.sha256.clone())
            .or_default()
            .push(receipt);
    }
    Ok(CaseData {
        case,
        heads,
        view,
        today,
        readiness,
        attendance,
        timeline,
        other_records,
        changes,
        names,
        receipts,
    })
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn attendance_of(file: &CaseFile, view: &CaseView) -> Result<Vec<ChildFigures>, CaseFileError> {
    view.children
        .iter()
        .map(|child| {
            let marks = file.marks(&child.id)?;
            Ok(ChildFigures {
                name: child.body.name.clone(),
                subject_of_case: child.body.subject_of_case,
                summary: AttendanceSummary::from_marks(&marks),
                penalty_windows: penalty_notice_windows(&marks),
            })
        })
        .collect()
}

/// `GET /cases`: every case the user may see, with what needs attention.
pub async fn caseload(
    State(state): State<AppState>,
    signed_in: SignedIn,
) -> Result<Response, WebError> {
    let user = &signed_in.user;
    let visible = access::visible_cases(state.storage.as_ref(), user).await?;
    let mine = state.storage.allocated_case_ids(&user.id).await?;
    let views: BTreeMap<String, i64> = state
        .storage
        .case_views(&user.id)
        .await?
        .into_iter()
        .collect();
    let mut rows = Vec::with_capacity(visible.len());
    for case in visible {
        let allocated = mine.contains(&case.id);
        let last_viewed = views.get(&case.id).copied();
        let data = case_data(&state, case, last_viewed).await?;
        rows.push(render::CaseloadRow {
            data,
            allocated,
            last_viewed,
        });
    }
    Ok(render::caseload_page(&signed_in, &rows).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CaseQuery {
    #[serde(default)]
    resolved: Option<String>,
}

/// `GET /cases/{case_id}`: the merged case file. Opening it is logged (who, which case) and
/// remembered for "new since my last visit".
pub async fn case_page(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(case_id): Path<String>,
    Query(query): Query<CaseQuery>,
) -> Result<Response, WebError> {
    let user = &signed_in.user;
    let case = access::case_for(state.storage.as_ref(), user, &case_id, Need::Read).await?;
    let last_viewed = state
        .storage
        .case_views(&user.id)
        .await?
        .into_iter()
        .find(|(id, _)| *id == case.id)
        .map(|(_, at)| at);
    let data = case_data(&state, case, last_viewed).await?;
    state
        .storage
        .record_case_view(&user.id, &data.case.id, Utc::now().timestamp_millis())
        .await?;
    tracing::info!(case = %data.case.id, user = %user.id, "case opened in the web view");
    let notice = query.resolved.is_some().then_some("Conflict resolved.");
    Ok(render::case_page(&signed_in, &data, last_viewed, notice).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ResolveForm {
    #[serde(default)]
    csrf: String,
    /// The chosen value, as the JSON the page put in the form.
    #[serde(default)]
    chosen: String,
}

/// `POST /cases/{case_id}/conflicts/{conflict_id}/resolve`: as the API's resolve, under the
/// signed-in user's name. A conflict someone resolved first is refused (409) and nothing is
/// written.
pub async fn resolve_conflict(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path((case_id, conflict_id)): Path<(String, String)>,
    WebForm(form): WebForm<ResolveForm>,
) -> Result<Response, WebError> {
    signed_in.check_csrf(&form.csrf)?;
    let user = &signed_in.user;
    let case = access::case_for(state.storage.as_ref(), user, &case_id, Need::Read).await?;
    let chosen: serde_json::Value = serde_json::from_str(&form.chosen)
        .map_err(|_| WebError::BadRequest("the chosen value is not readable".into()))?;
    let outcome = server_edit(&state, user, &case, move |file, at| {
        file.resolve_conflict(&conflict_id, &chosen, at)
    })
    .await;
    match outcome {
        Ok(_) => {}
        Err(EditError::Api(e)) => return Err(e.into()),
        Err(EditError::CaseFile(CaseFileError::UnknownConflict(_))) => {
            return Err(WebError::StaleConflict { case_id: case.id });
        }
        Err(EditError::CaseFile(CaseFileError::NotAConflictingValue)) => {
            return Err(WebError::BadRequest(
                "that value is not one of the conflicting values".into(),
            ));
        }
        Err(EditError::CaseFile(e)) => {
            return Err(WebError::Internal(format!("case {}: {e}", case.id)));
        }
    }
    tracing::info!(case = %case.id, by = %user.id, "conflict resolved in the web view");
    Ok(Redirect::to(&format!("/cases/{}?resolved=1#conflicts", case.id)).into_response())
}

/// `GET /cases/{case_id}/evidence/{sha256}`: an evidence file (thumbnails and downloads in the
/// case page), with the API's access rule and safe headers.
pub async fn evidence_file(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path((case_id, sha256)): Path<(String, String)>,
) -> Result<Response, WebError> {
    serve_file(&state, &signed_in.user, &case_id, &sha256)
        .await
        .map_err(|error| match error {
            EvidenceError::Api(api) => WebError::from(api),
            other => WebError::Internal(other.to_string()),
        })
}
