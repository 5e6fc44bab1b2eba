//! Validated inputs of the billing API (parse, don't validate).

use common::{email::Email, name::PersonName};
use uuid::Uuid;

use crate::Error;

/// A `BillingRequest` whose fields were all checked.
#[derive(Debug)]
pub struct NewAccount {
    pub patient_id: Uuid,
    pub name: PersonName,
    pub email: Email,
}

pub fn parse_patient_id(raw: &str) -> Result<Uuid, Error> {
    if raw.trim().is_empty() {
        return Err(Error::InvalidArgument("patientId is required".into()));
    }
    Uuid::parse_str(raw.trim()).map_err(|_| Error::InvalidArgument("patientId must be a UUID".into()))
}

impl TryFrom<proto::billing::BillingRequest> for NewAccount {
    type Error = Error;

    fn try_from(req: proto::billing::BillingRequest) -> Result<Self, Error> {
        let patient_id = parse_patient_id(&req.patient_id)?;
        let name = PersonName::parse(&req.name).map_err(|e| Error::InvalidArgument(format!("name {e}")))?;
        let email = Email::parse(&req.email).map_err(|e| Error::InvalidArgument(format!("email {e}")))?;
        Ok(Self { patient_id, name, email })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::billing::BillingRequest;

    fn req(id: &str, name: &str, email: &str) -> BillingRequest {
        BillingRequest { patient_id: id.into(), name: name.into(), email: email.into() }
    }

    #[test]
    fn accepts_a_complete_request() {
        let id = Uuid::new_v4();
        let acc = NewAccount::try_from(req(&id.to_string(), " Ann ", "ann@example.com")).unwrap();
        assert_eq!((acc.patient_id, acc.name.as_str()), (id, "Ann"));
    }

    #[test]
    fn rejects_each_bad_field_with_its_name() {
        let id = Uuid::new_v4().to_string();
        for (r, field) in [
            (req("", "Ann", "ann@example.com"), "patientId"),
            (req("not-a-uuid", "Ann", "ann@example.com"), "patientId"),
            (req(&id, " ", "ann@example.com"), "name"),
            (req(&id, &"x".repeat(101), "ann@example.com"), "name"),
            (req(&id, "Ann\u{0}", "ann@example.com"), "name"),
            (req(&id, "Ann", "nope"), "email"),
        ] {
            match NewAccount::try_from(r) {
                Err(Error::InvalidArgument(msg)) => assert!(msg.starts_with(field), "{msg}"),
                other => panic!("expected InvalidArgument for {field}, got {other:?}"),
            }
        }
    }
}
