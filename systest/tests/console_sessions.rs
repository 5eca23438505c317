//! A console is authorised by the account as it is now: disabling an agent
//! or changing their role closes their open console within a second, and
//! frames are never authorised from the copy taken at connect.

use std::time::Duration;

use edgedesk_systest::cloud::*;
use edgedesk_systest::process::console_send;
use edgedesk_systest::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// The console's close code within `within`, skipping other frames.
async fn closed_within(ws: &mut ConsoleWs, within: Duration) -> Option<u16> {
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(None | Some(Err(_))) => return Some(0),
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn agent(cloud: &Cloud, username: &str, role: &str) -> String {
    cloud
        .post(
            "/api/v1/agents",
            serde_json::json!({ "username": username, "display_name": username, "role": role,
                "password": "a long enough password", "languages": ["en"], "capacity": 2 }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// An operator API call; the response.
async fn admin(cloud: &Cloud, path: &str, body: serde_json::Value) -> reqwest::Response {
    cloud
        .http
        .post(cloud.url(path))
        .bearer_auth(&cloud.ctl.admin_token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn me(cloud: &Cloud, cookie: &str) -> reqwest::Response {
    cloud
        .http
        .get(cloud.url("/console/api/me"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_agents_console_closes_within_a_second() {
    let cloud = Cloud::start().await;
    let grace = agent(&cloud, "grace", "agent").await;
    let cookie = cloud.console_cookie("grace").await;
    let mut ws = cloud.console("grace").await;
    // An unrelated change leaves the socket open.
    let other = agent(&cloud, "henry", "agent").await;
    let r = admin(
        &cloud,
        &format!("/api/v1/agents/{other}/disable"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        closed_within(&mut ws, Duration::from_millis(500)).await,
        None
    );

    let r = admin(
        &cloud,
        &format!("/api/v1/agents/{grace}/disable"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        closed_within(&mut ws, Duration::from_secs(1)).await,
        Some(4401),
        "the disabled agent's console is closed at once"
    );
    assert_eq!(me(&cloud, &cookie).await.status(), 401);
    cloud.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_supervisor_reconnects_as_an_agent_and_loses_supervisor_rights() {
    let cloud = Cloud::start().await;
    let sam = agent(&cloud, "sam", "supervisor").await;
    let cookie = cloud.console_cookie("sam").await;
    let dashboard = |cookie: String| {
        let req = cloud
            .http
            .get(cloud.url("/console/api/dashboard"))
            .header("cookie", cookie);
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(dashboard(cookie.clone()).await, 200);
    let mut ws = cloud.console("sam").await;
    let r = admin(
        &cloud,
        &format!("/api/v1/agents/{sam}/role"),
        serde_json::json!({ "role": "agent" }),
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        closed_within(&mut ws, Duration::from_secs(1)).await,
        Some(4401)
    );
    // The session lives on with the new role: the page reloads as an agent.
    let now: serde_json::Value = me(&cloud, &cookie).await.json().await.unwrap();
    assert_eq!(now["agent"]["role"], "agent");
    assert_eq!(dashboard(cookie.clone()).await, 403);
    let mut again = cloud.console("sam").await;
    console_send(
        &mut again,
        serde_json::json!({ "type": "presence", "state": "away" }),
    )
    .await;
    assert_eq!(
        closed_within(&mut again, Duration::from_millis(300)).await,
        None
    );
    // A bad role is refused with a clear error.
    let r = admin(
        &cloud,
        &format!("/api/v1/agents/{sam}/role"),
        serde_json::json!({ "role": "king" }),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("role must be"));
    cloud.token.cancel();
}
