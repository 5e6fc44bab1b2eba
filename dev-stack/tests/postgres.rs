//! The PostgreSQL launcher against the real server binaries.

use dev_stack::PgCluster;
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn test_cluster_serves_fresh_databases_with_password_auth() {
    let cluster = PgCluster::shared_for_tests();
    let url = cluster.fresh_database("launcher").await.unwrap();
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(one, 1);

    let wrong = url.replacen("postgres:test-", "postgres:wrong-", 1);
    assert!(PgConnection::connect(&wrong).await.is_err(), "a wrong password must be refused");

    let other = cluster.fresh_database("launcher").await.unwrap();
    assert_ne!(url, other, "every call yields a new database");
}
