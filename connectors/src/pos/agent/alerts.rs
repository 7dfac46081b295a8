//! The store's alerts, received from the central service: while the link is up, the agent
//! asks `GET /v1/alerts?location=STORE&since=LAST_CHANGE` every `alerts_interval` and keeps
//! each alert's newest change in its database; the store reads them at `GET /alerts`, cut
//! off or not. The cursor is the newest `changed_at` kept, so alerts raised during a cut
//! arrive when the link returns.

use std::time::Duration;

use chrono::{DateTime, Utc};
use onhand_core::event::{alert::Alert, LocationId};
use serde::Deserialize;
use sqlx::{Row, SqlitePool};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The alerts asked for at once: a full page is followed at once by the next.
const PAGE: usize = 1000;
/// Resolved alerts are forgotten this long after they resolved.
const RESOLVED_KEPT: chrono::Duration = chrono::Duration::days(7);

/// Where the alerts come from.
#[derive(Debug, Clone)]
pub(super) struct Feed {
    pub pool: SqlitePool,
    pub http: reqwest::Client,
    pub central_url: String,
    pub api_key: String,
    pub store: LocationId,
    pub every: Duration,
}

#[derive(Deserialize)]
struct Page {
    alerts: Vec<Alert>,
}

impl Feed {
    /// Receives the store's alerts until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.receive().await {
                debug!(error = %e, "alerts not received from the central service; trying again");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// Asks for every change since the newest kept, page by page, and keeps them.
    async fn receive(&self) -> Result<(), String> {
        loop {
            let since = self.newest().await.map_err(|e| e.to_string())?;
            let mut request = self
                .http
                .get(format!("{}/v1/alerts", self.central_url))
                .bearer_auth(&self.api_key)
                .query(&[("location", self.store.as_str()), ("limit", &PAGE.to_string())]);
            if let Some(since) = since {
                request = request.query(&[("since", since.to_rfc3339())]);
            }
            let response = request.send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                let status = response.status();
                if status.as_u16() == 401 || status.as_u16() == 403 {
                    warn!(%status, "the agent's key may not read alerts: give it the scope stock:read");
                }
                return Err(format!("the central service answered {status}"));
            }
            let page: Page = response.json().await.map_err(|e| format!("an alerts page not understood: {e}"))?;
            let full = page.alerts.len() >= PAGE;
            let mut newer = false;
            for alert in page.alerts.iter().filter(|a| a.location.as_ref() == Some(&self.store)) {
                newer |= self.keep(alert).await.map_err(|e| e.to_string())?;
            }
            self.forget_old().await.map_err(|e| e.to_string())?;
            // A full page of changes all at the cursor's time would be asked for again and
            // again: stop, the next round asks again.
            if !full || !newer {
                return Ok(());
            }
        }
    }

    /// The newest change kept, the cursor of the next request.
    async fn newest(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let micros: Option<i64> = sqlx::query("SELECT MAX(changed_at) AS newest FROM alerts")
            .fetch_one(&self.pool)
            .await?
            .try_get("newest")?;
        Ok(micros.and_then(DateTime::from_timestamp_micros))
    }

    /// Keeps `alert` unless a change as new or newer is kept; answers whether it did.
    async fn keep(&self, alert: &Alert) -> Result<bool, sqlx::Error> {
        let body = serde_json::to_string(alert).expect("an alert always serializes");
        let written = sqlx::query(
            "INSERT INTO alerts (id, changed_at, state, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET changed_at = excluded.changed_at, state = excluded.state,
                                            body = excluded.body
             WHERE excluded.changed_at > alerts.changed_at",
        )
        .bind(&alert.id)
        .bind(alert.changed_at.timestamp_micros())
        .bind(alert.state.as_str())
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(written.rows_affected() > 0)
    }

    async fn forget_old(&self) -> Result<(), sqlx::Error> {
        let before = (Utc::now() - RESOLVED_KEPT).timestamp_micros();
        sqlx::query("DELETE FROM alerts WHERE state = 'resolved' AND changed_at < ?1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// The store's alerts as kept, newest change first; only those in `state` when given.
pub(super) async fn kept(pool: &SqlitePool, state: Option<&str>) -> Result<Vec<serde_json::Value>, sqlx::Error> {
    let rows = sqlx::query("SELECT body FROM alerts WHERE ?1 IS NULL OR state = ?1 ORDER BY changed_at DESC, id")
        .bind(state)
        .fetch_all(pool)
        .await?;
    let mut alerts = Vec::with_capacity(rows.len());
    for row in rows {
        let body: String = row.try_get("body")?;
        match serde_json::from_str(&body) {
            Ok(alert) => alerts.push(alert),
            Err(e) => warn!(error = %e, "a kept alert is unreadable; skipped"),
        }
    }
    Ok(alerts)
}
