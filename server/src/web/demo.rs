//! Invented casework for the demo and the web view's tests: visits (one where nobody
//! answered), letters and a call, pupil and parent voice, an evidence item, a finalised visit
//! with an amendment, register marks with unauthorised absences, and one open conflict (two
//! workers set the same field of a draft visit at once, on two phones).
//!
//! Nothing here names a real person or place.

use chrono::{DateTime, Datelike, Duration, Utc, Weekday};
use doorstep_sync_core::attendance::{AttendanceCode, Mark, Session};
use doorstep_sync_core::records::*;
use doorstep_sync_core::{ActorId, Author, CaseFile, CaseFileError, Collection, testing};

use crate::storage::{NewChange, Storage, StorageError, heads_key};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    CaseFile(#[from] CaseFileError),
    #[error("case {0} is missing or has no child")]
    NoCase(String),
    #[error("merging the second phone's changes failed: {0}")]
    Merge(String),
}

fn phone(user: &str) -> Author {
    Author {
        user_id: format!("user-{user}"),
        device_id: format!("demo-phone-{user}"),
    }
}

/// Applies `edit` to the stored case file (it may fork and merge replicas) and stores the new
/// changes under `user_id`, as a server-side edit.
pub async fn edit_stored_case(
    storage: &dyn Storage,
    case_id: &str,
    user_id: &str,
    edit: impl FnOnce(&mut CaseFile) -> Result<(), DemoError>,
) -> Result<(), DemoError> {
    let mut tx = storage.begin_sync().await?;
    let loaded = tx
        .load_documents("", &[case_id.to_string()])
        .await?
        .pop()
        .ok_or_else(|| DemoError::NoCase(case_id.into()))?;
    let author = Author {
        user_id: user_id.into(),
        device_id: "demo-phone".into(),
    };
    let mut file = CaseFile::load(&loaded.snapshot, author, ActorId::random())?;
    let before = file.heads();
    edit(&mut file)?;
    let changes: Vec<NewChange> = file
        .doc_mut()
        .get_changes(&before)
        .into_iter()
        .map(|mut change| NewChange::from_change(&mut change))
        .collect();
    let snapshot = file.save();
    let heads = heads_key(&file.heads());
    tx.write_server_change(
        case_id,
        (&snapshot, &heads),
        &changes,
        user_id,
        Utc::now().timestamp_millis(),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The weekdays of the last `weeks` weeks before `today`, oldest first.
fn school_days(today: DateTime<Utc>, weeks: i64) -> Vec<chrono::NaiveDate> {
    (1..=weeks * 7)
        .rev()
        .map(|n| (today - Duration::days(n)).date_naive())
        .filter(|d| !matches!(d.weekday(), Weekday::Sat | Weekday::Sun))
        .collect()
}

/// Adds the invented casework to a stored case (one with a child, as the demo cases have).
pub async fn add_demo_casework(storage: &dyn Storage, case_id: &str) -> Result<(), DemoError> {
    let now = Utc::now();
    let days_ago = |n: i64| now - Duration::days(n);
    edit_stored_case(storage, case_id, "user-officer", move |file| {
        file.set_author(phone("officer"), ActorId::random());
        let child_id = file
            .record_ids(Collection::Children)?
            .into_iter()
            .next()
            .ok_or_else(|| DemoError::NoCase(case_id.into()))?;
        let mut parent = testing::household_member("Invented Parent");
        parent.risks_to_staff = vec!["none known".into()];
        let parent_id = file.add(&parent, days_ago(40))?;

        // Register: Tuesdays and Thursdays unauthorised (O) for the last 12 weeks, the rest present.
        let code = |text: &str| AttendanceCode::parse(text);
        let mut marks = Vec::new();
        for date in school_days(now, 12) {
            let absent = matches!(date.weekday(), Weekday::Tue | Weekday::Thu);
            for (session, present) in [(Session::Am, code("/")), (Session::Pm, code("\\"))] {
                let mark = if absent { code("O") } else { present };
                if let Ok(mark) = mark {
                    marks.push(Mark::new(date, session, mark));
                }
            }
        }
        file.record_marks(&child_id, &marks, days_ago(1))?;

        file.add(&testing::letter(1, days_ago(35)), days_ago(35))?;
        let mut call = testing::letter(1, days_ago(30));
        call.kind = ContactKind::Call;
        call.letter_number = None;
        call.outcome = "no answer; voicemail left".into();
        file.add(&call, days_ago(30))?;
        file.add(&testing::letter(2, days_ago(12)), days_ago(12))?;

        let mut no_answer = testing::visit("user-officer", days_ago(28), 0);
        no_answer.outcome = VisitOutcome::CardLeft;
        no_answer.child_seen = false;
        no_answer.attempts = vec![ContactAttempt {
            at: days_ago(28),
            outcome: VisitOutcome::NoAnswer,
            note: Some("early call, before school; card left".into()),
        }];
        no_answer.discussed = String::new();
        no_answer.actions_agreed = String::new();
        let no_answer_id = file.add(&no_answer, days_ago(28))?;
        file.finalise(Collection::Visits, &no_answer_id, days_ago(28))?;

        let mut full = testing::visit("user-officer", days_ago(20), 0);
        full.discussed = "Mornings are hard; the child worries about the maths group.".into();
        full.adults_seen = vec![parent_id.clone()];
        let full_id = file.add(&full, days_ago(20))?;
        file.finalise(Collection::Visits, &full_id, days_ago(20))?;
        file.amend(
            Collection::Visits,
            &full_id,
            "actions_agreed",
            serde_json::json!("Walk to school together on Mondays and Wednesdays"),
            "Wednesday was agreed at the visit and left out of the note",
            days_ago(19),
        )?;

        let mut voice =
            testing::pupil_voice(&child_id, "I like art but not the big hall at lunch.");
        voice.feelings_about_prosecution = Some("Worried Mum would be upset.".into());
        voice.visit_id = Some(full_id.clone());
        file.add(&voice, days_ago(20))?;
        let mut parent_voice = testing::pupil_voice(&parent_id, "We want help with mornings.");
        parent_voice.speaker = Speaker::Parent;
        parent_voice.tool = VoiceTool::Conversation;
        parent_voice.scale_value = None;
        file.add(&parent_voice, days_ago(20))?;
        let mut drawing = testing::evidence("user-officer", days_ago(20));
        drawing.related_record = Some(RecordRef {
            collection: Collection::Visits,
            id: full_id,
        });
        file.add(&drawing, days_ago(20))?;

        // A draft visit note that two workers complete at once, on two phones.
        let draft_id = file.add(&testing::visit("user-officer", days_ago(2), 0), days_ago(2))?;
        let mut other = testing::replica(file, phone("worker"), ActorId::random())?;
        let mut mine = file.get::<HomeVisit>(&draft_id)?.body;
        mine.concerns = "Bedroom shared with two siblings; sleep is poor.".into();
        file.update(&draft_id, &mine, days_ago(1))?;
        let mut theirs = other.get::<HomeVisit>(&draft_id)?.body;
        theirs.concerns = "Sleep is poor since the move; family on the housing list.".into();
        other.update(&draft_id, &theirs, days_ago(1))?;
        file.doc_mut()
            .merge(other.doc_mut())
            .map_err(|e| DemoError::Merge(e.to_string()))?;
        Ok(())
    })
    .await
}

/// Adds an evidence record for `file` (an invented drawing, as an image) to a case, captured on
/// the officer's phone, so that uploading the same bytes shows it in the web view.
pub async fn add_demo_drawing(
    storage: &dyn Storage,
    case_id: &str,
    file: &[u8],
    media_type: &str,
) -> Result<String, DemoError> {
    use sha2::{Digest, Sha256};
    let sha256 = hex::encode(Sha256::digest(file));
    let at = Utc::now() - Duration::days(3);
    let mut drawing = testing::evidence("user-officer", at);
    drawing.sha256.clone_from(&sha256);
    drawing.size_bytes = file.len() as u64;
    drawing.media_type = media_type.into();
    drawing.description = "my house, drawn at the kitchen table".into();
    edit_stored_case(storage, case_id, "user-officer", move |case| {
        case.set_author(phone("officer"), ActorId::random());
        case.add(&drawing, at)?;
        Ok(())
    })
    .await?;
    Ok(sha256)
}
