//! sqlx for code that does not name its database: [`query`] binds and runs a statement on
//! PostgreSQL or SQLite, a row's [`Cells`] decode its columns, and [`Time`] and [`List`]
//! are the two values the databases store differently.
//!
//! sqlx's own generic code needs a bound for every type it binds or decodes (`i64:
//! Encode<'q, DB>`, ...), and Rust does not carry such bounds from a trait to its users,
//! so each generic function would repeat them. [`Value`] and [`Column`] instead name both
//! databases at once: whatever both encode, the shared code may bind, and each
//! [`Driver`] impl uses its half.

use std::ops::DerefMut;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use sqlx::{
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgHasArrayType, PgRow},
    sqlite::SqliteRow,
    Database, Decode, Encode, Postgres, Sqlite, Type,
};

use super::DbError;

/// A value both databases bind.
pub(super) trait Value<'q>:
    Encode<'q, Postgres> + Type<Postgres> + Encode<'q, Sqlite> + Type<Sqlite> + Send + 'q
{
}

impl<'q, T> Value<'q> for T where
    T: Encode<'q, Postgres> + Type<Postgres> + Encode<'q, Sqlite> + Type<Sqlite> + Send + 'q
{
}

/// A column type both databases decode.
pub(super) trait Column:
    for<'r> Decode<'r, Postgres> + Type<Postgres> + for<'r> Decode<'r, Sqlite> + Type<Sqlite>
{
}

impl<T> Column for T where T: for<'r> Decode<'r, Postgres> + Type<Postgres> + for<'r> Decode<'r, Sqlite> + Type<Sqlite> {}

/// A row read from either database (`cell`, since `get` is sqlx's own `Row::get`).
pub(super) trait Cells {
    /// The value of `column`, decoded as `T`.
    fn cell<T: Column>(&self, column: &str) -> Result<T, DbError>;

    fn time(&self, column: &str) -> Result<DateTime<Utc>, DbError> {
        Ok(self.cell::<Time>(column)?.0)
    }

    fn optional_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, DbError> {
        Ok(self.cell::<Option<Time>>(column)?.map(|t| t.0))
    }
}

type SqlxQuery<'q, D> = sqlx::query::Query<'q, D, <D as Database>::Arguments<'q>>;

/// The calls of sqlx that the shared code makes, for one database. Implemented below for
/// both by one macro: the body is the same sqlx call for each.
#[async_trait]
pub(super) trait Driver: Database<Row: Cells> {
    fn bind<'q>(query: SqlxQuery<'q, Self>, value: impl Value<'q>) -> SqlxQuery<'q, Self>;
    /// Runs the statement and answers how many rows it changed.
    async fn execute<'q>(query: SqlxQuery<'q, Self>, conn: &mut Self::Connection) -> Result<u64, sqlx::Error>;
    async fn fetch_all<'q>(
        query: SqlxQuery<'q, Self>,
        conn: &mut Self::Connection,
    ) -> Result<Vec<Self::Row>, sqlx::Error>;
    async fn fetch_optional<'q>(
        query: SqlxQuery<'q, Self>,
        conn: &mut Self::Connection,
    ) -> Result<Option<Self::Row>, sqlx::Error>;
    /// The rows one at a time, as the database sends them.
    fn fetch<'e, 'q: 'e>(
        query: SqlxQuery<'q, Self>,
        conn: &'e mut Self::Connection,
    ) -> BoxStream<'e, Result<Self::Row, sqlx::Error>>;
}

macro_rules! driver {
    ($database:ty, $row:ty) => {
        #[async_trait]
        impl Driver for $database {
            fn bind<'q>(query: SqlxQuery<'q, Self>, value: impl Value<'q>) -> SqlxQuery<'q, Self> {
                query.bind(value)
            }

            async fn execute<'q>(query: SqlxQuery<'q, Self>, conn: &mut Self::Connection) -> Result<u64, sqlx::Error> {
                Ok(query.execute(conn).await?.rows_affected())
            }

            async fn fetch_all<'q>(
                query: SqlxQuery<'q, Self>,
                conn: &mut Self::Connection,
            ) -> Result<Vec<Self::Row>, sqlx::Error> {
                query.fetch_all(conn).await
            }

            async fn fetch_optional<'q>(
                query: SqlxQuery<'q, Self>,
                conn: &mut Self::Connection,
            ) -> Result<Option<Self::Row>, sqlx::Error> {
                query.fetch_optional(conn).await
            }

            fn fetch<'e, 'q: 'e>(
                query: SqlxQuery<'q, Self>,
                conn: &'e mut Self::Connection,
            ) -> BoxStream<'e, Result<Self::Row, sqlx::Error>> {
                query.fetch(conn)
            }
        }

        impl Cells for $row {
            fn cell<T: Column>(&self, column: &str) -> Result<T, DbError> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
        }
    };
}

driver!(Postgres, PgRow);
driver!(Sqlite, SqliteRow);

/// A statement with its arguments, for the database `D`; see [`query`].
pub(super) struct Query<'q, D: Driver>(SqlxQuery<'q, D>);

/// `sqlx::query` for either database. Placeholders are `$1`, `$2`, ...: PostgreSQL's own,
/// and SQLite reads `$N` as the N-th argument too (tested below).
pub(super) fn query<D: Driver>(sql: &str) -> Query<'_, D> {
    Query(sqlx::query(sql))
}

impl<'q, D: Driver> Query<'q, D> {
    pub fn bind(self, value: impl Value<'q>) -> Self {
        Query(D::bind(self.0, value))
    }

