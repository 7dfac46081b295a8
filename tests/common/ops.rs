//! The operator's commands as an operator runs them: the built binary, with only the
//! environment a test sets, and the deployment's configuration written as a TOML file.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use onhand_core::config::Config;
use serde_json::Value;

/// What one run of `onhand ...` gave.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", self.stdout, self.stderr))
    }
}

/// Runs the binary with `args`, only the environment a test sets.
pub fn onhand(args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_onhand"));
    command.args(args).env("RUST_LOG", "warn");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ONHAND_") && k.contains("__")) {
        command.env_remove(key);
    }
    command.env_remove("DATABASE_URL").env_remove("ONHAND_CONFIG");
    let output = command.output().expect("the onhand binary runs");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!("$ onhand {}\n-> {}\n{}{}", args.join(" "), run.code, run.stdout, run.stderr);
    run
}

/// [`onhand`] on the tokio blocking pool, for async tests.
pub async fn onhand_async(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || onhand(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("the onhand run ends")
}

/// The deployment's configuration as an operator's TOML file: database, brokers, topics,
/// and the connectors' sections.
pub fn config_file(config: &Config, dir: &Path) -> PathBuf {
    let topics = &config.kafka.topics;
    let mut text = format!(
        "[database]\nurl = {:?}\n\n[kafka]\nbrokers = {:?}\n\n[kafka.topics]\nmovements = {:?}\nstock = {:?}\ndlq = {:?}\nalerts = {:?}\norders = {:?}\n\n\
         [ledger]\ngroup_id = {:?}\n\n[orders]\ngroup_id = {:?}\n",
        config.database.url,
        config.kafka.brokers,
        topics.movements,
        topics.stock,
        topics.dlq,
        topics.alerts,
        topics.orders,
        config.ledger.group_id,
        config.orders.group_id
    );
    for (name, section) in &config.connectors {
        text.push_str(&toml_section(&format!("connectors.{name}"), section));
    }
    let path = dir.join("onhand.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A JSON object as a TOML table, enough for the connectors' sections of these tests.
fn toml_section(name: &str, value: &Value) -> String {
    let mut scalars = format!("\n[{name}]\n");
    let mut tables = String::new();
    for (key, value) in value.as_object().unwrap() {
        match value {
            Value::Object(_) => tables.push_str(&toml_section(&format!("{name}.\"{key}\""), value)),
            other => scalars.push_str(&format!("\"{key}\" = {other}\n")),
        }
    }
    scalars + &tables
}
