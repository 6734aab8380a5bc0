//! Views in PostgreSQL (feature `postgres`): the same model as the sled views, in three
//! tables, so a projection can be written once and kept in either.
//!
//! | table                 | columns                                              |
//! |-----------------------|------------------------------------------------------|
//! | `es_view_rows`        | `view`, `generation`, `key` (bytea), `value` (bytea) |
//! | `es_view_checkpoints` | `view`, `generation`, `position`                     |
//! | `es_views`            | `view`, `live_generation`                            |
//!
//! A batch's rows and its checkpoint are written in one transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::error::EsError;
use crate::projection::{Row, ViewBatch, ViewStore, ViewTx};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS es_view_rows (
    view TEXT NOT NULL, generation BIGINT NOT NULL, key BYTEA NOT NULL, value BYTEA NOT NULL,
    PRIMARY KEY (view, generation, key));
CREATE TABLE IF NOT EXISTS es_view_checkpoints (
    view TEXT NOT NULL, generation BIGINT NOT NULL, position BIGINT NOT NULL,
    PRIMARY KEY (view, generation));
CREATE TABLE IF NOT EXISTS es_views (view TEXT PRIMARY KEY, live_generation BIGINT NOT NULL);
";

fn pg(what: &str) -> impl FnOnce(tokio_postgres::Error) -> EsError + '_ {
    move |e| EsError::unavailable(format!("postgres: {what}"), e)
}

/// [`ViewStore`] on one PostgreSQL connection.
#[derive(Debug, Clone)]
pub struct PgViews {
    client: Arc<Mutex<Client>>,
}

impl PgViews {
    /// Connects (`host=... user=... dbname=...`) and creates the tables if missing.
    pub async fn connect(config: &str) -> Result<Self, EsError> {
        let (client, connection) = tokio_postgres::connect(config, NoTls)
            .await
            .map_err(pg("connecting"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgres connection ended");
            }
        });
        client
            .batch_execute(SCHEMA)
            .await
            .map_err(pg("creating the view tables"))?;
        Ok(Self {
            client: Arc::new(Mutex::new(client)),
        })
    }

    async fn checkpoint_of(client: &Client, name: &str, generation: u64) -> Result<u64, EsError> {
        let row = client
            .query_opt(
                "SELECT position FROM es_view_checkpoints WHERE view = $1 AND generation = $2",
                &[&name, &(generation as i64)],
            )
            .await
            .map_err(pg("reading a checkpoint"))?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }
}

#[async_trait]
impl ViewStore for PgViews {
    async fn live_generation(&self, name: &str) -> Result<u64, EsError> {
        let c = self.client.lock().await;
        let row = c
            .query_opt(
                "SELECT live_generation FROM es_views WHERE view = $1",
                &[&name],
            )
            .await
            .map_err(pg("reading the live generation"))?;
        Ok(row.map_or(1, |r| r.get::<_, i64>(0) as u64))
    }

    async fn checkpoint(&self, name: &str, generation: u64) -> Result<u64, EsError> {
        let c = self.client.lock().await;
        Self::checkpoint_of(&c, name, generation).await
    }

    async fn begin(&self, name: &str, generation: u64) -> Result<Box<dyn ViewBatch>, EsError> {
        let checkpoint = self.checkpoint(name, generation).await?;
        Ok(Box::new(PgBatch {
            client: self.client.clone(),
            view: name.to_string(),
            generation: generation as i64,
            checkpoint,
            writes: BTreeMap::new(),
        }))
    }

    async fn clear(&self, name: &str, generation: u64) -> Result<(), EsError> {
        let mut c = self.client.lock().await;
        let tx = c.transaction().await.map_err(pg("clearing a generation"))?;
        let g = generation as i64;
        tx.execute(
            "DELETE FROM es_view_rows WHERE view = $1 AND generation = $2",
            &[&name, &g],
        )
        .await
        .map_err(pg("clearing a generation"))?;
        tx.execute(
            "DELETE FROM es_view_checkpoints WHERE view = $1 AND generation = $2",
            &[&name, &g],
        )
        .await
        .map_err(pg("clearing a generation"))?;
        tx.commit().await.map_err(pg("clearing a generation"))
    }

