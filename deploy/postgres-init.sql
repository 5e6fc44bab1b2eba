-- One database per service, plus Keycloak's (docker compose only; the local launcher creates
-- the service databases itself and runs Keycloak on its dev-file store).
CREATE DATABASE patient_service;
CREATE DATABASE billing_service;
CREATE DATABASE analytics_service;
CREATE DATABASE appointment_service;
CREATE DATABASE notification_service;
CREATE DATABASE keycloak;
