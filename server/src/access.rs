//! Need-to-know: who may see and who may manage a case. Every staff endpoint asks here; sync
//! is narrower still (a device syncs only the cases allocated to its user).
//!
//! - Family support workers and attendance officers see the cases allocated to them.
//! - School attendance leads and designated safeguarding leads see every case of their school
//!   (and any allocated to them), and manage (create, allocate) their school's cases.
//! - Admins see and manage every case.
//!
//! A case the caller may not see is answered exactly like a case that does not exist.

use crate::error::ApiError;
use crate::storage::{Case, Role, Storage, User};

/// What the caller wants to do with a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Manage,
}

pub fn can_manage_school(user: &User, school_id: &str) -> bool {
    match user.role {
        Role::Admin => true,
        Role::SchoolAttendanceLead | Role::DesignatedSafeguardingLead => {
            user.school_id.as_deref() == Some(school_id)
        }
        Role::FamilySupportWorker | Role::AttendanceOfficer => false,
    }
}

fn can_read(user: &User, case: &Case, allocated: bool) -> bool {
    allocated || can_manage_school(user, &case.school_id)
}

/// The case, if `user` may do `need` with it: 404 when they may not even see it, 403 when
/// they may see but not manage it.
pub async fn case_for(
    storage: &dyn Storage,
    user: &User,
    case_id: &str,
    need: Need,
) -> Result<Case, ApiError> {
    let case = storage.case(case_id).await?.ok_or(ApiError::NotFound)?;
    let allocated = storage
        .allocated_case_ids(&user.id)
        .await?
        .iter()
        .any(|id| id == case_id);
    if !can_read(user, &case, allocated) {
        return Err(ApiError::NotFound);
    }
    if need == Need::Manage && !can_manage_school(user, &case.school_id) {
        return Err(ApiError::Forbidden);
    }
    Ok(case)
}

/// Every case `user` may see, in id order.
pub async fn visible_cases(storage: &dyn Storage, user: &User) -> Result<Vec<Case>, ApiError> {
    let mut cases = match (user.role, user.school_id.as_deref()) {
        (Role::Admin, _) => storage.list_cases(None).await?,
        (Role::SchoolAttendanceLead | Role::DesignatedSafeguardingLead, Some(school)) => {
            storage.list_cases(Some(school)).await?
        }
        _ => Vec::new(),
    };
    for case_id in storage.allocated_case_ids(&user.id).await? {
        if !cases.iter().any(|c| c.id == case_id)
            && let Some(case) = storage.case(&case_id).await?
        {
            cases.push(case);
        }
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(cases)
}
