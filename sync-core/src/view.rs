//! The whole case file as typed records: what the staff API returns and the web view shows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::attendance::Mark;
use crate::case_file::{Author, CaseFile, Record};
use crate::conflicts::{Conflict, Resolution};
use crate::error::Result;
use crate::records::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseView {
    pub case_id: Option<String>,
    pub schema_version: Option<u64>,
    pub details: CaseDetails,
    pub children: Vec<Record<Child>>,
    pub household: Vec<Record<HouseholdMember>>,
    pub visits: Vec<Record<HomeVisit>>,
    pub voice: Vec<Record<VoiceEntry>>,
    pub evidence: Vec<Record<EvidenceItem>>,
    pub contacts: Vec<Record<ContactEntry>>,
    pub targets: Vec<Record<Target>>,
    pub contracts: Vec<Record<ParentingContract>>,
    pub stage_changes: Vec<Record<StageChange>>,
    pub considerations: Vec<Record<Consideration>>,
    /// Register marks by child id, in date order.
    pub attendance: BTreeMap<String, Vec<Mark>>,
    pub conflicts: Vec<Conflict>,
    pub resolutions: Vec<Resolution>,
    /// Who each Automerge actor in the document is.
    pub actors: BTreeMap<String, Author>,
}

impl CaseFile {
    /// Reads the whole case file. A record that fails its type is an error naming it: the
    /// server refuses such documents, so this only happens to a corrupted store.
    pub fn view(&self) -> Result<CaseView> {
        let children = self.list::<Child>()?;
        let attendance = children
            .iter()
            .map(|child| Ok((child.id.clone(), self.marks(&child.id)?)))
            .collect::<Result<_>>()?;
        Ok(CaseView {
            case_id: self.case_id(),
            schema_version: self.schema_version(),
            details: self.details()?,
            children,
            household: self.list()?,
            visits: self.list()?,
            voice: self.list()?,
            evidence: self.list()?,
            contacts: self.list()?,
            targets: self.list()?,
            contracts: self.list()?,
            stage_changes: self.list()?,
            considerations: self.list()?,
            attendance,
            conflicts: self.conflicts()?,
            resolutions: self.resolutions()?,
            actors: self.actors(),
        })
    }
}
