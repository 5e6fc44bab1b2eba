//! The OpenAPI 3.1 description of appointment-service, generated from the handlers' annotations
//! and served at `/openapi.json` (the gateway merges it into `/api/openapi.json`).

use common::openapi::Shared;
use utoipa::OpenApi;

use super::{commands, queries};

#[derive(OpenApi)]
#[openapi(
    info(title = "appointment-service", description = "Appointment scheduling: commands on the write side, schedules from the read side."),
    paths(commands::book, commands::reschedule, commands::cancel, commands::check_in, commands::complete, commands::no_show,
          queries::read, queries::schedule, queries::upcoming),
    modifiers(&Shared),
    tags((name = "appointments", description = "Booking and the schedules"))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_described_with_its_problems() {
        let doc: serde_json::Value = serde_json::from_str(&ApiDoc::openapi().to_json().unwrap()).unwrap();
        let book = &doc["paths"]["/appointments"]["post"]["responses"];
        for status in ["201", "400", "401", "403", "409", "422"] {
            assert!(book[status].is_object(), "POST /appointments documents {status}");
        }
        assert!(doc["paths"]["/appointments/{id}/cancel"]["post"]["responses"]["412"].is_object());
        assert_eq!(doc["paths"].as_object().unwrap().len(), 9);
    }
}
