//! The controller on PostgreSQL (Debian's package, a cluster of the test's
//! own), as an operator meets it at start: a server that is down, a
//! database that does not exist and a schema newer than the build are each
//! named, with exit code 74 and nothing changed; the right URL serves. And
//! an active controller whose lock another session took stops (fencing).

use std::path::Path;
use std::process::Command;

use edgedesk_systest::process::CtlProcess;
use edgedesk_systest::*;

fn controller() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_systest-cloud-controller"))
}

/// `cloud-controller serve` on `data` and `url` until it exits by itself:
/// exit code and what it said.
fn serve_fails(data: &Path, url: &str) -> (i32, String) {
    let out = Command::new(controller())
        .arg("serve")
        .envs(store_env(data))
        .env("EDGEDESK_CC_STORE__POSTGRES_URL", format!("{url:?}"))
        .env("EDGEDESK_CC_HTTP__LISTEN", "\"127.0.0.1:0\"")
        .env(
            "EDGEDESK_CC_MQTT__LISTEN",
            format!("\"127.0.0.1:{}\"", free_port()),
        )
        .env("EDGEDESK_CC_MODELS__QUIC_LISTEN", "\"127.0.0.1:0\"")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_missing_or_too_new_is_named_at_start() {
    let pg = PgCluster::start();
    let data = tempfile::tempdir().unwrap();

    let (code, said) = serve_fails(data.path(), "postgres://edgedesk@127.0.0.1:1/edgedesk");
    assert_eq!(code, 74, "{said}");
    assert!(said.contains("Connection refused"), "{said}");

    let missing = format!("{} dbname=no_such_db", pg.url);
    let (code, said) = serve_fails(data.path(), &missing);
    assert_eq!(code, 74, "{said}");
    assert!(
        said.contains("database \"no_such_db\" does not exist"),
        "{said}"
    );

    // The right database: it serves (an enrolment token made through the API
    // lands in PostgreSQL, checked below).
    let (http, mqtt) = (free_port(), free_port());
    let extra = [("EDGEDESK_CC_STORE__POSTGRES_URL", format!("{:?}", pg.url))];
    let mut ctl = CtlProcess::start(controller(), data.path(), http, mqtt, &extra).await;
    ctl.token_for("branch-1").await;
    ctl.kill();

    // A newer build's schema: refused by name, nothing changed.
    let url = pg.url.clone();
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute("INSERT INTO schema_version (version) VALUES (999)")
            .unwrap();
    })
    .join()
    .unwrap();
    let (code, said) = serve_fails(data.path(), &pg.url);
    assert_eq!(code, 74, "{said}");
    assert!(
        said.contains("version 999 is newer than this build supports"),
        "{said}"
    );
    let url = pg.url.clone();
    let tokens: i64 = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query_one("SELECT COUNT(*) FROM tokens", &[])
            .unwrap()
            .get(0)
    })
    .join()
    .unwrap();
    assert_eq!(
        tokens, 1,
        "the enrolment token made through the API is kept"
    );
}

/// Fencing: when the active controller's lock session is gone and another
/// session takes the lock before it can take it back (here the test plays
/// that other replica), the controller stops acting and exits (74,
/// "leadership lost") rather than run beside the new holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_controller_that_loses_the_lock_to_another_stops() {
    let pg = PgCluster::start();
    let data = tempfile::tempdir().unwrap();
    let extra = [("EDGEDESK_CC_STORE__POSTGRES_URL", format!("{:?}", pg.url))];
    let mut ctl =
        CtlProcess::start(controller(), data.path(), free_port(), free_port(), &extra).await;
    ctl.token_for("branch-1").await;
    // Another replica: end the controller's lock session and queue for the
    // lock, which it gets the moment that session is gone.
    let url = pg.url.clone();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let ended: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(l.pid, 5000) FROM pg_locks l
                   WHERE l.locktype = 'advisory' AND l.granted
                     AND l.classid::bigint = $1 AND l.objid::bigint = $2) AS t",
                &[
                    &(cloud_controller::store::election::LEADER_LOCK >> 32),
                    &(cloud_controller::store::election::LEADER_LOCK & 0xffff_ffff),
                ],
            )
            .unwrap()
            .get(0);
        assert_eq!(ended, 1, "the controller held the leader lock");
        c.execute(
            "SELECT pg_advisory_lock($1)",
            &[&cloud_controller::store::election::LEADER_LOCK],
        )
        .unwrap();
        held_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    held_rx.recv().unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let code = loop {
        if let Some(status) = ctl.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller still runs 20 s after losing the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        code,
        Some(74),
        "the controller stopped with leadership lost"
    );
    release_tx.send(()).unwrap();
    other.join().unwrap();
}
