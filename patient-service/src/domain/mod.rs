//! Validated patient data: the request DTOs are parsed into these types at the edge, so the rest
//! of the service only sees values that passed every rule of the contract.

mod fields;
mod patient;

pub use fields::{Address, BirthDate, PatientName};
pub use patient::{Patient, PatientInput, PatientRequest, PatientResponse, ValidPatient};

pub use common::extract::canonical_uuid as parse_uuid;
