//! Validated patient data: the request DTOs are parsed into these types at the edge, so the rest
//! of the service only sees values that passed every rule of the contract.

mod fields;
mod patient;

pub use fields::{Address, BirthDate, PatientName};
pub use patient::{Patient, PatientInput, PatientRequest, PatientResponse, ValidPatient};

/// A UUID in its canonical hyphenated form only (as the API documents it), not the other forms
/// `uuid` also parses (simple, braced, URN).
pub fn parse_uuid(raw: &str) -> Option<uuid::Uuid> {
    (raw.len() == 36).then(|| uuid::Uuid::try_parse(raw).ok()).flatten()
}
