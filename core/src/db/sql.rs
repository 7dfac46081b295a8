//! The one implementation of [`Db`]'s roles: [`SqlDb`], over a database's [`Dialect`]. Every
//! statement whose text both PostgreSQL and SQLite accept is written here once; the
//! dialect supplies the rest.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};

use super::{
    batch::{apply_batch, owed_keys, Recording},
    corrupt,
    dialect::{api_key, product, stock_level, Dialect},
    driver::{query, Cells, List, Time},
    reservations::{self, load_reservation, ReservationTx},
    Applied, Batch, Catalog, Closed, ConnectorState, Db, DbError, Keys, LedgerWrites, MovementLookups, NewReservation,
    Outbox, OutboxRecord, PartitionOffset, Ping, Published, ReservationRecords, Reserved, Sources, SqlDb,
    StockPolicies, StockPolicy, StockReads, Unpublished,
};
use crate::{
    auth::ApiKey,
    event::{EventId, LocationId, Movement, Sku, StockLevel},
    freshness::{SourceState, SourceUpdate},
    ledger::rules::LevelKey,
    product::{Product, StoredProduct},
    reservation::{Reservation, Status},
};

/// Applies `batch` in one transaction, its movements recorded as `recording` says.
async fn apply_batch_recording<D: Dialect>(
    db: &SqlDb<D>,
    batch: &Batch,
    recording: Recording,
) -> Result<Applied, DbError> {
    let mut tx = D::begin_write(&db.pool).await?;
    let applied = apply_batch(D::ledger(&mut tx, recording), batch).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Every role below, which makes `SqlDb` the [`Db`] that `open` answers.
impl<D: Dialect> Db for SqlDb<D> {}

#[async_trait]
impl<D: Dialect> LedgerWrites for SqlDb<D> {
    async fn apply_batch(&self, batch: &Batch) -> Result<Applied, DbError> {
        match apply_batch_recording(self, batch, Recording::AllNew).await {
            Err(e) if e.is_recorded_before() => apply_batch_recording(self, batch, Recording::SkipRecorded).await,
            applied => applied,
        }
    }

    async fn consumer_offsets(&self, group_id: &str, topic: &str) -> Result<Vec<PartitionOffset>, DbError> {
        let rows = query::<D>(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2 ORDER BY partition",
        )
        .bind(group_id)
        .bind(topic)
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter()
            .map(|r| Ok(PartitionOffset { partition: r.cell("partition")?, next_offset: r.cell("next_offset")? }))
            .collect()
    }

    async fn reset_consumer_offsets(&self, group_id: &str, topic: &str) -> Result<(), DbError> {
        query::<D>("DELETE FROM consumer_offsets WHERE group_id = $1 AND topic = $2")
            .bind(group_id)
            .bind(topic)
            .execute(self.conn().await?)
            .await?;
        Ok(())
    }

    async fn rewind_consumer_offsets(
        &self,
        group_id: &str,
        topic: &str,
        offsets: &[PartitionOffset],
    ) -> Result<Vec<PartitionOffset>, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let mut moved = Vec::new();
        for o in offsets {
            let done = query::<D>(
                "UPDATE consumer_offsets SET next_offset = $4, updated_at = $5
                 WHERE group_id = $1 AND topic = $2 AND partition = $3 AND next_offset > $4",
            )
            .bind(group_id)
            .bind(topic)
            .bind(o.partition)
            .bind(o.next_offset)
            .bind(Time(Utc::now()))
            .execute(&mut *tx)
            .await?;
            if done > 0 {
                moved.push(*o);
            }
        }
        tx.commit().await?;
        Ok(moved)
    }

    async fn unpublished_levels(&self, written_before: DateTime<Utc>, limit: i64) -> Result<Unpublished, DbError> {
        let rows = query::<D>(concat!(
            "SELECT ",
            stock_level_columns!(),
            " FROM stock_levels WHERE published_version < version AND updated_at < $1 ORDER BY updated_at LIMIT $2"
        ))
        .bind(Time(written_before))
        .bind(limit)
        .fetch_all(self.conn().await?)
        .await?;
        let mut levels: BTreeMap<LevelKey, StockLevel> = BTreeMap::new();
        for level in rows.iter().map(stock_level) {
            let level = level?;
            levels.insert((level.sku.clone(), level.location.clone()), level);
        }
        let rows = query::<D>("SELECT id, levels FROM ledger_publications WHERE written_at < $1 ORDER BY id LIMIT $2")
            .bind(Time(written_before))
            .bind(limit)
            .fetch_all(self.conn().await?)
            .await?;
        let (mut owed, mut keys) = (Vec::new(), BTreeSet::new());
        for row in &rows {
            if keys.len() as i64 >= limit {
                break;
            }
            keys.extend(owed_keys(&row.cell::<String>("levels")?)?);
            owed.push(row.cell("id")?);
        }
        // The levels as they are now: a newer version than the one owed is as good.
        let skus: Vec<Sku> = keys.iter().map(|(sku, _)| sku.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        for chunk in skus.chunks(1_000) {
            for level in self.stock_by_skus(chunk).await? {
                let key = (level.sku.clone(), level.location.clone());
                if keys.contains(&key) {
                    levels.insert(key, level);
                }
            }
        }
        Ok(Unpublished { levels: levels.into_values().collect(), owed })
    }

    async fn movement_count(&self) -> Result<i64, DbError> {
        query::<D>("SELECT count(*) AS n FROM movements").fetch_one(self.conn().await?).await?.cell("n")
    }
}

#[async_trait]
impl<D: Dialect> MovementLookups for SqlDb<D> {
    async fn recorded_event_ids(&self, ids: &[EventId]) -> Result<Vec<EventId>, DbError> {
        // One lookup by primary key each: a redrive asks about a few thousand ids at most.
        let mut conn = self.conn().await?;
        let mut recorded = Vec::new();
        for id in ids {
            let found = query::<D>("SELECT 1 AS found FROM movements WHERE event_id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            if found.is_some() {
                recorded.push(id.clone());
            }
        }
        Ok(recorded)
    }
}

#[async_trait]
impl<D: Dialect> StockReads for SqlDb<D> {
    async fn stock_page(&self, after: Option<&Sku>, levels_max: i64) -> Result<Vec<StockLevel>, DbError> {
        let rows = query::<D>(concat!(
            "SELECT ",
            stock_level_columns!(),
            " FROM stock_levels WHERE sku > $1 ORDER BY sku, location LIMIT $2"
        ))
        .bind(after.map_or("", Sku::as_str))
        .bind(levels_max)
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter().map(stock_level).collect()
    }

    async fn stock_by_sku(&self, sku: &Sku) -> Result<Vec<StockLevel>, DbError> {
        let rows = query::<D>(concat!(
            "SELECT ",
            stock_level_columns!(),
            " FROM stock_levels WHERE sku = $1 ORDER BY location"
        ))
        .bind(sku.as_str())
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter().map(stock_level).collect()
    }

    async fn stock_by_skus(&self, skus: &[Sku]) -> Result<Vec<StockLevel>, DbError> {
        let skus: Vec<&str> = skus.iter().map(Sku::as_str).collect();
        let rows = query::<D>(D::STOCK_BY_SKUS).bind(List(&skus)).fetch_all(self.conn().await?).await?;
        rows.iter().map(stock_level).collect()
    }
}

#[async_trait]
impl<D: Dialect> StockPolicies for SqlDb<D> {
    async fn set_policy(&self, (sku, location): &LevelKey, policy: StockPolicy) -> Result<StockLevel, DbError> {
        let row = query::<D>(concat!(
            "INSERT INTO stock_levels (sku, location, on_hand, version, safety_stock, reorder_point, updated_at)
             VALUES ($1, $2, 0, 1, $3, $4, $5)
             ON CONFLICT (sku, location) DO UPDATE
             SET safety_stock = excluded.safety_stock, reorder_point = excluded.reorder_point,
                 version = stock_levels.version + 1, updated_at = excluded.updated_at
             RETURNING ",
            stock_level_columns!()
        ))
        .bind(sku.as_str())
        .bind(location.as_str())
        .bind(policy.safety_stock)
        .bind(policy.reorder_point)
        .bind(Time(Utc::now().trunc_subsecs(6)))
        .fetch_one(self.conn().await?)
        .await?;
        stock_level(&row)
    }
}

#[async_trait]
impl<D: Dialect> Catalog for SqlDb<D> {
    async fn put_products(&self, products: &[Product]) -> Result<u64, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let inserted = D::put_products(&mut tx, products).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn product(&self, sku: &Sku) -> Result<Option<StoredProduct>, DbError> {
        let row = query::<D>(
            "SELECT sku, name, category, CAST(attributes AS TEXT) AS attributes, updated_at FROM products
             WHERE sku = $1",
        )
        .bind(sku.as_str())
        .fetch_optional(self.conn().await?)
        .await?;
        row.map(|row| Ok(StoredProduct { product: product(&row)?, updated_at: row.time("updated_at")? })).transpose()
    }

    async fn products_by_attribute(&self, name: &str, values: &[String]) -> Result<Vec<Product>, DbError> {
        if name.contains(['"', '\\']) || values.is_empty() {
            return Ok(Vec::new());
        }
        let rows =
            query::<D>(D::PRODUCTS_BY_ATTRIBUTE).bind(name).bind(List(values)).fetch_all(self.conn().await?).await?;
        rows.iter().map(product).collect()
    }

    async fn name_locations(&self, names: &[(LocationId, String)]) -> Result<u64, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let named = D::name_locations(&mut tx, names).await?;
        tx.commit().await?;
        Ok(named)
    }
}

