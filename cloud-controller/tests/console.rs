//! The agents' console API against a real controller: login with Argon2id
//! passwords, cookies, CSRF, login rate limit, and each role against each
//! endpoint.

mod support;
use support::*;

use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

struct Env {
    ctl: cloud_controller::Controller,
    token: CancellationToken,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.console.login_max_failures = 3;
        let token = CancellationToken::new();
        let ctl = cloud_controller::run(c, token.clone()).await.unwrap();
        Env {
            http: client(&ctl),
            ctl,
            token,
            _dir: dir,
        }
    }

    fn url(&self, p: &str) -> String {
        format!("{}{p}", self.ctl.base_url)
    }

    /// Create an agent through the operator API; returns its id.
    async fn agent(&self, username: &str, role: &str) -> String {
        let r = self
            .http
            .post(self.url("/api/v1/agents"))
            .bearer_auth(&self.ctl.admin_token)
            .json(&serde_json::json!({
                "username": username, "display_name": username, "role": role,
                "password": "a long enough password", "languages": ["en"], "capacity": 3
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Log in; returns (cookie header value, csrf).
    async fn login(&self, username: &str) -> (String, String) {
        let r = self
            .http
            .post(self.url("/console/api/login"))
            .json(
                &serde_json::json!({ "username": username, "password": "a long enough password" }),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let set = r.headers()[reqwest::header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_owned();
        let body: serde_json::Value = r.json().await.unwrap();
        (cookie, body["csrf"].as_str().unwrap().to_owned())
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        session: Option<&(String, String)>,
        body: Option<serde_json::Value>,
    ) -> StatusCode {
        let mut r = self.http.request(method, self.url(path));
        if let Some((cookie, csrf)) = session {
            r = r.header("cookie", cookie).header("x-csrf-token", csrf);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap().status()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sessions_and_csrf() {
    let env = Env::start().await;
    env.agent("ada", "agent").await;
    let (cookie, csrf) = env.login("ada").await;
    let me: serde_json::Value = env
        .http
        .get(env.url("/console/api/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["agent"]["username"], "ada");
    assert!(
        me["agent"].get("password_hash").is_none(),
        "no secrets in responses"
    );
    let (cookie2, _) = env.login("ada").await;
    assert_ne!(cookie, cookie2, "a fresh token at every login");
    // State-changing requests need the CSRF token.
    let r = env
        .http
        .post(env.url("/console/api/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = env
        .http
        .post(env.url("/console/api/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = env
        .http
        .post(env.url("/console/api/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = env
        .http
        .get(env.url("/console/api/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "logged out");
    let r = env
        .http
        .get(env.url("/console/api/me"))
        .header("cookie", "edgedesk_session=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    env.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_neutral_and_rate_limited() {
    let env = Env::start().await;
    env.agent("ada", "agent").await;
    let attempt = |user: &str, pw: &str| {
        env.http
            .post(env.url("/console/api/login"))
            .json(&serde_json::json!({ "username": user, "password": pw }))
            .send()
    };
    let a = attempt("ada", "wrong password").await.unwrap();
    let b = attempt("nobody", "wrong password").await.unwrap();
    assert_eq!(
        (a.status(), b.status()),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    let (a, b) = (a.text().await.unwrap(), b.text().await.unwrap());
    assert_eq!(a, b, "unknown user and wrong password look alike");
    assert!(
        a.contains("wrong username or password"),
        "the page can say what went wrong: {a}"
    );
    attempt("ada", "wrong again").await.unwrap();
    attempt("ada", "and again").await.unwrap();
    let blocked = attempt("ada", "a long enough password").await.unwrap();
    assert_eq!(
        blocked.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    assert!(blocked.headers().contains_key("retry-after"));
    // A locked account does not lock out a colleague at the same address.
    env.agent("bea", "agent").await;
    let (cookie, _) = env.login("bea").await;
    assert!(!cookie.is_empty());
    // Oversized names and passwords are refused before anything else.
    let long = attempt(&"x".repeat(65), "whatever").await.unwrap();
    assert_eq!(long.status(), StatusCode::BAD_REQUEST);
    assert!(long.text().await.unwrap().contains("at most 64 bytes"));
    let long = attempt("bea", &"p".repeat(1025)).await.unwrap();
    assert_eq!(long.status(), StatusCode::BAD_REQUEST);
    env.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_burst_of_guesses_gets_no_more_tries_than_the_limit() {
    let env = Env::start().await; // 3 failures per user
    env.agent("cy", "agent").await;
    let tries = (0..12).map(|i| {
        env.http
            .post(env.url("/console/api/login"))
            .json(&serde_json::json!({ "username": "cy", "password": format!("guess {i}") }))
            .send()
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(tries)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(checked, 3, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED
            || *s == StatusCode::TOO_MANY_REQUESTS
            || *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    env.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_clients_are_limited_apart_and_others_cannot_pick_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.console.login_max_failures_per_address = 2;
    c.http.trusted_proxies = vec!["127.0.0.1".into()];
    let token = CancellationToken::new();
    let ctl = cloud_controller::run(c, token.clone()).await.unwrap();
    let http = client(&ctl);
    let try_from = |client_ip: &str, user: &str| {
        http.post(format!("{}/console/api/login", ctl.base_url))
            .header("x-forwarded-for", client_ip)
            .json(&serde_json::json!({ "username": user, "password": "wrong password" }))
            .send()
    };
    // One client guessing names is stopped at its address's limit…
    for user in ["u1", "u2"] {
        assert_eq!(try_from("198.51.100.7", user).await.unwrap().status(), 401);
    }
    assert_eq!(try_from("198.51.100.7", "u3").await.unwrap().status(), 429);
    // …and another client behind the same proxy is not.
    assert_eq!(try_from("198.51.100.8", "u4").await.unwrap().status(), 401);
    token.cancel();

    // Without trusting the proxy, the header is ignored: every request is
    // the peer's, whatever address it claims.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.console.login_max_failures_per_address = 2;
    let token = CancellationToken::new();
    let ctl = cloud_controller::run(c, token.clone()).await.unwrap();
    let http = client(&ctl);
    for (i, ip) in ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
        .iter()
        .enumerate()
    {
        let status = http
            .post(format!("{}/console/api/login", ctl.base_url))
            .header("x-forwarded-for", *ip)
            .json(&serde_json::json!({ "username": format!("n{i}"), "password": "wrong password" }))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, if i < 2 { 401 } else { 429 }, "{ip}");
    }
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_endpoint() {
    use reqwest::Method;
    let env = Env::start().await;
    let target = env.agent("target", "agent").await;
    env.agent("agent1", "agent").await;
    env.agent("super1", "supervisor").await;
    env.agent("admin1", "admin").await;
    let sessions = [
        ("agent", Some(env.login("agent1").await)),
        ("supervisor", Some(env.login("super1").await)),
        ("admin", Some(env.login("admin1").await)),
        ("anonymous", None),
    ];
    let new_agent = |n: &str| {
        serde_json::json!({ "username": n, "display_name": n, "role": "agent",
            "password": "a long enough password", "languages": ["zh"], "capacity": 2 })
    };
    // (role, method, path, body, expected)
    let mut expectations = Vec::new();
    for (role, _) in &sessions {
        let ok = |min: &str| {
            let rank = |r: &str| {
                ["agent", "supervisor", "admin"]
                    .iter()
                    .position(|x| *x == r)
            };
            match (rank(role), rank(min)) {
                (None, _) => StatusCode::UNAUTHORIZED,
                (Some(a), Some(b)) if a >= b => StatusCode::OK,
                _ => StatusCode::FORBIDDEN,
            }
        };
        expectations.push((
            *role,
            Method::GET,
            "/console/api/me".to_owned(),
            None,
            ok("agent"),
        ));
        expectations.push((
            *role,
            Method::GET,
            "/console/api/agents".to_owned(),
            None,
            ok("supervisor"),
        ));
        let created = if ok("admin") == StatusCode::OK {
            StatusCode::CREATED
        } else {
            ok("admin")
        };
        expectations.push((
            *role,
            Method::POST,
            "/console/api/agents".to_owned(),
            Some(new_agent(&format!("new-{role}"))),
            created,
        ));
        let disabled = if ok("admin") == StatusCode::OK {
            StatusCode::NO_CONTENT
        } else {
            ok("admin")
        };
        expectations.push((
            *role,
            Method::POST,
            format!("/console/api/agents/{target}/disable"),
            None,
            disabled,
        ));
        // The rest of the console API: (method, path, body, least role, status once allowed).
        let canned =
            serde_json::json!({ "lang": "en", "shortcut": format!("s-{role}"), "text": "Hello" });
        let rest: [(Method, &str, Option<serde_json::Value>, &str, StatusCode); 27] = [
            (
                Method::GET,
                "/console/api/chats",
                None,
                "agent",
                StatusCode::OK,
            ),
            (
                Method::GET,
                "/console/api/chats/no-such-chat",
                None,
                "agent",
                StatusCode::NOT_FOUND,
            ),
            (
                Method::GET,
                "/console/api/tickets",
                None,
                "agent",
                StatusCode::OK,
            ),
            (
                Method::POST,
                "/console/api/tickets/no-such/claim",
                None,
                "agent",
                StatusCode::NOT_FOUND,
            ),
            (
                Method::POST,
                "/console/api/tickets/no-such/resolve",
                Some(serde_json::json!({ "note": "done" })),
                "agent",
                StatusCode::NOT_FOUND,
            ),
            (
                Method::GET,
                "/console/api/tickets/no-such/transcript",
                None,
                "agent",
                StatusCode::NOT_FOUND,
            ),
            (
                Method::GET,
                "/console/api/canned",
                None,
                "agent",
                StatusCode::OK,
            ),
            (
                Method::POST,
                "/console/api/canned",
                Some(canned),
                "supervisor",
                StatusCode::OK,
            ),
            (
                Method::DELETE,
                "/console/api/canned/999999",
                None,
                "supervisor",
                StatusCode::NOT_FOUND,
            ),
            (
                Method::GET,
                "/console/api/dashboard",
                None,
                "supervisor",
                StatusCode::OK,
            ),
            (
                Method::GET,
                "/console/api/colleagues",
                None,
                "agent",
                StatusCode::OK,
            ),
            (
                Method::GET,
                "/console/api/samples",
                None,
                "agent",
                StatusCode::OK,
            ),
            (
                Method::POST,
                "/console/api/samples/no-such/label",
                Some(serde_json::json!({ "label": "card_arrival" })),
                "agent",
                StatusCode::NOT_FOUND,
            ),
            (
                Method::POST,
                "/console/api/samples/no-such/label",
                Some(serde_json::json!({ "label": "Not A Label!" })),
                "agent",
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::GET,
                "/console/api/samples/no-such/conversation",
                None,
                "agent",
                StatusCode::NOT_FOUND,
            ),
            (
                Method::GET,
                "/console/api/review",
                None,
                "supervisor",
                StatusCode::OK,
            ),
            (
                Method::POST,
                "/console/api/samples/no-such/review",
                Some(serde_json::json!({})),
                "supervisor",
                StatusCode::NOT_FOUND,
            ),
            (
                Method::GET,
                "/console/api/answers",
                None,
                "supervisor",
                StatusCode::OK,
            ),
            (
                Method::PUT,
                "/console/api/answers/queue_number",
                Some(serde_json::json!({ "en": "Take a number.", "zh": "" })),
                "supervisor",
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::DELETE,
                "/console/api/answers/no_such",
                None,
                "supervisor",
                StatusCode::NOT_FOUND,
            ),
            (
                Method::GET,
                "/console/api/trainings",
                None,
                "supervisor",
                StatusCode::OK,
            ),
            (
                Method::POST,
                "/console/api/trainings",
                None,
                "supervisor",
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                "/console/api/trainings/no-such/approve",
                None,
                "supervisor",
                StatusCode::NOT_FOUND,
            ),
            (
                Method::GET,
                "/console/api/suggestions",
                None,
                "supervisor",
                StatusCode::OK,
            ),
            (
                Method::POST,
                "/console/api/suggestions/no-such/accept",
                Some(serde_json::json!({ "intent": "card_arrival" })),
                "supervisor",
                StatusCode::NOT_FOUND,
            ),
            (
                Method::POST,
                "/console/api/suggestions/no-such/accept",
                Some(serde_json::json!({ "intent": "Not A Label!" })),
                "supervisor",
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                "/console/api/suggestions/no-such/dismiss",
                None,
                "supervisor",
                StatusCode::NOT_FOUND,
            ),
        ];
        for (method, path, body, min, allowed) in rest {
            let want = if ok(min) == StatusCode::OK {
                allowed
            } else {
                ok(min)
            };
            expectations.push((*role, method, path.to_owned(), body, want));
        }
    }
    // Admin last so that the target is still there for the others' attempts.
    expectations.sort_by_key(|e| e.0 == "admin");
    for (role, method, path, body, want) in expectations {
        let session = sessions.iter().find(|s| s.0 == role).unwrap().1.as_ref();
        let got = env.call(method.clone(), &path, session, body).await;
        assert_eq!(got, want, "{role} {method} {path}");
    }
    // The disabled agent cannot log in any more.
    let r = env
        .http
        .post(env.url("/console/api/login"))
        .json(&serde_json::json!({ "username": "target", "password": "a long enough password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    env.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_search_respects_roles() {
    let env = Env::start().await;
    let a1 = env.agent("agent1", "agent").await;
    let a2 = env.agent("agent2", "agent").await;
    env.agent("super1", "supervisor").await;
    let store = &env.ctl.store;
    ingest(
        store,
        "branch-a",
        vec![escalation(
            "chat-1",
            "zh",
            &["card_swallowed"],
            &["我的银行卡被ATM吞了"],
            10,
        )],
        10,
    )
    .await;
    store.chat_assign("chat-1", &a1, 12).await.unwrap();
    ingest(
        store,
        "branch-b",
        vec![escalation(
            "chat-2",
            "en",
            &[],
            &["my mortgage payment bounced"],
            20,
        )],
        20,
    )
    .await;
    store.chat_assign("chat-2", &a2, 22).await.unwrap();
    let s1 = env.login("agent1").await;
    let sup = env.login("super1").await;
    let list = |session: &(String, String), query: &str| {
        let req = env
            .http
            .get(env.url(&format!("/console/api/chats{query}")))
            .header("cookie", &session.0);
        async move {
            let v: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
            v.as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(&s1, "").await,
        vec!["chat-1"],
        "an agent sees only their chats"
    );
    assert_eq!(
        list(&sup, "").await,
        vec!["chat-2", "chat-1"],
        "a supervisor sees all, newest first"
    );
    assert_eq!(
        list(&sup, "?q=%E9%93%B6%E8%A1%8C%E5%8D%A1").await,
        vec!["chat-1"],
        "Chinese full text"
    );
    assert_eq!(list(&sup, "?q=mortgage").await, vec!["chat-2"]);
    assert_eq!(list(&sup, "?node=branch-a").await, vec!["chat-1"]);
    assert_eq!(
        list(&sup, "?intent=card_swallowed").await,
        vec!["chat-1"],
        "by intent"
    );
    assert_eq!(
        list(&sup, "?since=15&until=25").await,
        vec!["chat-2"],
        "by date range"
    );
    assert_eq!(
        list(&s1, "?q=mortgage").await,
        Vec::<String>::new(),
        "search cannot reach others' chats"
    );
    let status = |session: &(String, String), id: &str| {
        let req = env
            .http
            .get(env.url(&format!("/console/api/chats/{id}")))
            .header("cookie", &session.0);
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(status(&s1, "chat-1").await, StatusCode::OK);
    assert_eq!(status(&s1, "chat-2").await, StatusCode::FORBIDDEN);
    assert_eq!(status(&sup, "chat-2").await, StatusCode::OK);
    assert_eq!(status(&sup, "nope").await, StatusCode::NOT_FOUND);
    assert_eq!(
        env.http
            .get(env.url("/console/api/chats"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    env.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_and_canned_responses_by_role() {
    use reqwest::Method;
    let env = Env::start().await;
    env.agent("agent1", "agent").await;
    env.agent("agent2", "agent").await;
    env.agent("super1", "supervisor").await;
    ingest_with_ids(
        &env.ctl.store,
        "branch-a",
        vec!["t1".into()],
        vec![edgedesk_common::event::EventBody::OfflineMessage(
            edgedesk_common::event::OfflineMessage {
                conversation: "conv".into(),
                lang: edgedesk_common::chat::Lang::En,
                name: "Ada".into(),
                contact: "+44 20".into(),
                message: "call me back".into(),
            },
        )],
        5,
    )
    .await;
    let (s1, s2, sup) = (
        env.login("agent1").await,
        env.login("agent2").await,
        env.login("super1").await,
    );
    let count = |s: &(String, String)| {
        let req = env
            .http
            .get(env.url("/console/api/tickets"))
            .header("cookie", &s.0);
        async move {
            req.send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(
        count(&s2).await,
        1,
        "open tickets are visible to every agent"
    );
    assert_eq!(
        env.call(
            Method::POST,
            "/console/api/tickets/t1/claim",
            Some(&s1),
            None
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        env.call(
            Method::POST,
            "/console/api/tickets/t1/claim",
            Some(&s2),
            None
        )
        .await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        count(&s2).await,
        0,
        "a ticket claimed by someone else is not listed"
    );
    assert_eq!(count(&sup).await, 1, "supervisors see every ticket");
    // The conversation behind it: its agent and supervisors, not a colleague;
    // before the branch has sent the conversation, a 404 that says why.
    let transcript = "/console/api/tickets/t1/transcript";
    assert_eq!(
        env.call(Method::GET, transcript, Some(&s2), None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        env.call(Method::GET, transcript, Some(&s1), None).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        env.call(Method::GET, transcript, Some(&sup), None).await,
        StatusCode::NOT_FOUND
    );
    let note = Some(serde_json::json!({ "note": "called back, card ordered" }));
    assert_eq!(
        env.call(
            Method::POST,
            "/console/api/tickets/t1/resolve",
            Some(&s2),
            note.clone()
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        env.call(
            Method::POST,
            "/console/api/tickets/t1/resolve",
            Some(&s1),
            note.clone()
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        env.call(
            Method::POST,
            "/console/api/tickets/t1/resolve",
            Some(&s1),
            note
        )
        .await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        env.call(
            Method::POST,
            "/console/api/tickets/nope/claim",
            Some(&s1),
            None
        )
        .await,
        StatusCode::NOT_FOUND
    );

    let canned =
        serde_json::json!({ "lang": "zh", "shortcut": "hi", "text": "您好，请问有什么可以帮您？" });
    assert_eq!(
        env.call(
            Method::POST,
            "/console/api/canned",
            Some(&s1),
            Some(canned.clone())
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        env.call(
            Method::POST,
            "/console/api/canned",
            Some(&sup),
            Some(canned)
        )
        .await,
        StatusCode::OK
    );
    let bad = serde_json::json!({ "lang": "fr", "shortcut": "has space", "text": "" });
    assert_eq!(
        env.call(Method::POST, "/console/api/canned", Some(&sup), Some(bad))
            .await,
        StatusCode::BAD_REQUEST
    );
    let list: serde_json::Value = env
        .http
        .get(env.url("/console/api/canned"))
        .header("cookie", &s1.0)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["shortcut"], "hi");
    let id = list[0]["id"].as_i64().unwrap();
    assert_eq!(
        env.call(
            Method::DELETE,
            &format!("/console/api/canned/{id}"),
            Some(&s1),
            None
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        env.call(
            Method::DELETE,
            &format!("/console/api/canned/{id}"),
            Some(&sup),
            None
        )
        .await,
        StatusCode::NO_CONTENT
    );
    env.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_dashboard() {
    let env = Env::start().await;
    let a = env.agent("agent1", "agent").await;
    env.agent("super1", "supervisor").await;
    let now = chrono::Utc::now().timestamp_millis();
    let store = &env.ctl.store;
    for (i, (frt_ms, rating)) in [(4_000, Some(5u8)), (8_000, Some(3u8)), (6_000, None)]
        .into_iter()
        .enumerate()
    {
        let id = format!("c{i}");
        ingest(store, "n", vec![escalation(&id, "en", &[], &[], now)], now).await;
        store.chat_assign(&id, &a, now).await.unwrap();
        store
            .chat_add_line(&id, "x", "agent", Some(&a), "hi", now + frt_ms)
            .await
            .unwrap();
        if let Some(score) = rating {
            ingest(
                store,
                "n",
                vec![edgedesk_common::event::EventBody::Rating(
                    edgedesk_common::event::Rating {
                        conversation: id.clone(),
                        score,
                    },
                )],
                now,
            )
            .await;
        }
    }
    let agent = env.login("agent1").await;
    let sup = env.login("super1").await;
    let get = |s: &(String, String)| {
        env.http
            .get(env.url("/console/api/dashboard"))
            .header("cookie", &s.0)
            .send()
    };
    assert_eq!(get(&agent).await.unwrap().status(), StatusCode::FORBIDDEN);
    let d: serde_json::Value = get(&sup).await.unwrap().json().await.unwrap();
    let today = d["days"].as_array().unwrap().last().unwrap();
    assert_eq!(today["chats"], 3);
    assert!(
        (today["first_response_s"].as_f64().unwrap() - 6.0).abs() < 1e-9,
        "{today}"
    );
    assert!(
        (today["csat"].as_f64().unwrap() - 4.0).abs() < 1e-9,
        "{today}"
    );
    assert_eq!(d["live"]["waiting"], 0);
    assert_eq!(d["nodes_online"], 0);
    env.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colleagues_for_transfer_need_a_session() {
    let env = Env::start().await;
    env.agent("agent1", "agent").await;
    let s1 = env.login("agent1").await;
    let r = env
        .http
        .get(env.url("/console/api/colleagues"))
        .header("cookie", &s1.0)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!([]),
        "nobody else is online"
    );
    assert_eq!(
        env.http
            .get(env.url("/console/api/colleagues"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    env.token.cancel();
}
