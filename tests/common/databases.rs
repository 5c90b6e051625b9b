//! Databases for the catalog's backends: a SQLite file, or a fresh database on the PostgreSQL
//! or MariaDB server that scripts/test-databases.sh started (`make test` runs it).

use std::sync::atomic::{AtomicUsize, Ordering};

use imgsearch::catalog::Backend;
use sqlx::Connection;

pub const BACKENDS: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::MySql];

/// A database of its own for one scenario on one backend.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// The test servers' address (no database); the run fails, not skips, without them.
fn server_url(backend: Backend) -> String {
    let variable = match backend {
        Backend::Postgres => "IMGSEARCH_TEST_POSTGRES_URL",
        Backend::MySql => "IMGSEARCH_TEST_MYSQL_URL",
        Backend::Sqlite => unreachable!("SQLite needs no server"),
    };
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run the tests with `make test` (it starts the database servers)")
    })
}

pub async fn fresh_database(backend: Backend, purpose: &str) -> TestDatabase {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = format!("imgsearch_{purpose}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            TestDatabase { url: format!("sqlite://{}", dir.path().join("catalog.db").display()), _dir: Some(dir) }
        }
        Backend::Postgres => {
            let server = server_url(backend);
            let mut admin =
                sqlx::PgConnection::connect(&format!("{server}/postgres")).await.expect("connect to PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create a database");
            TestDatabase { url: format!("{server}/{name}"), _dir: None }
        }
        Backend::MySql => {
            let server = server_url(backend);
            let mut admin = sqlx::MySqlConnection::connect(&server).await.expect("connect to MariaDB");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create a database");
            TestDatabase { url: format!("{server}/{name}"), _dir: None }
        }
    }
}

/// A fresh PostgreSQL database for one scenario, reached through a forwarder the test cuts or
/// black-holes to make an outage, and the catalog opened through that forwarder.
pub struct CatalogBehindALink {
    pub catalog: imgsearch::catalog::Catalog,
    pub link: super::outage::Outage,
    _database: TestDatabase,
}

pub async fn postgres_catalog_behind_a_link(purpose: &str) -> CatalogBehindALink {
    let database = fresh_database(Backend::Postgres, purpose).await;
    let (user, rest) = database.url.rsplit_once('@').expect("a PostgreSQL URL with a host");
    let (address, name) = rest.split_once('/').expect("a PostgreSQL URL with a database");
    let link = super::outage::Outage::forward_to(address.to_string()).await;
    let catalog = imgsearch::catalog::Catalog::open(&format!("{user}@{}/{name}", link.address))
        .await
        .expect("open the catalog through the forwarder");
    CatalogBehindALink { catalog, link, _database: database }
}
