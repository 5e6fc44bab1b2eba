//! The OpenAPI 3.1 description of patient-service, generated from the handlers' annotations and
//! served at `/openapi.json` (the gateway merges it into `/api/openapi.json`).

use common::openapi::Shared;
use utoipa::OpenApi;

use super::{audit, patients};

#[derive(OpenApi)]
#[openapi(
    info(title = "patient-service", description = "Patients, their billing accounts and the audit trail of who touched them."),
    paths(patients::list, patients::read, patients::create, patients::update, patients::remove, patients::bill, audit::search),
    modifiers(&Shared),
    tags((name = "patients", description = "Patient records"), (name = "audit", description = "Who read or changed patient data"))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_its_problems_and_the_bearer_scheme() {
        let doc: serde_json::Value = serde_json::from_str(&ApiDoc::openapi().to_json().unwrap()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let create = &doc["paths"]["/patients"]["post"]["responses"];
        for status in ["201", "400", "401", "403", "409", "413", "415", "422", "500", "503"] {
            assert!(create[status].is_object(), "POST /patients documents {status}");
        }
        assert_eq!(create["400"]["content"]["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Problem");
        assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
        assert_eq!(doc["paths"].as_object().unwrap().len(), 4, "/patients, /patients/{{id}}, its bill, /audit");
    }
}
