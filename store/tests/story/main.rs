//! The storage story, told once and run on both backends. The story is cut by
//! role like the store: each module below holds the chapters of one role, every
//! chapter is a plain async function over a fresh, empty database, and
//! `chapters!` turns each into a PostgreSQL and a SQLite test
//! (`<role>::<chapter>::postgres`, `<role>::<chapter>::sqlite`).
//!
//! Databases come from the one fixture of the suites,
//! [`piaojia_store::testing::FreshDatabase`]: PostgreSQL from
//! `PIAOJIA_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`),
//! dropped after a chapter that passed (a failed chapter's is kept for
//! inspection); SQLite in a temporary directory.

use std::sync::Arc;

use piaojia_store::testing::FreshDatabase;
use piaojia_store::{Backend, ConnectOptions, Store, connect};

use crate::support::TestResult;

/// Turns each named chapter (`async fn(&Fixture) -> TestResult` in the calling
/// module) into a PostgreSQL and a SQLite test.
macro_rules! chapters {
    ($($chapter:ident),* $(,)?) => {$(
        mod $chapter {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() -> crate::support::TestResult {
                crate::run(piaojia_store::Backend::Postgres, super::$chapter).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() -> crate::support::TestResult {
                crate::run(piaojia_store::Backend::Sqlite, super::$chapter).await
            }
        }
    )*};
}

mod support;

mod database;
mod figures;
mod inbox;
mod intake;
mod queue;
mod tenants;
mod times;
mod wallets;

/// One fresh database of a chapter; `open` may be called repeatedly (reopening).
pub struct Fixture {
    pub db: FreshDatabase,
}

impl Fixture {
    pub fn backend(&self) -> Backend {
        self.db.backend
    }

    /// The store on this database, not migrated.
    pub async fn open(&self) -> Result<Arc<dyn Store>, support::Error> {
        Ok(connect(&ConnectOptions::new(self.db.url.clone(), 8)).await?)
    }

    /// The store on this database, migrated.
    pub async fn migrated(&self) -> Result<Arc<dyn Store>, support::Error> {
        let store = self.open().await?;
        store.migrate().await?;
        Ok(store)
    }
}

/// Runs a chapter on a fresh database of `backend`.
pub async fn run(backend: Backend, chapter: impl AsyncFnOnce(&Fixture) -> TestResult) -> TestResult {
    let fixture = Fixture {
        db: FreshDatabase::new(backend).await?,
    };
    let outcome = chapter(&fixture).await;
    // Keep the database of a failed chapter for inspection.
    if outcome.is_ok() {
        fixture.db.drop_now().await?;
    }
    outcome
}
