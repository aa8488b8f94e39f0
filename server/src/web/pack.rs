//! The evidence pack: one document per case holding everything a panel or a court asks for
//! (every contact attempt, visit, voice entry and evidence item with its hash, every amendment,
//! the attendance figures) and the Automerge change hashes, so that the pack can be checked
//! against the server's stored history. Built once as a neutral outline, then written as
//! print-ready HTML or as PDF, so the two never differ.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use maud::{DOCTYPE, html};

use super::pages::{CaseData, Item, case_data, field_text};
use super::render::{conflict_target, time, time_ms};
use super::session::SignedIn;
use super::{WebError, pdf};
use crate::access::{self, Need};
use crate::app::AppState;
use doorstep_sync_core::Collection;

/// A titled group of entries.
#[derive(Debug)]
pub struct Section {
    pub heading: String,
    pub entries: Vec<Entry>,
}

/// One record (or figure) as labelled lines.
#[derive(Debug)]
pub struct Entry {
    pub heading: String,
    pub lines: Vec<(String, String)>,
}

/// The pack as an outline: its title and sections.
#[derive(Debug)]
pub struct Pack {
    pub title: String,
    pub sections: Vec<Section>,
}

fn lines(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn item_entry(data: &CaseData, item: &Item) -> Entry {
    let mut out = lines(&[
        ("record", format!("{} {}", item.collection, item.id)),
        (
            "recorded by",
            format!(
                "{} on device {}",
                data.name_of(&item.author.user_id),
                item.author.device_id
            ),
        ),
        ("device time", time(item.device_time)),
        (
            "received by the server",
            item.received.as_ref().map_or("not recorded".into(), |r| {
                format!("{} in change {}", time_ms(r.at), r.change_hash)
            }),
        ),
    ]);
    if let Some(f) = &item.finalised {
        out.push((
            "finalised".into(),
            format!("{} by {}", time(f.at), data.name_of(&f.by.user_id)),
        ));
    }
    out.extend(item.fields.iter().cloned());
    if item.collection == Collection::Evidence {
        let receipts = data
            .evidence(&item.id)
            .and_then(|e| data.receipts.get(&e.sha256))
            .map(Vec::as_slice)
            .unwrap_or_default();
        if receipts.is_empty() {
            out.push((
                "receipt".into(),
                "none: the file has not been uploaded to the server; the hash above identifies it"
                    .into(),
            ));
        }
        for r in receipts {
            out.push((
                "receipt".into(),
                format!(
                    "{}: {} bytes of {} received {} from {} (device {}); Ed25519 signature {} \
                     (format {})",
                    r.id,
                    r.size,
                    r.media_type,
                    time_ms(r.received_at),
                    data.name_of(&r.user_id),
                    r.device_id,
                    r.signature,
                    crate::evidence::receipt::RECEIPT_FORMAT,
                ),
            ));
        }
    }
    for (a, received) in item.amendments.iter().zip(&item.amendments_received) {
        out.push((
            "amendment".into(),
            format!(
                "{}: {:?} to {:?}; reason: {}; by {} at {}; received {}",
                a.field,
                field_text(&a.original),
                field_text(&a.new),
                a.reason,
                data.name_of(&a.by.user_id),
                time(a.at),
                received
                    .as_ref()
                    .map_or("not recorded".into(), |r| time_ms(r.at))
            ),
        ));
    }
    Entry {
        heading: format!("{} ({})", item.title, time(item.when)),
        lines: out,
    }
}

fn timeline_section(data: &CaseData, heading: &str, collection: Collection) -> Section {
    Section {
        heading: heading.into(),
        entries: data
            .timeline
            .iter()
            .filter(|i| i.collection == collection)
            .map(|i| item_entry(data, i))
            .collect(),
    }
}

pub fn build(data: &CaseData) -> Pack {
    let d = &data.view.details;
    let mut sections = vec![Section {
        heading: "Case".into(),
        entries: vec![Entry {
            heading: format!("Case {}", d.reference),
            lines: lines(&[
                ("reference", d.reference.clone()),
                ("server case id", data.case.id.clone()),
                ("school", d.school_name.clone()),
                ("stage", d.stage.clone()),
                (
                    "status",
                    field_text(&serde_json::to_value(d.status).unwrap_or_default()),
                ),
                ("lead practitioner", data.name_of(&d.lead_practitioner)),
                (
                    "Early Help Assessment offered",
                    d.early_help_offered_on
                        .map_or("not recorded".into(), |x| x.to_string()),
                ),
                (
                    "consent to share",
                    d.consent_to_share.map_or("not yet asked".into(), |c| {
                        if c { "given".into() } else { "refused".into() }
                    }),
                ),
                ("pack generated", time(Utc::now())),
                ("document heads", data.heads.replace(',', " ")),
            ]),
        }],
    }];
    sections.push(Section {
        heading: "Attendance figures".into(),
        entries: data
            .attendance
            .iter()
            .map(|c| {
                let s = &c.summary;
                let window = c.penalty_windows.iter().max_by_key(|w| w.count());
                Entry {
                    heading: format!(
                        "{}{}",
                        c.name,
                        if c.subject_of_case { "" } else { " (sibling)" }
                    ),
                    lines: lines(&[
                        (
                            "attendance",
                            s.attendance_percent()
                                .map_or("no possible sessions".into(), |p| format!("{p:.1}%")),
                        ),
                        ("possible sessions", s.possible_sessions().to_string()),
                        ("present", s.present_sessions().to_string()),
                        (
                            "approved educational activity",
                            s.approved_activity_sessions().to_string(),
                        ),
                        ("authorised absence", s.authorised_absences().to_string()),
                        (
                            "unauthorised absence",
                            s.unauthorised_absences().to_string(),
                        ),
                        ("late", s.late_marks().to_string()),
                        (
                            "late after the register closed",
                            s.late_after_register_closed().to_string(),
                        ),
                        (
                            "persistent absence",
                            if s.is_persistent_absence() {
                                "yes".into()
                            } else {
                                "no".into()
                            },
                        ),
                        (
                            "severe absence",
                            if s.is_severe_absence() {
                                "yes".into()
                            } else {
                                "no".into()
                            },
                        ),
                        (
                            "penalty-notice threshold",
                            window.map_or("not met".into(), |w| {
                                format!(
                                    "met: {} sessions between {} and {}",
                                    w.count(),
                                    w.first_day,
                                    w.last_day
                                )
                            }),
                        ),
                    ]),
                }
            })
            .collect(),
    });
    let r = &data.readiness;
    let mut readiness: Vec<Entry> = r
        .items
        .iter()
        .map(|item| {
            let mut lines = vec![("detail".to_string(), item.detail.clone())];
            if !item.records.is_empty() {
                let records: Vec<String> = item
                    .records
                    .iter()
                    .map(|x| format!("{} {}", x.collection, x.id))
                    .collect();
                lines.push(("records".into(), records.join(", ")));
            }
            let status = if item.met { "met" } else { "missing" };
            Entry {
                heading: format!("{} [{status}]", item.title),
                lines,
            }
        })
        .collect();
    readiness.push(Entry {
        heading: "Six-month limit".into(),
        lines: lines(&[
            (
                "earliest usable unauthorised absence",
                r.earliest_usable_unauthorised_absence
                    .map_or("none".into(), |x| x.to_string()),
            ),
            (
                "last day to start a prosecution",
                r.prosecution_deadline.map_or("—".into(), |x| x.to_string()),
            ),
            (
                "days left",
                r.days_left_to_prosecute
                    .map_or("—".into(), |x| x.to_string()),
            ),
            (
                "unauthorised absences already out of time",
                r.unauthorised_absences_out_of_time.to_string(),
            ),
            ("as of", data.today.to_string()),
        ]),
    });
    sections.push(Section {
        heading: "Evidence readiness".into(),
        entries: readiness,
    });
    sections.push(timeline_section(
        data,
        "Contact attempts (letters, calls, texts, e-mails, meetings)",
        Collection::Contacts,
    ));
    sections.push(timeline_section(
        data,
        "Home visits (with every attempt at the door)",
        Collection::Visits,
    ));
    sections.push(timeline_section(
        data,
        "Pupil and parent voice",
        Collection::Voice,
    ));
    sections.push(timeline_section(
        data,
        "Evidence items",
        Collection::Evidence,
    ));
    sections.push(Section {
        heading: "People, plans and considerations".into(),
        entries: data
            .other_records
            .iter()
            .map(|i| item_entry(data, i))
            .collect(),
    });
    sections.push(Section {
        heading: "Amendments".into(),
        entries: data
            .timeline
            .iter()
            .chain(&data.other_records)
            .flat_map(|item| item.amendments.iter().map(move |a| (item, a)))
            .map(|(item, a)| Entry {
                heading: format!("{} {}: {}", item.collection, item.id, a.field),
                lines: lines(&[
                    ("original", field_text(&a.original)),
                    ("amended to", field_text(&a.new)),
                    ("reason", a.reason.clone()),
                    (
                        "by",
                        format!(
                            "{} on device {}",
                            data.name_of(&a.by.user_id),
                            a.by.device_id
                        ),
                    ),
                    ("at", time(a.at)),
                ]),
            })
            .collect(),
    });
    sections.push(Section {
        heading: "Conflicts: resolved and open".into(),
        entries: data
            .view
            .resolutions
            .iter()
            .map(|res| Entry {
                heading: format!("Resolved: {}, {}", conflict_target(&res.target), res.field),
                lines: lines(&[
                    ("kept", field_text(&res.chosen)),
                    (
                        "values that were in conflict",
                        res.alternatives
                            .iter()
                            .map(|v| field_text(&v.value))
                            .collect::<Vec<_>>()
                            .join(" | "),
                    ),
                    ("by", data.name_of(&res.by.user_id)),
                    ("at", time(res.at)),
                ]),
            })
            .chain(data.view.conflicts.iter().map(|c| {
                Entry {
                    heading: format!("Open: {}, {}", conflict_target(&c.target), c.field),
                    lines: lines(&[(
                        "values",
                        c.values
                            .iter()
                            .map(|v| field_text(&v.value))
                            .collect::<Vec<_>>()
                            .join(" | "),
                    )]),
                }
            }))
            .collect(),
    });
    sections.push(Section {
        heading: "Automerge changes stored by the server".into(),
        entries: vec![Entry {
            heading: format!(
                "{} changes, oldest first (hash: received, by, device, Automerge actor)",
                data.changes.len()
            ),
            lines: data
                .changes
                .iter()
                .map(|c| {
                    (
                        c.hash.clone(),
                        format!(
                            "{}, {}, {}, actor {}",
                            time_ms(c.received_at),
                            c.user_id
                                .as_deref()
                                .map_or("server".into(), |u| data.name_of(u)),
                            c.device_id.as_deref().unwrap_or("server"),
                            c.actor_id
                        ),
                    )
                })
                .collect(),
        }],
    });
    Pack {
        title: format!("Evidence pack: case {}", d.reference),
        sections,
    }
}

async fn pack_for(
    state: &AppState,
    signed_in: &SignedIn,
    case_id: &str,
) -> Result<(CaseData, Pack), WebError> {
    let case =
        access::case_for(state.storage.as_ref(), &signed_in.user, case_id, Need::Read).await?;
    let data = case_data(state, case, None).await?;
    let pack = build(&data);
    tracing::info!(case = %data.case.id, user = %signed_in.user.id, "evidence pack produced");
    Ok((data, pack))
}

/// `GET /cases/{case_id}/evidence-pack`: print-ready HTML.
pub async fn pack_html(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(case_id): Path<String>,
) -> Result<Response, WebError> {
    let (_, pack) = pack_for(&state, &signed_in, &case_id).await?;
    let page = html! {
        (DOCTYPE)
        html lang="en-GB" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (pack.title) }
                link rel="stylesheet" href="/static/style.css";
            }
            body.pack {
                h1 { (pack.title) }
                @for section in &pack.sections {
                    section {
                        h2 { (section.heading) }
                        @if section.entries.is_empty() { p { "None recorded." } }
                        @for entry in &section.entries {
                            article.record {
                                h3 { (entry.heading) }
                                dl { @for (k, v) in &entry.lines { dt { (k) } dd { (v) } } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page.into_response())
}

/// `GET /cases/{case_id}/evidence-pack.pdf`
pub async fn pack_pdf(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(case_id): Path<String>,
) -> Result<Response, WebError> {
    let (data, pack) = pack_for(&state, &signed_in, &case_id).await?;
    let bytes = pdf::render(&pack.title, &to_pdf_blocks(&pack));
    let filename = format!(
        "evidence-pack-{}.pdf",
        data.reference()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect::<String>()
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/pdf".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

fn to_pdf_blocks(pack: &Pack) -> Vec<pdf::Block> {
    let mut blocks = vec![pdf::Block::Title(pack.title.clone())];
    for section in &pack.sections {
        blocks.push(pdf::Block::Heading(section.heading.clone()));
        if section.entries.is_empty() {
            blocks.push(pdf::Block::Text("None recorded.".into()));
        }
        for entry in &section.entries {
            blocks.push(pdf::Block::Subheading(entry.heading.clone()));
            for (k, v) in &entry.lines {
                blocks.push(pdf::Block::Text(format!("{k}: {v}")));
            }
        }
    }
    blocks
}
