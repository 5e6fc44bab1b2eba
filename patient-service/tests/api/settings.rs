//! The binary's command line: help text never shows a secret taken from the environment.

use std::process::Command;

#[test]
fn help_does_not_print_secret_environment_values() {
    let out = Command::new(env!("CARGO_BIN_EXE_patient-service"))
        .arg("--help")
        .env("DATABASE_URL", "postgres://svc:hunter2-db-password@db.internal:5432/patients")
        .env("OIDC_CLIENT_SECRET", "hunter3-client-secret")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("DATABASE_URL") && help.contains("OIDC_CLIENT_SECRET"), "the variables are documented: {help}");
    assert!(!help.contains("hunter2") && !help.contains("hunter3"), "secret printed by --help: {help}");
}
