//! The wire contracts of the platform, generated from `proto/*.proto`.
//!
//! - [`billing`]: the `BillingService` gRPC API (no proto package, path `/BillingService/<Method>`).
//! - [`events`]: `patient.events.PatientEvent`, the value of records on the Kafka topic `patient`.

/// gRPC billing contract (the proto file has no package, hence the `_` module name).
pub mod billing {
    tonic::include_proto!("_");
}

/// Events published on the `patient` topic.
pub mod events {
    tonic::include_proto!("patient.events");
}

/// Encoded `FileDescriptorSet` of every contract, served by gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");

/// The `event_type` values of [`events::PatientEvent`].
pub mod event_type {
    pub const PATIENT_CREATED: &str = "PATIENT_CREATED";
    pub const PATIENT_UPDATED: &str = "PATIENT_UPDATED";
    pub const PATIENT_DELETED: &str = "PATIENT_DELETED";
}
