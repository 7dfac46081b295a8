//! `onhand` as the separate process an operator runs: started from the built binary,
//! stopped with SIGTERM or killed with SIGKILL, its log kept in a file for when a test
//! fails.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use onhand_core::config::Config;

/// A running `onhand` process.
pub struct Process {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

/// A free port on 127.0.0.1, for a process told where to listen.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}

impl Process {
    /// `onhand serve` with `config`'s database, brokers, topics and ledger group, through
    /// the environment variables an operator would set; its log goes to `log_dir`.
    pub fn serve(config: &Config, log_dir: &Path, name: &str) -> Process {
        Self::serve_with(config, &[], log_dir, name)
    }

    /// As [`Process::serve`], with more variables (`ONHAND_CONNECTORS__ERP__...`).
    pub fn serve_with(config: &Config, more: &[(&str, &str)], log_dir: &Path, name: &str) -> Process {
        let addr = free_addr();
        let topics = &config.kafka.topics;
        let env = [
            ("DATABASE_URL", config.database.url.clone()),
            ("ONHAND_KAFKA__BROKERS", config.kafka.brokers.clone()),
            ("ONHAND_KAFKA__PARTITIONS", config.kafka.partitions.to_string()),
            ("ONHAND_KAFKA__TOPICS__MOVEMENTS", topics.movements.clone()),
            ("ONHAND_KAFKA__TOPICS__STOCK", topics.stock.clone()),
            ("ONHAND_KAFKA__TOPICS__DLQ", topics.dlq.clone()),
            ("ONHAND_KAFKA__TOPICS__ALERTS", topics.alerts.clone()),
            ("ONHAND_KAFKA__TOPICS__ORDERS", topics.orders.clone()),
            ("ONHAND_LEDGER__GROUP_ID", config.ledger.group_id.clone()),
            ("ONHAND_ALERTS__GROUP_ID", config.alerts.group_id.clone()),
            ("ONHAND_ORDERS__GROUP_ID", config.orders.group_id.clone()),
            ("ONHAND_LEDGER__BATCH_SIZE_MAX", config.ledger.batch_size_max.to_string()),
            ("ONHAND_HTTP__LISTEN", addr.to_string()),
        ];
        let env: Vec<(&str, String)> =
            env.into_iter().chain(more.iter().map(|(key, value)| (*key, value.to_string()))).collect();
        Self::spawn(&["serve"], &env, addr, log_dir, name)
    }

    /// `onhand dev` on `data_dir`, listening on `addr`.
    pub fn dev(addr: SocketAddr, data_dir: &Path, log_dir: &Path, name: &str) -> Process {
        Self::dev_with(addr, data_dir, &[], log_dir, name)
    }

    /// As [`Process::dev`], with more arguments (`--config FILE`).
    pub fn dev_with(addr: SocketAddr, data_dir: &Path, more: &[&str], log_dir: &Path, name: &str) -> Process {
        let data_dir = data_dir.display().to_string();
        let listen = addr.to_string();
        let args: Vec<&str> =
            ["dev", "--listen", &listen, "--data-dir", &data_dir].into_iter().chain(more.iter().copied()).collect();
        Self::spawn(&args, &[], addr, log_dir, name)
    }

    fn spawn(args: &[&str], env: &[(&str, String)], addr: SocketAddr, log_dir: &Path, name: &str) -> Process {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_onhand"));
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the log file"))
            .stderr(file);
        // Only what the test sets: a developer's own ONHAND_ variables stay out.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ONHAND_") && k.contains("__")) {
            command.env_remove(key);
        }
        command.env_remove("DATABASE_URL");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("the onhand binary starts");
        Process { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it at once, as a crash or `kill -9` would, and waits for it to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks it to stop (SIGTERM, what systemd and Kubernetes send) and waits; answers
    /// whether it exited with success.
    pub fn terminate(mut self) -> bool {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// Waits up to `seconds` for it to exit on its own; its exit status, if it did.
    pub fn exited(&mut self, seconds: u64) -> Option<std::process::ExitStatus> {
        for _ in 0..seconds * 10 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// The last lines of its log, for a failing test's message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
