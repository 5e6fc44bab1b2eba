//! The migrations on a cluster shared with other databases: the runtime role is cluster-wide.

use std::borrow::Cow;

use common::db::DbArgs;
use dev_stack::PgCluster;
use sqlx::migrate::Migrator;

#[tokio::test]
async fn databases_of_one_cluster_migrated_at_once_all_get_the_runtime_role() {
    // A cluster of its own, so the role does not exist yet.
    let cluster = PgCluster::start_ephemeral().unwrap();
    // Every database first brought to just before the migration that creates the role, so the
    // concurrent runs below all reach it at the same moment.
    let creates_role = patient_service::MIGRATOR.migrations.iter().position(|m| m.sql.contains("CREATE ROLE")).unwrap();
    let before =
        Migrator { migrations: Cow::Owned(patient_service::MIGRATOR.migrations[..creates_role].to_vec()), ..Migrator::DEFAULT };
    let mut urls = Vec::new();
    for _ in 0..12 {
        let url = cluster.fresh_database("patients").await.unwrap();
        DbArgs::from_url(&url).connect_and_migrate(&before).await.unwrap();
        urls.push(url);
    }
    let migrations = urls.iter().map(|url| async move {
        DbArgs::from_url(url).connect_and_migrate_as(&patient_service::MIGRATOR, Some(patient_service::RUNTIME_ROLE)).await
    });
    for result in futures::future::join_all(migrations).await {
        let pool = result.expect("every database migrates");
        let role: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&pool).await.unwrap();
        assert_eq!(role, patient_service::RUNTIME_ROLE);
    }
}