    /// Runs the statement on `conn` (a pooled connection, or `&mut *tx`) and answers how
    /// many rows it changed.
    pub async fn execute(self, mut conn: impl DerefMut<Target = D::Connection> + Send) -> Result<u64, DbError> {
        Ok(D::execute(self.0, &mut conn).await?)
    }

    pub async fn fetch_all(
        self,
        mut conn: impl DerefMut<Target = D::Connection> + Send,
    ) -> Result<Vec<D::Row>, DbError> {
        Ok(D::fetch_all(self.0, &mut conn).await?)
    }

    pub async fn fetch_optional(
        self,
        mut conn: impl DerefMut<Target = D::Connection> + Send,
    ) -> Result<Option<D::Row>, DbError> {
        Ok(D::fetch_optional(self.0, &mut conn).await?)
    }

    /// The rows one at a time, as the database sends them: for reads too large to hold.
    pub fn fetch<'e>(self, conn: &'e mut D::Connection) -> BoxStream<'e, Result<D::Row, sqlx::Error>>
    where
        'q: 'e,
    {
        D::fetch(self.0, conn)
    }

    pub async fn fetch_one(self, conn: impl DerefMut<Target = D::Connection> + Send) -> Result<D::Row, DbError> {
        self.fetch_optional(conn).await?.ok_or(DbError::Database(sqlx::Error::RowNotFound))
    }
}

/// A point in time as each database stores it: PostgreSQL as `timestamptz`, SQLite as the
/// microseconds since the Unix epoch, so that times compare as numbers there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Time(pub DateTime<Utc>);

impl Type<Postgres> for Time {
    fn type_info() -> <Postgres as Database>::TypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &<Postgres as Database>::TypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Postgres> for Time {
    fn encode_by_ref(&self, buf: &mut <Postgres as Database>::ArgumentBuffer<'q>) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<'q, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Time {
    fn decode(value: <Postgres as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Time(Decode::<Postgres>::decode(value)?))
    }
}

impl Type<Sqlite> for Time {
    fn type_info() -> <Sqlite as Database>::TypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &<Sqlite as Database>::TypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for Time {
    fn encode_by_ref(&self, buf: &mut <Sqlite as Database>::ArgumentBuffer<'q>) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(self.0.timestamp_micros(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Time {
    fn decode(value: <Sqlite as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let micros: i64 = Decode::<Sqlite>::decode(value)?;
        let time = DateTime::from_timestamp_micros(micros).ok_or_else(|| format!("time {micros} is out of range"))?;
        Ok(Time(time))
    }
}

/// A list bound as one argument, for a statement that works on many rows at once:
/// PostgreSQL's array (`= ANY($1)`, `UNNEST($1)`), SQLite's JSON array (`json_each($1)`),
/// which has no arrays.
#[derive(Debug, Clone, Copy)]
pub(super) struct List<'a, T>(pub &'a [T]);

impl<T: PgHasArrayType> Type<Postgres> for List<'_, T> {
    fn type_info() -> <Postgres as Database>::TypeInfo {
        <[T] as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &<Postgres as Database>::TypeInfo) -> bool {
        <[T] as Type<Postgres>>::compatible(ty)
    }
}

impl<'q, T> Encode<'q, Postgres> for List<'_, T>
where
    T: PgHasArrayType + Encode<'q, Postgres> + Type<Postgres>,
{
    fn encode_by_ref(&self, buf: &mut <Postgres as Database>::ArgumentBuffer<'q>) -> Result<IsNull, BoxDynError> {
        <&[T] as Encode<'q, Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<T> Type<Sqlite> for List<'_, T> {
    fn type_info() -> <Sqlite as Database>::TypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q, T: serde::Serialize> Encode<'q, Sqlite> for List<'_, T> {
    fn encode_by_ref(&self, buf: &mut <Sqlite as Database>::ArgumentBuffer<'q>) -> Result<IsNull, BoxDynError> {
        let json = serde_json::to_string(self.0)?;
        Encode::<Sqlite>::encode(json, buf)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    /// The shared statements number their placeholders `$N`; SQLite must bind them by
    /// number, not by order of appearance, and read a repeated one as one argument.
    #[tokio::test]
    async fn sqlite_binds_numbered_placeholders_by_number() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let row = query::<Sqlite>("SELECT $2 AS second, $1 AS first, $2 + $1 AS sum")
            .bind(1i64)
            .bind(10i64)
            .fetch_one(pool.acquire().await.unwrap())
            .await
            .unwrap();
        let read: (i64, i64, i64) = (row.cell("second").unwrap(), row.cell("first").unwrap(), row.cell("sum").unwrap());
        assert_eq!(read, (10, 1, 11));
    }

    #[tokio::test]
    async fn sqlite_keeps_times_as_microseconds_and_lists_as_json() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let at = Time(Utc.timestamp_micros(1_700_000_000_123_456).unwrap());
        let row = query::<Sqlite>(
            "SELECT $1 AS at, typeof($1) AS kind, (SELECT count(*) FROM json_each($2) WHERE value IN ('a', 'c')) AS n",
        )
        .bind(at)
        .bind(List(&["a", "b", "c"]))
        .fetch_one(pool.acquire().await.unwrap())
        .await
        .unwrap();
        assert_eq!(row.cell::<Time>("at").unwrap(), at);
        assert_eq!(row.cell::<String>("kind").unwrap(), "integer");
        assert_eq!(row.cell::<i64>("n").unwrap(), 2);
    }
}