    async fn switch(&self, name: &str, generation: u64) -> Result<(), EsError> {
        let old = self.live_generation(name).await? as i64;
        let mut c = self.client.lock().await;
        let tx = c.transaction().await.map_err(pg("switching generations"))?;
        let g = generation as i64;
        tx.execute(
            "INSERT INTO es_views (view, live_generation) VALUES ($1, $2)
             ON CONFLICT (view) DO UPDATE SET live_generation = EXCLUDED.live_generation",
            &[&name, &g],
        )
        .await
        .map_err(pg("switching generations"))?;
        if old != g {
            tx.execute(
                "DELETE FROM es_view_rows WHERE view = $1 AND generation = $2",
                &[&name, &old],
            )
            .await
            .map_err(pg("dropping the old generation"))?;
            tx.execute(
                "DELETE FROM es_view_checkpoints WHERE view = $1 AND generation = $2",
                &[&name, &old],
            )
            .await
            .map_err(pg("dropping the old generation"))?;
        }
        tx.commit().await.map_err(pg("switching generations"))
    }

    async fn get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EsError> {
        let g = self.live_generation(name).await? as i64;
        let c = self.client.lock().await;
        let row = c
            .query_opt(
                "SELECT value FROM es_view_rows WHERE view = $1 AND generation = $2 AND key = $3",
                &[&name, &g, &key],
            )
            .await
            .map_err(pg("reading a row"))?;
        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }

    async fn scan(
        &self,
        name: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Row>, EsError> {
        let g = self.live_generation(name).await? as i64;
        let c = self.client.lock().await;
        let len = prefix.len() as i32;
        let limit = limit as i64;
        let rows = c
            .query(
                "SELECT key, value FROM es_view_rows
                 WHERE view = $1 AND generation = $2 AND substring(key from 1 for $3) = $4
                   AND ($5::bytea IS NULL OR key > $5)
                 ORDER BY key LIMIT $6",
                &[&name, &g, &len, &prefix, &after, &limit],
            )
            .await
            .map_err(pg("scanning rows"))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

struct PgBatch {
    client: Arc<Mutex<Client>>,
    view: String,
    generation: i64,
    checkpoint: u64,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

#[async_trait]
impl ViewTx for PgBatch {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EsError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        let c = self.client.lock().await;
        let row = c
            .query_opt(
                "SELECT value FROM es_view_rows WHERE view = $1 AND generation = $2 AND key = $3",
                &[&self.view, &self.generation, &key],
            )
            .await
            .map_err(pg("reading a row"))?;
        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.writes.insert(key.to_vec(), Some(value));
    }

    fn delete(&mut self, key: &[u8]) {
        self.writes.insert(key.to_vec(), None);
    }
}

#[async_trait]
impl ViewBatch for PgBatch {
    fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    async fn commit(self: Box<Self>, checkpoint: u64) -> Result<(), EsError> {
        let mut c = self.client.lock().await;
        let tx = c.transaction().await.map_err(pg("writing a batch"))?;
        let upsert = tx
            .prepare(
                "INSERT INTO es_view_rows (view, generation, key, value) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (view, generation, key) DO UPDATE SET value = EXCLUDED.value",
            )
            .await
            .map_err(pg("writing a batch"))?;
        let delete = tx
            .prepare("DELETE FROM es_view_rows WHERE view = $1 AND generation = $2 AND key = $3")
            .await
            .map_err(pg("writing a batch"))?;
        for (k, v) in &self.writes {
            match v {
                Some(v) => {
                    tx.execute(&upsert, &[&self.view, &self.generation, k, v])
                        .await
                }
                None => {
                    tx.execute(&delete, &[&self.view, &self.generation, k])
                        .await
                }
            }
            .map_err(pg("writing a batch"))?;
        }
        tx.execute(
            "INSERT INTO es_view_checkpoints (view, generation, position) VALUES ($1, $2, $3)
             ON CONFLICT (view, generation) DO UPDATE SET position = EXCLUDED.position",
            &[&self.view, &self.generation, &(checkpoint as i64)],
        )
        .await
        .map_err(pg("writing a checkpoint"))?;
        tx.commit().await.map_err(pg("writing a batch"))
    }
}
