//! The one fresh-database fixture of the test suites (feature `test-support`):
//! an empty PostgreSQL database per test, created from
//! `PIAOJIA_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! and named `piaojia_test_<uuid>` so `scripts/services.sh` sweeps what a failed
//! run left, or a SQLite file in a temporary directory.

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::{Backend, Result};

pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The PostgreSQL database the suites create their own from.
pub fn test_database_url() -> String {
    std::env::var("PIAOJIA_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned())
}

/// One fresh, empty database. PostgreSQL's is dropped by [`FreshDatabase::drop_now`]
/// (tests keep a failed test's database for inspection); SQLite's file goes with
/// its directory.
pub struct FreshDatabase {
    pub backend: Backend,
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl FreshDatabase {
    pub async fn new(backend: Backend) -> Result<Self> {
        match backend {
            Backend::Postgres => {
                let admin = test_database_url();
                let name = format!("piaojia_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = PgConnection::connect(&admin).await?;
                sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                let mut url = url::Url::parse(&admin)
                    .map_err(|e| crate::StoreError::UnsupportedUrl(format!("PIAOJIA_TEST_DATABASE_URL: {e}")))?;
                url.set_path(&format!("/{name}"));
                Ok(Self {
                    backend,
                    url: url.to_string(),
                    pg_name: Some(name),
                    _dir: None,
                })
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().map_err(|e| crate::StoreError::Database(sqlx::Error::Io(e)))?;
                // A nested path also checks that missing directories are created.
                let path = dir.path().join("nested").join("piaojia.db");
                Ok(Self {
                    backend,
                    url: format!("sqlite://{}", path.display()),
                    pg_name: None,
                    _dir: Some(dir),
                })
            }
        }
    }

    /// Drops the PostgreSQL database (closing every connection to it).
    pub async fn drop_now(&self) -> Result<()> {
        if let Some(name) = &self.pg_name {
            let mut conn = PgConnection::connect(&test_database_url()).await?;
            sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                .execute(&mut conn)
                .await?;
            conn.close().await?;
        }
        Ok(())
    }
}
