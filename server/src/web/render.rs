//! HTML templates (maud: every interpolated value is escaped, so whatever a user wrote is
//! shown as text). No script anywhere; one stylesheet, served by us.

use chrono::{DateTime, TimeZone, Utc};
use maud::{DOCTYPE, Markup, html};

use super::pages::{CaseData, Item, anchor};
use super::session::SignedIn;
use crate::evidence::api::INLINE_IMAGE_TYPES;
use doorstep_sync_core::ConflictTarget;

pub fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

pub fn time_ms(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map_or_else(|| ms.to_string(), time)
}

pub fn layout(title: &str, signed_in: Option<&SignedIn>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en-GB" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Doorstep" }
                link rel="stylesheet" href="/static/style.css";
            }
            body {
                header.top {
                    a.brand href="/cases" { "Doorstep" }
                    @if let Some(s) = signed_in {
                        span.who { (s.user.display_name) }
                        form.inline method="post" action="/sign-out" {
                            input type="hidden" name="csrf" value=(s.session.csrf_token);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn error_page(message: &str, back: &str) -> Markup {
    layout(
        "Problem",
        None,
        html! {
            h1 { "Sorry" }
            p.notice.bad role="alert" { (message) }
            p { a href=(back) { "Go back" } }
        },
    )
}

pub fn sign_in_page(csrf: &str, message: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(message) = message { p.notice.bad role="alert" { (message) } }
            form.signin method="post" action="/sign-in" {
                input type="hidden" name="csrf" value=(csrf);
                label for="username" { "Username" }
                input #username name="username" autocomplete="username" required;
                label for="password" { "Password" }
                input #password name="password" type="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// One row of the caseload.
#[derive(Debug)]
pub struct CaseloadRow {
    pub data: CaseData,
    pub allocated: bool,
    pub last_viewed: Option<i64>,
}

fn attendance_cell(data: &CaseData) -> Markup {
    html! {
        @for child in data.attendance.iter().filter(|c| c.subject_of_case) {
            div {
                @match child.summary.attendance_percent() {
                    Some(p) => { strong { (format!("{p:.1}%")) } }
                    None => { span.muted { "no marks" } }
                }
                @if child.summary.is_severe_absence() { " " span.badge.bad { "severe absence" } }
                @else if child.summary.is_persistent_absence() { " " span.badge.warn { "persistent absence" } }
            }
        }
    }
}

fn penalty_cell(data: &CaseData) -> Markup {
    let windows: Vec<_> = data
        .attendance
        .iter()
        .filter(|c| c.subject_of_case)
        .flat_map(|c| c.penalty_windows.iter())
        .collect();
    html! {
        @match windows.iter().max_by_key(|w| w.count()) {
            Some(w) => { span.badge.bad { "threshold met" } " " (w.count()) " sessions, " (w.first_day) " to " (w.last_day) }
            None => { span.muted { "not met" } }
        }
    }
}

pub fn caseload_page(signed_in: &SignedIn, rows: &[CaseloadRow]) -> Markup {
    layout(
        "My caseload",
        Some(signed_in),
        html! {
            h1 { "My caseload" }
            @if rows.is_empty() { p { "No cases are allocated to you." } }
            @else {
                div.scroll {
                table.caseload {
                    thead { tr {
                        th { "Case" } th { "Stage" } th { "Attendance" } th { "Penalty-notice threshold" }
                        th { "Last contact" } th { "Open conflicts" } th { "New records and amendments since my last visit" }
                    } }
                    tbody {
                        @for row in rows {
                            @let d = &row.data;
                            tr {
                                td {
                                    a href=(format!("/cases/{}", d.case.id)) { (d.reference()) }
                                    @if row.allocated { " " span.badge { "mine" } }
                                }
                                td { (d.view.details.stage) }
                                td { (attendance_cell(d)) }
                                td { (penalty_cell(d)) }
                                td { @match d.last_contact() { Some(at) => (time(at)), None => span.muted { "none" } } }
                                td { @if d.view.conflicts.is_empty() { "0" } @else { span.badge.warn { (d.view.conflicts.len()) } } }
                                td {
                                    @if row.last_viewed.is_none() { span.muted { "not opened yet" } }
                                    @else if d.new_records() == 0 { "0" }
                                    @else { span.badge.new { (d.new_records()) " new" } }
                                }
                            }
                        }
                    }
                }
                }
            }
        },
    )
}

fn provenance_line(data: &CaseData, item: &Item) -> Markup {
    html! {
        p.meta {
            "By " (data.name_of(&item.author.user_id)) " on device " code { (item.author.device_id) }
            " · device time " (time(item.device_time))
            " · received "
            @match &item.received {
                Some(r) => { (time_ms(r.at)) " (change " code.hash { (short(&r.change_hash)) } ")" }
                None => { span.muted { "not recorded" } }
            }
        }
    }
}

pub fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn amendment_trail(data: &CaseData, item: &Item) -> Markup {
    html! {
        @if let Some(f) = &item.finalised {
            p.meta { "Finalised by " (data.name_of(&f.by.user_id)) " at " (time(f.at)) }
        }
        @if !item.amendments.is_empty() {
            table.trail {
                caption { "Amendment trail" }
                thead { tr { th { "Field" } th { "Original" } th { "Amended to" } th { "Reason" } th { "By, when" } } }
                tbody {
                    @for (a, received) in item.amendments.iter().zip(&item.amendments_received) {
                        tr {
                            td { (a.field.replace('_', " ")) }
                            td { (super::pages::field_text(&a.original)) }
                            td { (super::pages::field_text(&a.new)) }
                            td { (a.reason) }
                            td {
                                (data.name_of(&a.by.user_id)) ", " (time(a.at))
                                @if let Some(r) = received { "; received " (time_ms(r.at)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn record_card(data: &CaseData, item: &Item) -> Markup {
    html! {
        article.record id=(item.anchor()) {
            h3 {
                (item.title)
                @if item.new_since_last_view { " " span.badge.new { "new" } }
                @if item.finalised.is_some() { " " span.badge { "finalised" } }
            }
            p.when { (time(item.when)) }
            (provenance_line(data, item))
            @if item.collection == doorstep_sync_core::Collection::Evidence {
                (evidence_file(data, item))
            }
            dl {
                @for (key, value) in &item.fields {
                    dt { (key) } dd { (value) }
                }
            }
            (amendment_trail(data, item))
        }
    }
}

/// An evidence item's file: a thumbnail (images) or a download link, and the server's signed
/// receipts; or a note that the file has not reached the server.
fn evidence_file(data: &CaseData, item: &Item) -> Markup {
    let Some(evidence) = data.evidence(&item.id) else {
        return html! {};
    };
    let Some(receipts) = data.receipts.get(&evidence.sha256) else {
        return html! {
            div.thumb { "No file stored on the server yet: metadata and hash only." }
        };
    };
    let url = data.evidence_url(&evidence.sha256);
    let image = INLINE_IMAGE_TYPES.contains(&evidence.media_type.as_str());
    html! {
        div.evidence-file {
            @if image {
                a href=(url) {
                    img.thumb src=(url) loading="lazy" width="160"
                        alt=(format!("Evidence file {}", short(&evidence.sha256)));
                }
            } @else {
                a.button href=(url) download { "Download the file (" (evidence.media_type) ")" }
            }
            ul.receipts {
                @for r in receipts {
                    li {
                        "Receipt " code { (short(&r.id)) } ": received " (time_ms(r.received_at))
                        " from " (data.name_of(&r.user_id)) " on device " code { (short(&r.device_id)) }
                        ", " (r.size) " bytes, signed " code { (short(&r.signature)) }
                    }
                }
            }
        }
    }
}

fn readiness_panel(data: &CaseData) -> Markup {
    let r = &data.readiness;
    html! {
        section #readiness {
            h2 { "Evidence readiness" }
            p {
                @match (r.earliest_usable_unauthorised_absence, r.prosecution_deadline, r.days_left_to_prosecute) {
                    (Some(first), Some(deadline), Some(days)) => {
                        strong { (days) " days left" } " to start a prosecution relying on the unauthorised absence of "
                        (first) " (6-month limit: " (deadline) ")."
                    }
                    _ => { "No unauthorised absence within the 6-month limit." }
                }
                @if r.unauthorised_absences_out_of_time > 0 {
                    " " (r.unauthorised_absences_out_of_time) " unauthorised absences are already out of time."
                }
            }
            ul.checklist {
                @for item in &r.items {
                    li class=(if item.met { "met" } else { "missing" }) {
                        span.badge class=(if item.met { "ok" } else { "bad" }) { @if item.met { "met" } @else { "missing" } }
                        " " strong { (item.title) } br;
                        (item.detail)
                        @if !item.records.is_empty() {
                            br;
                            @for (n, record) in item.records.iter().enumerate() {
                                @if n > 0 { ", " }
                                a href=(format!("#{}", anchor(record.collection, &record.id))) {
                                    (record.collection) " " (short(&record.id))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn attendance_table(data: &CaseData) -> Markup {
    html! {
        div.scroll {
        table.figures {
            thead { tr {
                th { "Child" } th { "Attendance" } th { "Possible" } th { "Present" } th { "Approved activity" }
                th { "Authorised" } th { "Unauthorised" } th { "Late" } th { "Late after close" } th { "Penalty-notice threshold" }
            } }
            tbody {
                @for c in &data.attendance {
                    @let s = &c.summary;
                    tr {
                        td { (c.name) @if !c.subject_of_case { " (sibling)" } }
                        td {
                            @match s.attendance_percent() { Some(p) => (format!("{p:.1}%")), None => "—" }
                            @if s.is_severe_absence() { " " span.badge.bad { "severe" } }
                            @else if s.is_persistent_absence() { " " span.badge.warn { "persistent" } }
                        }
                        td { (s.possible_sessions()) } td { (s.present_sessions()) } td { (s.approved_activity_sessions()) }
                        td { (s.authorised_absences()) } td { (s.unauthorised_absences()) } td { (s.late_marks()) }
                        td { (s.late_after_register_closed()) }
                        td {
                            @match c.penalty_windows.iter().max_by_key(|w| w.count()) {
                                Some(w) => { "met: " (w.count()) " sessions, " (w.first_day) " to " (w.last_day) }
                                None => "not met",
                            }
                        }
                    }
                }
            }
        }
        }
    }
}

pub fn conflict_target(target: &ConflictTarget) -> String {
    match target {
        ConflictTarget::Case => "case details".into(),
        ConflictTarget::Attendance => "register mark".into(),
        ConflictTarget::Record { collection, id } => format!("{collection} {}", short(id)),
    }
}

fn conflicts_section(signed_in: &SignedIn, data: &CaseData) -> Markup {
    let case_id = &data.case.id;
    html! {
        section #conflicts {
            h2 { "Open conflicts" }
            @if data.view.conflicts.is_empty() { p { "None." } }
            @for conflict in &data.view.conflicts {
                article.conflict {
                    h3 {
                        @if let ConflictTarget::Record { collection, id } = &conflict.target {
                            a href=(format!("#{}", anchor(*collection, id))) { (conflict_target(&conflict.target)) }
                        } @else { (conflict_target(&conflict.target)) }
                        ": " (conflict.field.replace('_', " "))
                    }
                    p.meta { "Two people set this at once; choose the value to keep. Both stay in the record of the resolution." }
                    ul {
                        @for value in &conflict.values {
                            li {
                                q { (super::pages::field_text(&value.value)) }
                                " set by "
                                @match &value.set_by { Some(a) => (data.name_of(&a.user_id)), None => "an unknown device" }
                                form.inline method="post" action=(format!("/cases/{case_id}/conflicts/{}/resolve", conflict.id)) {
                                    input type="hidden" name="csrf" value=(signed_in.session.csrf_token);
                                    input type="hidden" name="chosen" value=(value.value.to_string());
                                    button type="submit" { "Keep this value" }
                                }
                            }
                        }
                    }
                }
            }
            @if !data.view.resolutions.is_empty() {
                h3 { "Resolved" }
                ul {
                    @for r in &data.view.resolutions {
                        li {
                            (conflict_target(&r.target)) ", " (r.field.replace('_', " ")) ": kept "
                            q { (super::pages::field_text(&r.chosen)) } " (" (r.alternatives.len()) " values), by "
                            (data.name_of(&r.by.user_id)) ", " (time(r.at))
                        }
                    }
                }
            }
        }
    }
}

pub fn case_page(
    signed_in: &SignedIn,
    data: &CaseData,
    last_viewed: Option<i64>,
    notice: Option<&str>,
) -> Markup {
    let d = &data.view.details;
    let case_id = &data.case.id;
    layout(
        d.reference.as_str(),
        Some(signed_in),
        html! {
            @if let Some(notice) = notice { p.notice.good role="status" { (notice) } }
            h1 { "Case " (d.reference) }
            p.meta {
                (d.school_name) " · stage " strong { (d.stage) } " · " (super::pages::field_text(&serde_json::to_value(d.status).unwrap_or_default()).replace('_', " "))
                " · lead practitioner " (data.name_of(&d.lead_practitioner))
            }
            p.meta {
                @match last_viewed { Some(at) => { "You last opened this case " (time_ms(at)) "." }, None => "First time you open this case." }
            }
            nav.actions {
                a.button href=(format!("/cases/{case_id}/evidence-pack")) { "Evidence pack (print)" }
                a.button href=(format!("/cases/{case_id}/evidence-pack.pdf")) download { "Evidence pack (PDF)" }
                a href="#readiness" { "Readiness" } a href="#attendance" { "Attendance" }
                a href="#conflicts" { "Conflicts (" (data.view.conflicts.len()) ")" } a href="#timeline" { "Timeline" }
            }
            (readiness_panel(data))
            section #attendance { h2 { "Attendance" } (attendance_table(data)) }
            (conflicts_section(signed_in, data))
            section #timeline {
                h2 { "Timeline" }
                p.meta { "Visits, contacts, pupil and parent voice, and evidence; newest first." }
                @for item in data.timeline.iter().rev() { (record_card(data, item)) }
            }
            section #records {
                h2 { "People, plans and considerations" }
                @for item in &data.other_records { (record_card(data, item)) }
            }
        },
    )
}
