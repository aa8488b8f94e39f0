//! The first accounts: invented demo data (`--demo`), or one admin whose password is written
//! to a private file in the data folder. Nothing here names a real person or place.

use std::net::SocketAddr;
use std::path::PathBuf;

use chrono::Utc;
use doorstep_sync_core::records::CaseDetails;
use doorstep_sync_core::testing;

use crate::auth::jwt::write_private_file;
use crate::auth::password;
use crate::cases::{self, CaseError};
use crate::config::Config;
use crate::storage::{Role, School, Storage, StorageError, User};

/// The password of every demo account. Invented, printed on purpose: demo data only.
pub const DEMO_PASSWORD: &str = "doorstep-demo";
pub const DEMO_SCHOOL_ID: &str = "school-riverside";

/// The demo accounts: (username, display name, role).
pub const DEMO_USERS: [(&str, &str, Role); 5] = [
    ("admin", "Demo Admin", Role::Admin),
    ("lead", "Demo Attendance Lead", Role::SchoolAttendanceLead),
    (
        "dsl",
        "Demo Safeguarding Lead",
        Role::DesignatedSafeguardingLead,
    ),
    (
        "officer",
        "Demo Attendance Officer",
        Role::AttendanceOfficer,
    ),
    (
        "worker",
        "Demo Family Support Worker",
        Role::FamilySupportWorker,
    ),
];

/// The demo cases: (case id, reference, usernames allocated).
pub const DEMO_CASES: [(&str, &str, &[&str]); 3] = [
    ("case-demo-1", "ATT-DEMO-0001", &["officer"]),
    ("case-demo-2", "ATT-DEMO-0002", &["officer", "worker"]),
    ("case-demo-3", "ATT-DEMO-0003", &["worker"]),
];

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Case(#[from] CaseError),
    #[error(transparent)]
    Password(#[from] password::PasswordError),
    #[error("cannot write {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// How the first person signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstAccounts {
    /// The database already had accounts.
    Existing,
    Demo,
    /// A new `admin` whose password is in this file.
    Bootstrap {
        password_file: PathBuf,
    },
}

impl FirstAccounts {
    pub fn notice(&self, addr: SocketAddr) -> String {
        let mut text = format!(
            "Doorstep server listening on http://{addr}\n\
             Health: http://{addr}/health  Readiness: http://{addr}/ready\n\
             Sign in (and register a device): POST http://{addr}/api/v1/auth/sign-in \
             with {{\"username\", \"password\", \"device_name\", \"actor_id\"}}\n"
        );
        match self {
            FirstAccounts::Existing => text.push_str("Sign in with an existing account.\n"),
            FirstAccounts::Demo => {
                text.push_str("Demo mode: invented school, staff and cases.\n");
                for (username, name, role) in DEMO_USERS {
                    text.push_str(&format!("  {username:<8} {name} ({role})\n"));
                }
                text.push_str(&format!(
                    "  password for every demo account: {DEMO_PASSWORD}\n"
                ));
            }
            FirstAccounts::Bootstrap { password_file } => text.push_str(&format!(
                "First start: sign in as `admin` with the password in {} (readable by this \
                 user only); delete the file once you have it.\n",
                password_file.display()
            )),
        }
        text
    }
}

/// Creates the first accounts if the database has none.
pub async fn first_accounts(
    storage: &dyn Storage,
    config: &Config,
) -> Result<FirstAccounts, SeedError> {
    if storage.count_users().await? > 0 {
        return Ok(if config.demo {
            FirstAccounts::Demo
        } else {
            FirstAccounts::Existing
        });
    }
    if config.demo {
        seed_demo(storage).await?;
        return Ok(FirstAccounts::Demo);
    }
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let password_file = config.data_dir.join("initial-admin-password");
    write_private_file(&password_file, &format!("{secret}\n")).map_err(|source| {
        SeedError::File {
            path: password_file.display().to_string(),
            source,
        }
    })?;
    let now = Utc::now().timestamp_millis();
    storage
        .create_user(&User {
            id: uuid::Uuid::new_v4().to_string(),
            school_id: None,
            username: "admin".into(),
            display_name: "Administrator".into(),
            role: Role::Admin,
            password_hash: password::hash(secret).await?,
            created_at: now,
            disabled_at: None,
        })
        .await?;
    Ok(FirstAccounts::Bootstrap { password_file })
}

/// Seeds the invented school, its staff and workers, and three allocated cases.
pub async fn seed_demo(storage: &dyn Storage) -> Result<(), SeedError> {
    let now = Utc::now();
    let at = now.timestamp_millis();
    storage
        .create_school(&School {
            id: DEMO_SCHOOL_ID.into(),
            name: "Riverside Primary (invented)".into(),
            created_at: at,
        })
        .await?;
    for (username, display_name, role) in DEMO_USERS {
        storage
            .create_user(&User {
                id: format!("user-{username}"),
                school_id: Some(DEMO_SCHOOL_ID.into()),
                username: username.into(),
                display_name: display_name.into(),
                role,
                password_hash: password::hash(DEMO_PASSWORD.into()).await?,
                created_at: at,
                disabled_at: None,
            })
            .await?;
    }
    for (n, (case_id, reference, allocated)) in DEMO_CASES.into_iter().enumerate() {
        let details = CaseDetails {
            reference: reference.into(),
            lead_practitioner: "user-lead".into(),
            ..testing::case_details()
        };
        let child = testing::child(&format!("Invented Child {}", n + 1));
        cases::create_case(
            storage,
            case_id,
            DEMO_SCHOOL_ID,
            &details,
            "user-lead",
            now,
            |file| file.add(&child, now).map(|_| ()),
        )
        .await?;
        for username in allocated {
            storage
                .allocate(case_id, &format!("user-{username}"), at)
                .await?;
        }
    }
    Ok(())
}
