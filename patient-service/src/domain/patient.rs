//! The patient resource: request DTO, validated input, stored row and response body.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use common::email::Email;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::fields::{parse_date, Address, BirthDate, PatientName};

/// The JSON body of a create or update. Every field is optional here so that a missing field is
/// reported as a validation error naming it, not as a deserialisation failure.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"name": "Ann Example", "email": "ann@example.org", "address": "1 Main Street",
    "dateOfBirth": "1985-06-15", "registeredDate": "2024-01-10"}))]
pub struct PatientRequest {
    /// Required, at most 100 characters, no control or invisible formatting characters.
    #[schema(required, value_type = String, min_length = 1, max_length = 100, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub name: Option<String>,
    /// Required, one address in dot-atom form (`ann@example.org`, no quotes or brackets);
    /// unique across patients (case-insensitively).
    #[schema(required, value_type = String, format = "email", pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub email: Option<String>,
    /// Required, at most 500 characters, no control or invisible formatting characters.
    #[schema(required, value_type = String, min_length = 1, max_length = 500, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub address: Option<String>,
    /// Required, `YYYY-MM-DD`, a real date, not in the future, at most 150 years back.
    #[schema(required, value_type = String, format = "date", pattern = r"^\d{4}-\d{2}-\d{2}$")]
    pub date_of_birth: Option<String>,
    /// `YYYY-MM-DD`, not in the future, not before `dateOfBirth`; required on create; on update
    /// absent or null keeps the stored one (which must then not be before the new `dateOfBirth`).
    #[schema(value_type = Option<String>, format = "date", pattern = r"^\d{4}-\d{2}-\d{2}$")]
    pub registered_date: Option<String>,
}

/// A patient's fields after validation.
#[derive(Debug, Clone)]
pub struct ValidPatient {
    pub name: PatientName,
    pub email: Email,
    pub address: Address,
    pub date_of_birth: BirthDate,
    /// Always present on create; on update `None` keeps the stored date.
    pub registered_date: Option<NaiveDate>,
}

/// Which operation a body is validated for: only a create requires `registeredDate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatientInput {
    Create,
    Update,
}

impl PatientRequest {
    /// Checks every field and reports all failures at once, keyed by JSON field name.
    pub fn validate(&self, input: PatientInput, today: NaiveDate) -> Result<ValidPatient, BTreeMap<String, String>> {
        let mut errors = BTreeMap::new();
        let mut check = |field: &str, result: Result<(), &str>| {
            if let Err(msg) = result {
                errors.insert(field.to_owned(), msg.to_owned());
            }
        };
        let text = |v: &Option<String>| v.clone().unwrap_or_default();

        let name = PatientName::parse(&text(&self.name));
        let name_msg = name.as_ref().err().map(ToString::to_string);
        check("name", name_msg.as_deref().map_or(Ok(()), Err));
        let email = Email::parse(&text(&self.email));
        let email_msg = email.as_ref().err().map(ToString::to_string);
        check("email", email_msg.as_deref().map_or(Ok(()), Err));
        let address = Address::parse(&text(&self.address));
        check("address", address.as_ref().map(|_| ()).map_err(|e| *e));
        let dob = BirthDate::parse(&text(&self.date_of_birth), today);
        check("dateOfBirth", dob.map(|_| ()));
        let registered = match (&self.registered_date, input) {
            (None, PatientInput::Update) => Ok(None),
            (raw, _) => parse_date(&text(raw)).and_then(|date| match &dob {
                _ if date > today => Err("must not be in the future"),
                Ok(born) if date < born.date() => Err("must not be before dateOfBirth"),
                _ => Ok(Some(date)),
            }),
        };
        check("registeredDate", registered.map(|_| ()));

        match (name, email, address, dob, registered) {
            (Ok(name), Ok(email), Ok(address), Ok(date_of_birth), Ok(registered_date)) if errors.is_empty() => {
                Ok(ValidPatient { name, email, address, date_of_birth, registered_date })
            }
            _ => Err(errors),
        }
    }
}

/// A stored patient.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Patient {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub address: String,
    pub date_of_birth: NaiveDate,
    pub registered_date: NaiveDate,
    pub updated_at: DateTime<Utc>,
    /// 1 when created, +1 per update: the order of this patient's events.
    pub version: i64,
}

impl ValidPatient {
    /// The patient a create of `id` stores (`None` without a registered date, which only an
    /// update may omit).
    pub fn new_patient(&self, id: Uuid) -> Option<Patient> {
        Some(Patient {
            id,
            name: self.name.as_str().to_owned(),
            email: self.email.as_str().to_owned(),
            address: self.address.as_str().to_owned(),
            date_of_birth: self.date_of_birth.date(),
            registered_date: self.registered_date?,
            updated_at: Utc::now(),
            version: 1,
        })
    }
}

/// The JSON representation of a patient.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatientResponse {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub address: String,
    pub date_of_birth: NaiveDate,
    pub registered_date: NaiveDate,
}

impl From<Patient> for PatientResponse {
    fn from(p: Patient) -> Self {
        Self {
            id: p.id,
            name: p.name,
            email: p.email,
            address: p.address,
            date_of_birth: p.date_of_birth,
            registered_date: p.registered_date,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()
    }

    fn full() -> PatientRequest {
        PatientRequest {
            name: Some("Ann".into()),
            email: Some("ann@example.com".into()),
            address: Some("1 Main St".into()),
            date_of_birth: Some("1990-01-02".into()),
            registered_date: Some("2024-05-06".into()),
        }
    }

    #[test]
    fn a_complete_body_is_valid_for_create() {
        let p = full().validate(PatientInput::Create, today()).unwrap();
        assert_eq!(p.registered_date, NaiveDate::from_ymd_opt(2024, 5, 6));
    }

    #[test]
    fn an_empty_body_reports_every_field() {
        let errors = PatientRequest::default().validate(PatientInput::Create, today()).unwrap_err();
        let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(fields, ["address", "dateOfBirth", "email", "name", "registeredDate"]);
    }

    #[test]
    fn registered_date_is_optional_on_update_only() {
        let body = PatientRequest { registered_date: None, ..full() };
        assert_eq!(body.validate(PatientInput::Update, today()).unwrap().registered_date, None);
        let errors = body.validate(PatientInput::Create, today()).unwrap_err();
        assert!(errors.contains_key("registeredDate"));
    }

    #[test]
    fn one_bad_field_is_reported_alone() {
        let body = PatientRequest { email: Some("nope".into()), ..full() };
        let errors = body.validate(PatientInput::Create, today()).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors["email"], "must be a valid email address");
    }
}