#[async_trait]
impl<D: Dialect> Keys for SqlDb<D> {
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), DbError> {
        query::<D>(
            "INSERT INTO api_keys (id, name, scopes, secret_hash, created_at, revoked_at, bound_to)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(key.id.as_str())
        .bind(key.name.as_str())
        .bind(key.scopes.to_string())
        .bind(hex::encode(key.secret_sha256))
        .bind(Time(key.created_at))
        .bind(key.revoked_at.map(Time))
        .bind(key.bound_to.as_ref().map(ToString::to_string))
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, DbError> {
        let row = query::<D>(concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.conn().await?)
            .await?;
        row.as_ref().map(api_key).transpose()
    }

    async fn api_keys(&self, limit: i64) -> Result<Vec<ApiKey>, DbError> {
        let rows =
            query::<D>(concat!("SELECT ", api_key_columns!(), " FROM api_keys ORDER BY created_at, id LIMIT $1"))
                .bind(limit)
                .fetch_all(self.conn().await?)
                .await?;
        rows.iter().map(api_key).collect()
    }

    async fn revoke_api_key(&self, id: &str) -> Result<bool, DbError> {
        let revoked = query::<D>("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(Time(Utc::now().trunc_subsecs(6)))
            .execute(self.conn().await?)
            .await?;
        Ok(revoked == 1)
    }
}

#[async_trait]
impl<D: Dialect> ReservationRecords for SqlDb<D> {
    async fn reserve(&self, new: &NewReservation<'_>) -> Result<Reserved, DbError> {
        reservations::reserve(ReservationTx::begin(&self.pool).await?, new).await
    }

    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, DbError> {
        load_reservation::<D>(self.conn().await?, id).await
    }

    async fn close_reservation(&self, id: &str, to: Status, now: DateTime<Utc>) -> Result<Closed, DbError> {
        reservations::close(ReservationTx::begin(&self.pool).await?, id, to, now).await
    }

    async fn due_reservations(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<String>, DbError> {
        let rows = query::<D>(
            "SELECT id FROM reservations WHERE status = 'held' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
        )
        .bind(Time(now))
        .bind(limit)
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter().map(|r| r.cell("id")).collect()
    }

    async fn forget_idempotency_keys(&self, created_before: DateTime<Utc>) -> Result<u64, DbError> {
        query::<D>("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(Time(created_before))
            .execute(self.conn().await?)
            .await
    }
}

#[async_trait]
impl<D: Dialect> Outbox for SqlDb<D> {
    async fn record_published(&self, published: Vec<Published>) -> Result<(), DbError> {
        // A batch of publications alone: the ledger's one way of recording them.
        let batch = Batch {
            group_id: String::new(),
            topic: String::new(),
            movements: Vec::new(),
            offsets: Vec::new(),
            published,
            settled: Vec::new(),
        };
        self.apply_batch(&batch).await.map(|_| ())
    }

    async fn outbox(
        &self,
        created_before: DateTime<Utc>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRecord>, DbError> {
        let rows = query::<D>(
            "SELECT id, kafka_key, payload FROM outbox WHERE created_at < $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(Time(created_before))
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter()
            .map(|r| Ok(OutboxRecord { id: r.cell("id")?, key: r.cell("kafka_key")?, payload: r.cell("payload")? }))
            .collect()
    }

    async fn delete_outbox(&self, ids: &[i64]) -> Result<(), DbError> {
        if !ids.is_empty() {
            query::<D>(D::DELETE_OUTBOX).bind(List(ids)).execute(self.conn().await?).await?;
        }
        Ok(())
    }

    async fn enqueue_outbox(&self, movements: &[Movement], now: DateTime<Utc>) -> Result<Vec<OutboxRecord>, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let records = D::enqueue(&mut tx, movements, now).await?;
        tx.commit().await?;
        Ok(records)
    }

    async fn delete_recorded_outbox(&self) -> Result<Vec<i64>, DbError> {
        let rows = query::<D>(
            "DELETE FROM outbox WHERE EXISTS (SELECT 1 FROM movements m WHERE m.event_id = outbox.event_id)
             RETURNING id",
        )
        .fetch_all(self.conn().await?)
        .await?;
        rows.iter().map(|r| r.cell("id")).collect()
    }
}

#[async_trait]
impl<D: Dialect> ConnectorState for SqlDb<D> {
    async fn connector_state(&self, connector: &str, key: &str) -> Result<Option<String>, DbError> {
        let row = query::<D>("SELECT value FROM connector_state WHERE connector = $1 AND key = $2")
            .bind(connector)
            .bind(key)
            .fetch_optional(self.conn().await?)
            .await?;
        row.map(|r| r.cell("value")).transpose()
    }

    async fn set_connector_state(&self, connector: &str, key: &str, value: &str) -> Result<(), DbError> {
        query::<D>(
            "INSERT INTO connector_state (connector, key, value, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (connector, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(connector)
        .bind(key)
        .bind(value)
        .bind(Time(Utc::now()))
        .execute(self.conn().await?)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl<D: Dialect> Sources for SqlDb<D> {
    async fn update_source(
        &self,
        source: &str,
        update: &SourceUpdate,
        now: DateTime<Utc>,
    ) -> Result<SourceState, DbError> {
        let mut tx = D::begin_write(&self.pool).await?;
        let stored = query::<D>(D::SOURCE_FOR_UPDATE).bind(source).fetch_optional(&mut *tx).await?;
        let state = match stored {
            Some(row) => serde_json::from_str(&row.cell::<String>("state")?).map_err(corrupt)?,
            None => SourceState::new(source, now),
        };
        let state = state.apply(update, now);
        query::<D>(
            "INSERT INTO sources (source, state, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (source) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(source)
        .bind(serde_json::to_string(&state).expect("a source state serializes"))
        .bind(Time(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn sources(&self) -> Result<Vec<SourceState>, DbError> {
        let rows = query::<D>("SELECT state FROM sources ORDER BY source").fetch_all(self.conn().await?).await?;
        rows.iter().map(|r| serde_json::from_str(&r.cell::<String>("state")?).map_err(corrupt)).collect()
    }
}

#[async_trait]
impl<D: Dialect> Ping for SqlDb<D> {
    async fn ping(&self) -> Result<(), DbError> {
        query::<D>("SELECT 1").execute(self.conn().await?).await?;
        Ok(())
    }
}
