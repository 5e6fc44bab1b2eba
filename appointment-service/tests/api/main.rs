//! appointment-service through its REST interface, on a real PostgreSQL (a fresh database per
//! test), a real Kafka (topics of its own per test) and the real Keycloak's tokens.

mod commands;
mod helpers;
mod queries;
mod replica;
