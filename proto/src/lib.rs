//! The wire contracts of the platform, generated from `proto/*.proto`.
//!
//! - [`billing`]: the `BillingService` gRPC API (no proto package, path `/BillingService/<Method>`).
//! - [`events`]: `patient.events.PatientEvent`, the value of records on the Kafka topic `patient`.
//! - [`appointments`]: `appointment.events.AppointmentEvent`, on the topic `appointment`.

/// gRPC billing contract (the proto file has no package, hence the `_` module name).
pub mod billing {
    tonic::include_proto!("_");
}

/// Events published on the `patient` topic.
pub mod events {
    tonic::include_proto!("patient.events");
}

/// Events published on the `appointment` topic.
pub mod appointments {
    tonic::include_proto!("appointment.events");
}

/// Encoded `FileDescriptorSet` of every contract, served by gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");

/// The `event_type` values of [`events::PatientEvent`].
pub mod event_type {
    pub const PATIENT_CREATED: &str = "PATIENT_CREATED";
    pub const PATIENT_UPDATED: &str = "PATIENT_UPDATED";
    pub const PATIENT_DELETED: &str = "PATIENT_DELETED";
}

/// The `event_type` values of [`appointments::AppointmentEvent`].
pub mod appointment_event_type {
    pub const BOOKED: &str = "APPOINTMENT_BOOKED";
    pub const RESCHEDULED: &str = "APPOINTMENT_RESCHEDULED";
    pub const CANCELLED: &str = "APPOINTMENT_CANCELLED";
    pub const CHECKED_IN: &str = "APPOINTMENT_CHECKED_IN";
    pub const COMPLETED: &str = "APPOINTMENT_COMPLETED";
    pub const NO_SHOW: &str = "APPOINTMENT_NO_SHOW";
}

/// The `cancel_reason` values of [`appointments::AppointmentEvent`].
pub mod cancel_reason {
    /// A caller cancelled it.
    pub const REQUESTED: &str = "REQUESTED";
    /// Its patient was deleted.
    pub const PATIENT_DELETED: &str = "PATIENT_DELETED";
}
