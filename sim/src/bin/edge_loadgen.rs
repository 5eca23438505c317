//! `edge-loadgen`: opens N chat sessions against an edge node, sends at a set
//! rate, and reports throughput and round-trip latency (send → first reply).
//!
//! Open loop by default (`--mode open`, as wrk2 does): each session sends on
//! its schedule whatever the replies do, and latency is measured from when
//! the message was *due*, so a node that falls behind shows its queue in the
//! figures instead of slowing the generator down (coordinated omission).
//! Turns the node refuses with `busy` are counted as shed. `--mode closed`
//! keeps the old behaviour: send, wait for the reply, then wait for the next
//! tick — its figures are labelled closed loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use edgedesk_common::chat::{ClientFrame, PROTOCOL_VERSION, ServerFrame};
use edgedesk_sim::{histogram_buckets, quantile_between, rss_kib, sample_value};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "edge-loadgen",
    about = "Load generator for the edge node's chat WebSocket"
)]
struct Args {
    /// WebSocket URL of the node.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Concurrent sessions (one WebSocket each).
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Messages per second per session.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Measured seconds (after warm-up).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Sessions opened at once while ramping up.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// PID of the node, to report its resident memory (Linux /proc).
    #[arg(long)]
    pid: Option<u32>,
    /// The node's `/metrics` URL: also report, for the measured window, the
    /// model's time per turn and the wait for an inference thread (its
    /// `edgedesk_nlu_latency_seconds` and `edgedesk_nlu_wait_seconds`
    /// histograms, scraped at both ends).
    #[arg(long)]
    metrics: Option<String>,
    /// Send the `text` column of this CSV (e.g. the validation split,
    /// `build/models/validation.csv`) in turn, instead of the twelve
    /// built-in questions, which a model finds easy.
    #[arg(long, value_name = "CSV")]
    texts: Option<std::path::PathBuf>,
    /// What the sessions send (filled from `--texts` after parsing).
    #[arg(skip)]
    utterances: Arc<Vec<String>>,
    /// Print the report as one JSON line as well.
    #[arg(long)]
    json: bool,
    /// `open`: send on schedule regardless of replies; `closed`: wait for
    /// each reply before the next send.
    #[arg(long, default_value = "open", value_parser = ["open", "closed"])]
    mode: String,
}

const UTTERANCES: &[&str] = &[
    "my card still hasn't arrived",
    "how do I activate my new card",
    "what exchange rate do you use",
    "why was my card payment declined",
    "can I top up with a bank transfer",
    "I forgot my passcode",
    "how long does a transfer take",
    "is there a fee for cash withdrawals",
    "新卡什么时候寄到",
    "汇率是多少",
    "hello",
    "thanks",
];

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    replies: AtomicU64,
    errors: AtomicU64,
    /// Turns the node refused with `busy` (load shed).
    shed: AtomicU64,
}

async fn closed_session(
    args: Args,
    n: usize,
    measure_from: Instant,
    stop_at: Instant,
    stats: Arc<Stats>,
    hist: Arc<Mutex<Histogram<u64>>>,
    gate: Arc<tokio::sync::Semaphore>,
) -> Result<(), String> {
    let mut ws = connect(&args.url, &gate).await?;
    let period = Duration::from_secs_f64(1.0 / args.rate);
    // Spread sessions over one period so they do not send in lockstep.
    let offset = period.mul_f64((n % 997) as f64 / 997.0);
    let mut next = tokio::time::Instant::now() + offset;
    let mut i = n;
    let mut local =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    while Instant::now() < stop_at {
        tokio::time::sleep_until(next).await;
        next += period;
        if next < tokio::time::Instant::now() {
            next = tokio::time::Instant::now();
        }
        let text = args.utterances[i % args.utterances.len()].clone();
        i += 1;
        let frame = ClientFrame::Message {
            traceparent: None,
            text,
            client_id: None,
            payload: None,
        };
        let sent = Instant::now();
        ws.send(Message::text(
            serde_json::to_string(&frame).map_err(|e| e.to_string())?,
        ))
        .await
        .map_err(|e| e.to_string())?;
        let measured = sent >= measure_from;
        if measured {
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        // Wait for the first reply of this turn.
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .map_err(|_| "reply timed out".to_string())?;
            let Some(Ok(Message::Text(t))) = msg else {
                return Err(format!("connection ended: {msg:?}"));
            };
            match serde_json::from_str::<ServerFrame>(t.as_str()) {
                Ok(ServerFrame::Reply { .. }) => {
                    if measured && Instant::now() <= stop_at {
                        stats.replies.fetch_add(1, Ordering::Relaxed);
                        let _ = local.record(sent.elapsed().as_micros() as u64);
                    }
                    break;
                }
                Ok(ServerFrame::Error {
                    code: edgedesk_common::chat::ErrorCode::Busy,
                    ..
                }) => {
                    // Shed by the node: counted, and the session goes on.
                    if measured {
                        stats.shed.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                Ok(ServerFrame::Error { code, message, .. }) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    return Err(format!("server error {code:?}: {message}"));
                }
                _ => continue,
            }
        }
    }
    hist.lock().await.add(&local).map_err(|e| e.to_string())?;
    let _ = ws.close(None).await;
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open a session: connect, hello, wait for the welcome.
async fn connect(url: &str, gate: &tokio::sync::Semaphore) -> Result<Ws, String> {
    let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .map_err(|e| e.to_string())?;
    let hello = ClientFrame::Hello {
        v: PROTOCOL_VERSION,
        session: None,
        lang: None,
    };
    ws.send(Message::text(
        serde_json::to_string(&hello).map_err(|e| e.to_string())?,
    ))
    .await
    .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("\"welcome\"") => return Ok(ws),
            Some(Ok(_)) => continue,
            other => return Err(format!("no welcome: {other:?}")),
        }
    }
}

