//! gateway: the API entry point. This first slice serves only its health endpoint; token
//! verification, role rules and proxying arrive with the gateway's own issue.
