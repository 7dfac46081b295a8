//! The `onhand` binary as a user runs it: `onhand dev` with nothing installed, `onhand
//! serve` refusing a configuration that cannot work, and the commands that manage the
//! catalog and the API keys.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use common::*;
use serde_json::json;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onhand_dev_takes_a_movement_and_shows_the_new_level() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_onhand"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let _running = Running(child);
    // Keep draining stdout after the banner: a closed pipe would kill onhand.
    let (found, banner) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let (mut found, mut addr, mut dashboard) = (Some(found), None, false);
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(a) = line.trim().strip_prefix("http api   http://") {
                addr = Some(a.to_string());
            }
            // The dashboard's address, for a new user to open.
            dashboard |= addr.as_ref().is_some_and(|a| line.contains(&format!("dashboard  http://{a}/dashboard")));
            if let Some(key) = line.trim().strip_prefix("api key    ") {
                if let (true, Some(found), Some(addr)) = (dashboard, found.take(), addr.clone()) {
                    let _ = found.send((addr, key.to_string()));
                }
            }
        }
    });
    let (addr, key) = tokio::time::timeout(std::time::Duration::from_secs(60), banner)
        .await
        .expect("onhand dev prints where its api and dashboard listen, and its api key")
        .unwrap();
    let addr = addr.parse().unwrap();
    let saved = std::fs::read_to_string(data_dir.path().join("dev-api-key")).unwrap();
    assert_eq!(saved.trim(), key, "the key is kept in the data directory");
    assert_eq!(http_get_as(addr, "/v1/stock/SKU-1", None).await.0, 401, "the api needs the key");

    let movement = json!({
        "event_id": "dev-1",
        "source": { "system": "api", "instance": "readme", "ref": "r-1" },
        "sku": "SKU-1", "location": "store-001", "kind": "receipt", "quantity": 10,
        "occurred_at": "2026-11-22T10:00:00Z"
    });
    let body = json!([movement]).to_string();
    let (status, answer) = http_post_as(addr, "/v1/movements", "application/json", body, Some(&key)).await;
    assert_eq!(status, 202, "{answer}");
    let stock = eventually("the level over http", 60, || async {
        let (status, body) = http_get_as(addr, "/v1/stock/SKU-1", Some(&key)).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(stock["locations"][0]["on_hand"], 10);
    assert_eq!(stock["locations"][0]["location"], "store-001");
}

fn serve_fails(envs: &[(&str, &str)], args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_onhand"))
        .arg("serve")
        .args(args)
        .env_remove("DATABASE_URL")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(!output.status.success(), "onhand serve must refuse to start");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn onhand_serve_refuses_to_start_with_a_clear_message() {
    onhand_core::skip_without_servers!();
    let brokers = onhand_core::testing::kafka_brokers();
    let no_database = serve_fails(&[("ONHAND_KAFKA__BROKERS", &brokers)], &[]);
    assert!(no_database.contains("database.url is not set"), "{no_database}");

    let unreachable = serve_fails(
        &[("DATABASE_URL", "postgres://onhand:pw@127.0.0.1:1/onhand"), ("ONHAND_KAFKA__BROKERS", &brokers)],
        &[],
    );
    assert!(unreachable.contains("database postgres://onhand:***@127.0.0.1:1/onhand is unreachable"), "{unreachable}");
    assert!(!unreachable.contains("pw@"), "the password is not shown");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("onhand.toml");
    std::fs::write(&file, "[ledger]\nbatch_size = 10\n").unwrap();
    let unknown_field = serve_fails(&[], &["--config", file.to_str().unwrap()]);
    assert!(unknown_field.contains("batch_size"), "{unknown_field}");

    let missing = serve_fails(&[], &["--config", "/nonexistent/onhand.toml"]);
    assert!(missing.contains("/nonexistent/onhand.toml does not exist"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onhand_serve_refuses_unreachable_kafka() {
    onhand_core::skip_without_servers!();
    let url = onhand_core::testing::fresh_postgres_url().await;
    let output = tokio::task::spawn_blocking(move || {
        serve_fails(&[("DATABASE_URL", url.as_str()), ("ONHAND_KAFKA__BROKERS", "127.0.0.1:1")], &[])
    })
    .await
    .unwrap();
    assert!(output.contains("kafka brokers 127.0.0.1:1 are unreachable"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_import_takes_a_good_file_whole_and_a_bad_file_not_at_all() {
    onhand_core::skip_without_servers!();
    let url = onhand_core::testing::fresh_postgres_url().await;
    let dir = tempfile::tempdir().unwrap();
    let import = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_onhand"))
            .args(["products", "import"])
            .arg(&path)
            .args(["--database-url", &url])
            .output()
            .unwrap()
    };
    let bad = import("bad.csv", "sku,name,category\n01,Arroz,grocery\n02,,grocery\n");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("nothing imported, 1 bad line(s)") && stderr.contains("line 3: name"), "{stderr}");

    let good = import("good.csv", "sku,name,category,brand\n01,Arroz,grocery,Tio João\n02,Feijão,grocery,Camil\n");
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert_eq!(String::from_utf8_lossy(&good.stdout).trim(), "imported 2 products (2 new)");

    let db = onhand_core::db::open(&url, 1).await.unwrap();
    let sku = |s: &str| onhand_core::event::Sku::parse(s).unwrap();
    assert!(db.product(&sku("02")).await.unwrap().is_some());
    let arroz = db.product(&sku("01")).await.unwrap().unwrap();
    assert_eq!(arroz.product.attributes.get("brand").map(String::as_str), Some("Tio João"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_created_listed_and_revoked() {
    onhand_core::skip_without_servers!();
    let url = onhand_core::testing::fresh_postgres_url().await;
    let keys = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_onhand"))
            .arg("keys")
            .args(args)
            .env("DATABASE_URL", &url)
            .output()
            .unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (output.status.success(), text(&output.stdout), text(&output.stderr))
    };
    let (ok, stdout, stderr) = keys(&["create", "--name", "pos sync", "--scopes", "stock:read,movements:write"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("not shown again"), "{stderr}");
    let field =
        |name: &str| stdout.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).map(String::from).expect(name);
    let (id, key) = (field("id "), field("key "));
    assert_eq!(field("scopes "), "stock:read movements:write");
    assert!(key.starts_with(&format!("onh_{id}_")), "{key}");

    let db = onhand_core::db::open(&url, 1).await.unwrap();
    let stored = db.api_key(&id).await.unwrap().expect("the key is stored");
    assert!(stored.verifies(&onhand_core::auth::Token::parse(&key).unwrap()));
    let dump = sqlx::query_scalar::<_, String>("SELECT id || name || scopes || secret_hash FROM api_keys")
        .fetch_all(&sqlx::PgPool::connect(&url).await.unwrap())
        .await
        .unwrap();
    assert!(!dump.concat().contains(&key[4 + id.len() + 1..]), "the secret itself is not stored");

    let (ok, listed, _) = keys(&["list"]);
    assert!(ok && listed.contains(&id) && listed.contains("pos sync") && listed.contains("active"), "{listed}");
    let (ok, _, stderr) = keys(&["revoke", &id]);
    assert!(ok, "{stderr}");
    let (_, listed, _) = keys(&["list"]);
    assert!(listed.contains("revoked"), "{listed}");
    let (ok, _, stderr) = keys(&["revoke", &id]);
    assert!(!ok && stderr.contains("no active api key"), "{stderr}");
    let (ok, _, stderr) = keys(&["create", "--name", "x", "--scopes", "stock:write"]);
    assert!(!ok && stderr.contains("unknown scope \"stock:write\""), "{stderr}");
    // H5: a key bound to a store says so, and keeps its binding.
    let (ok, stdout, stderr) =
        keys(&["create", "--name", "till agent", "--scopes", "movements:write", "--store", "store-012"]);
    assert!(ok && stdout.contains("bound   store:store-012"), "{stdout}{stderr}");
    let (_, listed, _) = keys(&["list"]);
    assert!(listed.contains("store:store-012"), "{listed}");
    let (ok, _, stderr) = keys(&["create", "--name", "x", "--scopes", "movements:write", "--source", "fax:1"]);
    assert!(!ok && stderr.contains("not a source system"), "{stderr}");
}

/// M4 and L8: `onhand store-agent` takes its central key from the environment (never the
/// command line), and serves the tills only with a token, made on its first start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_agent_needs_a_tills_token_and_no_key_on_its_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let addr = common::process::free_addr();
    let agent = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_onhand"))
            .args(["store-agent", "--store", "store-001", "--central", "http://127.0.0.1:9"])
            .args(["--listen", &addr.to_string(), "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env("ONHAND_AGENT_KEY", TEST_API_KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let refused = Command::new(env!("CARGO_BIN_EXE_onhand"))
        .args(["store-agent", "--store", "store-001", "--central", "http://x", "--key", "onh_x"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "--key is gone: a key on the command line shows in ps");
    let _running = Running(agent(&[]));
    let sale = r#"{"transaction_id":"T1","line":1,"kind":"sale","sku":"SKU-A","quantity":1,"occurred_at":"2026-11-22T10:00:00Z"}"#;
    let post = |token: Option<String>| {
        let request = reqwest::Client::new()
            .post(format!("http://{addr}/connectors/pos/store-001/sales"))
            .header("content-type", "application/x-ndjson")
            .body(sale);
        async move {
            let request = match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            };
            request.send().await.ok().map(|r| r.status().as_u16())
        }
    };
    let without = eventually("the agent answers", 30, || post(None)).await;
    assert_eq!(without, 401, "no token, no sale");
    let tokens = std::fs::read_to_string(dir.path().join("local-tokens")).expect("made at the first start");
    let token =
        tokens.lines().find(|l| l.starts_with("tills ")).unwrap().split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(post(Some("wrong-token-0000000000".into())).await, Some(401));
    assert_eq!(post(Some(token)).await, Some(202), "the till's token is taken");
}
