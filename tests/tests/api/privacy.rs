use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, spawn_app};
use piaojia_tests::samples;
use sqlx::Connection as _;

const PERSONAL: [&str; 4] = ["张三丰", "11010519491231002X", "13800138000", "zhangsan@example.com"];

/// Everything the database holds, as text: every column of every row.
async fn raw_dump(mode: Mode, app: &piaojia_tests::harness::TestApp) -> String {
    match mode {
        Mode::ScaleOut => {
            let url = app.config.env["DATABASE_URL"].clone();
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            let mut dump = String::new();
            for table in ["receipts", "deliveries", "apps", "app_secrets", "agencies"] {
                let rows: Vec<(String,)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT t::text FROM {table} t")))
                        .fetch_all(&mut conn)
                        .await
                        .expect("dump");
                dump.extend(rows.into_iter().map(|r| r.0));
            }
            dump
        }
        Mode::Embedded => {
            // The SQLite file and its write-ahead log, byte for byte.
            let dir = app.config.data_dir.path();
            let mut bytes = std::fs::read(dir.join("piaojia.db")).expect("db file");
            if let Ok(wal) = std::fs::read(dir.join("piaojia.db-wal")) {
                bytes.extend(wal);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }
}

both_modes!(personal_data_is_encrypted_at_rest, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    assert_eq!(app.push(&issuer, &samples::outpatient(1)).await.status().as_u16(), 201);
    let dump = raw_dump(mode, &app).await;
    assert!(dump.contains("0000000001"), "the dump does see the receipt");
    for value in PERSONAL {
        assert!(!dump.contains(value), "{value} is stored in plain text");
    }
    assert!(!dump.contains(&issuer.secret), "app secrets are sealed too");

    // The blind index matches without decrypting.
    let agency = app
        .store
        .agency_by_code(&issuer.agency_code)
        .await
        .expect("db")
        .expect("agency");
    let stored = app
        .store
        .receipt(agency.id, "11060124", "0000000001")
        .await
        .expect("db")
        .expect("receipt");
    assert_eq!(
        stored.payer_id_index,
        Some(app.keyring.blind_index("id_card", "11010519491231002x"))
    );
    assert_eq!(
        stored.payer_phone_index,
        Some(app.keyring.blind_index("phone", "13800138000"))
    );
});
