//! GET /patients: pagination, totals, links, filters; and the demo data.

use serde_json::Value;

use crate::helpers::{assert_problem, patient_body, TestApp};

async fn create_many(app: &TestApp, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(20) {
        futures::future::join_all(chunk.iter().map(|i| async move { app.create_patient(&patient_body(*i)).await })).await;
    }
}

fn rels(link: &str) -> Vec<(String, String)> {
    link.split(", ")
        .map(|part| {
            let (url, rel) = part.split_once("; ").unwrap();
            (rel.trim_start_matches("rel=").trim_matches('"').to_owned(), url.trim_matches(['<', '>']).to_owned())
        })
        .collect()
}

#[tokio::test]
async fn list_paginates_120_patients_into_50_50_20_with_totals_and_links() {
    let app = TestApp::spawn().await;
    create_many(&app, 120).await;

    let mut seen = std::collections::HashSet::new();
    for (page, expected, expected_rels) in [
        (0, 50, vec!["first", "next", "last"]),
        (1, 50, vec!["first", "prev", "next", "last"]),
        (2, 20, vec!["first", "prev", "last"]),
    ] {
        let resp = app.client.get(app.url(&format!("/patients?page={page}&size=50"))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-total-count"], "120");
        let links = rels(resp.headers()["link"].to_str().unwrap());
        assert_eq!(links.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(), expected_rels, "page {page}");
        assert!(links.contains(&("last".into(), "/patients?page=2&size=50".into())));
        if page == 1 {
            assert!(links.contains(&("next".into(), "/patients?page=2&size=50".into())));
            assert!(links.contains(&("prev".into(), "/patients?page=0&size=50".into())));
        }
        let body: Vec<Value> = resp.json().await.unwrap();
        assert_eq!(body.len(), expected, "page {page}");
        seen.extend(body.into_iter().map(|p| p["id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(seen.len(), 120, "pages are disjoint and cover everything");

    let default: Vec<Value> = app.client.get(app.url("/patients")).send().await.unwrap().json().await.unwrap();
    assert_eq!(default.len(), 50, "default size is 50");
}

#[tokio::test]
async fn list_filters_by_name_substring_and_email_case_insensitively() {
    let app = TestApp::spawn().await;
    create_many(&app, 12).await;

    let by_name = app.client.get(app.url("/patients?name=PATIENT%201")).send().await.unwrap();
    assert_eq!(by_name.headers()["x-total-count"], "3", "1, 10 and 11");
    let by_email: Vec<Value> =
        app.client.get(app.url("/patients?email=Patient7@EXAMPLE.com")).send().await.unwrap().json().await.unwrap();
    assert_eq!(by_email.len(), 1);
    assert_eq!(by_email[0]["email"], "patient7@example.com");
    let wildcard = app.client.get(app.url("/patients?name=%25")).send().await.unwrap();
    assert_eq!(wildcard.headers()["x-total-count"], "0", "% is taken literally");
}

#[tokio::test]
async fn list_rejects_bad_paging_parameters_and_control_characters_in_filters() {
    let app = TestApp::spawn().await;
    for query in ["size=501", "size=0", "page=-1", "name=a%00b", "email=x%01%40example.com", "name=%1b%5b31m"] {
        let problem = assert_problem(app.client.get(app.url(&format!("/patients?{query}"))).send().await.unwrap(), 400).await;
        assert!(problem["errors"].is_object(), "{query}");
    }
    assert_problem(app.client.get(app.url("/patients?page=abc")).send().await.unwrap(), 400).await;
}

#[tokio::test]
async fn demo_data_seeds_the_fifteen_known_patients_once() {
    let app = TestApp::spawn_with(|s| s.seed_demo_data = true).await;
    let resp = app.client.get(app.url("/patients")).send().await.unwrap();
    assert_eq!(resp.headers()["x-total-count"], "15");
    let john = app.client.get(app.url("/patients/123e4567-e89b-12d3-a456-426614174000")).send().await.unwrap();
    assert_eq!(john.json::<Value>().await.unwrap()["email"], "john.doe@example.com");
    assert_eq!(app.outbox_events().await.len(), 15);

    let inserted = patient_service::demo::seed(&app.db).await.unwrap();
    assert_eq!(inserted, 0, "seeding again is a no-op");
    assert_eq!(app.patient_rows().await, 15);

    // A deleted demo patient is not brought back by the next start's seeding.
    let john = app.url("/patients/123e4567-e89b-12d3-a456-426614174000");
    assert_eq!(app.client.delete(&john).send().await.unwrap().status(), 204);
    assert_eq!(patient_service::demo::seed(&app.db).await.unwrap(), 0);
    assert_eq!(app.client.get(&john).send().await.unwrap().status(), 404);
    assert_eq!((app.patient_rows().await, app.outbox_events().await.len()), (14, 16), "no new PATIENT_CREATED");
    // Also once the outbox retention deleted every published event.
    sqlx::query("DELETE FROM outbox").execute(&app.db).await.unwrap();
    assert_eq!(patient_service::demo::seed(&app.db).await.unwrap(), 0);
    assert_eq!(app.client.get(&john).send().await.unwrap().status(), 404);
}