/// One open-loop session: a writer sends each message when it is due; a
/// reader matches each turn's acknowledgement (by `client_id`) and first
/// reply, and records latency from the due time.
async fn open_session(
    args: Args,
    n: usize,
    measure_from: Instant,
    stop_at: Instant,
    stats: Arc<Stats>,
    hist: Arc<Mutex<Histogram<u64>>>,
    gate: Arc<tokio::sync::Semaphore>,
) -> Result<(), String> {
    let ws = connect(&args.url, &gate).await?;
    let (mut sink, mut stream) = ws.split();
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let offset = period.mul_f64((n % 997) as f64 / 997.0);
    let start = Instant::now() + offset;
    // Due times of turns in flight, by client id.
    let due: Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>> = Arc::default();
    let writer = {
        let (due, stats) = (due.clone(), stats.clone());
        let utterances = args.utterances.clone();
        async move {
            let mut k: u64 = 0;
            loop {
                let at = start + period.mul_f64(k as f64);
                if at >= stop_at {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let frame = ClientFrame::Message {
                    traceparent: None,
                    text: utterances[(n + k as usize) % utterances.len()].clone(),
                    client_id: Some(k.to_string()),
                    payload: None,
                };
                if at >= measure_from {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                due.lock().unwrap().insert(k, at);
                let text = serde_json::to_string(&frame).map_err(|e| e.to_string())?;
                sink.send(Message::text(text))
                    .await
                    .map_err(|e| e.to_string())?;
                k += 1;
            }
            Ok::<_, String>(sink)
        }
    };
    let reader = {
        let (due, stats) = (due.clone(), stats.clone());
        async move {
            let mut local =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            // The turn whose acknowledgement came and whose reply has not.
            let mut awaiting: Option<Instant> = None;
            let grace = stop_at + Duration::from_secs(10);
            loop {
                let msg = match tokio::time::timeout_at(grace.into(), stream.next()).await {
                    Ok(m) => m,
                    Err(_) => break,
                };
                let Some(Ok(Message::Text(t))) = msg else {
                    break;
                };
                match serde_json::from_str::<ServerFrame>(t.as_str()) {
                    Ok(ServerFrame::Ack { client_id, .. }) => {
                        let k: u64 = client_id.and_then(|c| c.parse().ok()).unwrap_or(u64::MAX);
                        awaiting = due.lock().unwrap().remove(&k);
                    }
                    Ok(ServerFrame::Reply { .. }) => {
                        if let Some(at) = awaiting.take() {
                            if at >= measure_from && at < stop_at {
                                stats.replies.fetch_add(1, Ordering::Relaxed);
                                let _ = local.record(at.elapsed().as_micros() as u64);
                            }
                        }
                    }
                    Ok(ServerFrame::Error { code, .. }) => {
                        // A refused turn: the oldest one still due.
                        let oldest = {
                            let mut d = due.lock().unwrap();
                            let k = d.keys().min().copied();
                            k.and_then(|k| d.remove(&k))
                        };
                        if oldest.is_some_and(|at| at >= measure_from && at < stop_at) {
                            if code == edgedesk_common::chat::ErrorCode::Busy {
                                stats.shed.fetch_add(1, Ordering::Relaxed);
                            } else {
                                stats.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    _ => {}
                }
                if Instant::now() > stop_at && due.lock().unwrap().is_empty() && awaiting.is_none()
                {
                    break;
                }
            }
            Ok::<_, String>(local)
        }
    };
    let (sink, local) = tokio::join!(writer, reader);
    hist.lock().await.add(&local?).map_err(|e| e.to_string())?;
    if let Ok(mut sink) = sink {
        let _ = sink.close().await;
    }
    Ok(())
}

/// The node's `/metrics` text now; empty if it cannot be scraped (the
/// report then leaves the node's figures out).
async fn scrape(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => {
            eprintln!("edge-loadgen: scraping {url}: {e}");
            String::new()
        }
    }
}

/// p50 and p99 (ms) of a node histogram between two scrapes.
fn node_quantiles(before: &str, after: &str, name: &str) -> (Option<f64>, Option<f64>) {
    let (b, a) = (
        histogram_buckets(before, name),
        histogram_buckets(after, name),
    );
    let q = |q| quantile_between(&b, &a, q).map(|s| s * 1000.0);
    (q(0.5), q(0.99))
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    args.utterances = Arc::new(match &args.texts {
        Some(path) => match edgedesk_nlu::eval::read_rows(path) {
            // An empty file is an error of read_rows's own.
            Ok(rows) => rows.into_iter().map(|(text, _)| text).collect(),
            Err(e) => {
                eprintln!("edge-loadgen: --texts: {e}");
                std::process::exit(2);
            }
        },
        None => UTTERANCES.iter().map(|s| s.to_string()).collect(),
    });
    let stats = Arc::new(Stats::default());
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    let start = Instant::now();
    // Ramp-up is bounded by connect_concurrency; measurement starts after warm-up.
    let measure_from = start + Duration::from_secs(args.warmup);
    let stop_at = measure_from + Duration::from_secs(args.duration);
    let mut tasks = Vec::with_capacity(args.sessions);
    let open = args.mode == "open";
    for n in 0..args.sessions {
        let run = (
            args.clone(),
            n,
            measure_from,
            stop_at,
            stats.clone(),
            hist.clone(),
            gate.clone(),
        );
        tasks.push(if open {
            tokio::spawn(open_session(
                run.0, run.1, run.2, run.3, run.4, run.5, run.6,
            ))
        } else {
            tokio::spawn(closed_session(
                run.0, run.1, run.2, run.3, run.4, run.5, run.6,
            ))
        });
    }
    // The node's classification times: scraped as measurement starts and
    // after it ends, so warm-up turns are not counted.
    let nlu_before = args.metrics.clone().map(|url| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            scrape(&url).await
        })
    });
    let mut rss_peak = None;
    if let Some(pid) = args.pid {
        // Sample while the load runs.
        let stop = stop_at;
        while Instant::now() < stop {
            if let Some((_, hwm)) = rss_kib(pid) {
                rss_peak = Some(hwm);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let nlu = match (nlu_before, &args.metrics) {
        (Some(before), Some(url)) => {
            let before = before.await.unwrap_or_default();
            let after = scrape(url).await;
            // The share of turns the model's first stage answered alone.
            let between = |name| Some(sample_value(&after, name)? - sample_value(&before, name)?);
            let first = between("edgedesk_nlu_first_stage_total")
                .zip(between("edgedesk_nlu_latency_seconds_count"))
                .filter(|(_, turns)| *turns > 0.0)
                .map(|(first, turns)| first / turns);
            Some((
                node_quantiles(&before, &after, "edgedesk_nlu_latency_seconds"),
                node_quantiles(&before, &after, "edgedesk_nlu_wait_seconds"),
                first,
            ))
        }
        _ => None,
    };
    let h = hist.lock().await;
    let secs = args.duration as f64;
    let replies = stats.replies.load(Ordering::Relaxed);
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "mode                {} loop",
        if open { "open" } else { "closed" }
    );
    println!("sessions            {} ({} failed)", args.sessions, failed);
    if let Some(e) = &first_error {
        println!("first failure       {e}");
    }
    println!(
        "offered rate        {:.0} msg/s",
        args.sessions as f64 * args.rate
    );
    println!("sent (measured)     {}", stats.sent.load(Ordering::Relaxed));
    println!("replies (measured)  {replies}");
    let shed = stats.shed.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    println!("shed (busy)         {shed}");
    println!("other errors        {errors}");
    println!("throughput          {:.0} msg/s", replies as f64 / secs);
    println!(
        "round trip          p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
    if let Some(((p50, p99), (w50, w99), first)) = nlu {
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |ms| format!("{ms:.2} ms"));
        println!(
            "node NLU time       p50 {}  p99 {}  (the model, per turn; node's histogram, interpolated)",
            show(p50),
            show(p99)
        );
        println!(
            "node NLU wait       p50 {}  p99 {}  (for an inference thread)",
            show(w50),
            show(w99)
        );
        if let Some(share) = first {
            println!(
                "node first stage    {:.1} % of turns answered without the encoder",
                share * 100.0
            );
        }
    }
    if let Some(pid) = args.pid {
        if let Some((rss, _)) = rss_kib(pid) {
            println!(
                "node memory         RSS {:.1} MiB now, peak {:.1} MiB",
                rss as f64 / 1024.0,
                rss_peak.unwrap_or(rss) as f64 / 1024.0
            );
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": args.mode, "shed": shed, "errors": errors,
                "sessions": args.sessions, "failed": failed, "rate_per_session": args.rate,
                "duration_s": args.duration, "replies": replies, "throughput": replies as f64 / secs,
                "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": h.max() as f64 / 1000.0,
                "peak_rss_kib": rss_peak,
                "node_nlu_p50_ms": nlu.and_then(|n| n.0.0), "node_nlu_p99_ms": nlu.and_then(|n| n.0.1),
                "node_nlu_wait_p50_ms": nlu.and_then(|n| n.1.0), "node_nlu_wait_p99_ms": nlu.and_then(|n| n.1.1),
                "node_first_stage_share": nlu.and_then(|n| n.2),
            })
        );
    }
    if failed > 0 {
        std::process::exit(1);
    }
}
