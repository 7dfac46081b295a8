//! The dashboard in a real browser: Debian's chromium driven by playwright-core
//! (`tests/browser/dashboard.mjs`), against `onhand serve` on the real broker and
//! PostgreSQL. The page is given the key, loads a level, and must show the change a
//! movement posted through the API makes and the alert it raises, within 2 s and without
//! a reload, and acknowledge the alert; a screenshot goes to `target/dashboard.png`.
//!
//! `scripts/test` installs chromium, node and the script's locked packages; when it runs
//! (`ONHAND_REQUIRE_SERVERS=1`), a missing browser fails the test instead of skipping it.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use common::*;
use onhand_core::event::MovementKind;
use tokio::io::{AsyncBufReadExt, BufReader};

fn chromium() -> PathBuf {
    PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()))
}

/// Whether the browser and the script's packages are installed; when the run requires
/// the servers, their absence fails the test.
fn browser_ready(root: &Path) -> bool {
    let missing: Vec<String> = [
        (chromium(), "chromium (apt-get install chromium)"),
        (root.join("tests/browser/node_modules/playwright-core"), "playwright-core (npm ci --prefix tests/browser)"),
    ]
    .into_iter()
    .filter(|(path, _)| !path.exists())
    .map(|(path, what)| format!("{what} at {}", path.display()))
    .collect();
    let node = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let missing = if node { missing } else { [missing, vec!["node (apt-get install nodejs)".into()]].concat() };
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var("ONHAND_REQUIRE_SERVERS").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    assert!(!required, "the browser test needs {}: run scripts/test, which installs them", missing.join(", "));
    eprintln!("skipped dashboard: needs {}", missing.join(", "));
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_levels_and_alerts_as_they_change() {
    onhand_core::skip_without_servers!();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if !browser_ready(&root) {
        return;
    }
    let config = test_config(1).await;
    let app = serve(&config).await;
    let (sku, location) = ("SKU-DASH", "store-1");
    let (status, _) = http_post(
        app.local_addr,
        "/v1/movements",
        "application/json",
        serde_json::to_string(&[onhand_core::testing::movement(
            "dash-1",
            sku,
            location,
            MovementKind::Receipt,
            7,
            chrono::Utc::now(),
        )])
        .unwrap(),
    )
    .await;
    assert_eq!(status, 202);
    on_hand_is(&app, sku, location, 7).await;

    let screenshot = root.join("target/dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("http://{}", app.local_addr);
    let mut browser = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/dashboard.mjs"))
        .args([url.as_str(), TEST_API_KEY, sku, location, "4", "low_stock"])
        .arg(&screenshot)
        .env("CHROMIUM", chromium())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await;
    let ready = ready.expect("the page loads the level in time").unwrap().unwrap_or_default();
    assert_eq!(ready, "READY 7", "the page shows the level as it is");

    // A sale of 3 while the page is open: 4 left, below the reorder point (5), low_stock.
    let sale = onhand_core::testing::movement("dash-2", sku, location, MovementKind::Sale, 3, chrono::Utc::now());
    let (status, _) =
        http_post(app.local_addr, "/v1/movements", "application/json", serde_json::to_string(&[sale]).unwrap()).await;
    assert_eq!(status, 202);

    let outcome = tokio::time::timeout(Duration::from_secs(120), async {
        let mut said = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            said.push(line);
        }
        (browser.wait().await.expect("node ran"), said)
    })
    .await;
    let (status, said) = outcome.expect("the browser test ends in time");
    assert!(status.success(), "the browser test failed (its stderr is above): {said:?}");
    assert!(said.iter().any(|line| line.starts_with("OK on_hand 7 -> 4")), "{said:?}");
    eprintln!("{said:?}");
    assert!(std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000), "a screenshot in target/dashboard.png");
    app.stop().await.unwrap();
}
