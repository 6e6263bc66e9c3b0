//! The load client and reference loops of `deploy/load.sh`: what `wrk` cannot express.
//!
//! ```text
//! loadgen refresh  --base http://127.0.0.1:5000 --email E --password P -c 32 -d 10 [--rate R]
//! loadgen code     --base URL --email E --password P --client-id C --redirect-uri R
//!                  [--scope 'openid profile email'] [--batch 32] -c 32 -d 10
//! loadgen signin   --base URL --email E --password P --client-id C --redirect-uri R -c 8 -d 10
//! loadgen device   --base URL --client-id C [--scope read] -c 64 -d 10
//! loadgen families --redis-url redis://127.0.0.1:6379/ --prefix tokend: -n 100000
//!                  [--per-user 1] [--user-id ID] [--concurrency 256]
//! loadgen dpop     --what refresh|verify --base http://127.0.0.1:5000 --email E --password P -c 32 -d 10
//! loadgen http     --url URL [-X POST] [-H 'k: v'] [--body B] -c 32 -d 10 [--rate R] [--expect 200]
//! loadgen sign     --alg EdDSA [--rsa-bits 2048] [--verify] --threads 2 -d 5
//! loadgen argon2   --cost m=19456,t=2,p=1 -d 5
//! loadgen keyset   --dir keys/ --algs EdDSA,RS256 --rsa-bits 2048
//! loadgen startup  --bin target/release/tokend --url http://127.0.0.1:5000/readyz --runs 5
//! ```
//!
//! `refresh` keeps one refresh-token chain per connection: it logs in once per connection (one
//! session each), then every request presents the refresh token the previous answer carried —
//! refresh tokens are single-use. `dpop` does what a DPoP client does (RFC 9449, docs/dpop.md):
//! each connection holds its own Ed25519 key, logs in with a proof (a bound family), and then
//! either chains refreshes or calls `/auth/verify` with `Authorization: DPoP`, each request with
//! a fresh proof (a new `jti`; `ath` on `/auth/verify`) made before its clock starts, so the
//! latency is the server's. `http` repeats one fixed request. Both run closed-loop (each
//! connection sends its next request when the answer arrives) unless `--rate` paces them: then
//! request `k` of connection `i` is due at `(k·c + i) / rate` seconds and its latency counts from
//! that instant, so a stalled server cannot hide its queue (no coordinated omission).
//!
//! `code` measures the authorization-code exchange (`POST /oauth/token` with
//! `grant_type=authorization_code`, RFC 6749 §4.1.3): codes are single use, so the account
//! signs in once through the hosted sign-in form (one browser session cookie), and every code
//! is minted by `GET /oauth/authorize` with that cookie and a fresh PKCE S256 pair (RFC 7636)
//! for a first-party client (no consent page). With `--batch 0` each connection mints a code
//! and exchanges it, again and again (the pair rate; latency is the exchange request's alone).
//! With `--batch B` the connections run in rounds: all mint B codes each, then all exchange
//! them, and only the exchange phases are timed — the rate of exchanges alone. `signin` posts
//! the hosted sign-in form (`POST /login`, CSRF cookie and field, RFC 6265bis double submit)
//! for a pending authorization request that a `GET /oauth/authorize` without a session made
//! just before; the post alone is timed. `device` polls `/oauth/token` with a pending device
//! code (RFC 8628 §3.4), one device code per connection. `families` writes live refresh
//! families straight through tokend's `SessionStore::start_family` into Redis (no HTTP, no
//! Argon2): the records a login writes, for the memory and scale scenarios.
//!
//! Every load command prints one line: `rps=… p50_ms=… p99_ms=… ok=… errors=…` (and what else
//! the mode measured, as more `key=value` pairs).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokend::clock::{SharedClock, SystemClock};
use tokend::domain::tokens::{AccessClaims, Audience, RefreshClaims, Tokens};
use tokend::keys::{Alg, DirKeyStore, KeyStore, Keys, KeysConfig, MemoryKeyStore, MongoKeyStore};

#[derive(Parser)]
#[command(about = "Load client and reference loops for deploy/load.sh")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// What `loadgen dpop` runs.
#[derive(clap::Args)]
struct DpopRun {
    /// `refresh` or `verify`.
    #[arg(long)]
    what: String,
    #[arg(long)]
    base: String,
    /// The issuer the proofs name in `htu` (tokend's `TOKEND_ISSUER`); `--base` when unset.
    #[arg(long)]
    issuer: Option<String>,
    #[arg(long)]
    email: String,
    #[arg(long)]
    password: String,
    /// Proofs signed before the run starts, over all connections (each used once, then
    /// signed on the fly): the client's signing off the measured window, as a fleet of
    /// clients signs on its own machines. 0 signs every proof in the loop.
    #[arg(long, default_value_t = 0)]
    presign: usize,
    /// With `--what verify`: log in once with a proof, write the bound access token and
    /// `--presign` proofs for `/auth/verify` to this file (one a line, the token first) and stop,
    /// for `deploy/dpop-verify.lua` to send with wrk, the tool that drives the bearer twin.
    #[arg(long)]
    proofs_out: Option<std::path::PathBuf>,
    #[command(flatten)]
    load: Load,
}

#[derive(clap::Args, Clone)]
struct Load {
    /// Connections (one task each).
    #[arg(short = 'c', long, default_value_t = 32)]
    connections: usize,
    /// Seconds to measure.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Requests per second over all connections; closed-loop when unset.
    #[arg(long)]
    rate: Option<f64>,
    /// Worker threads of the client.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// The browser side of the authorization flow: the account and the first-party client.
#[derive(clap::Args, Clone)]
struct Browser {
    #[arg(long)]
    base: String,
    #[arg(long)]
    email: String,
    #[arg(long)]
    password: String,
    #[arg(long)]
    client_id: String,
    #[arg(long)]
    redirect_uri: String,
    #[arg(long, default_value = "openid profile email")]
    scope: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Chained refresh exchanges over `/auth/token/refresh`.
    Refresh {
        #[arg(long)]
        base: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
        #[command(flatten)]
        load: Load,
    },
    /// Authorization-code exchanges, each code minted by `/oauth/authorize` just before.
    Code {
        #[command(flatten)]
        browser: Browser,
        /// Codes each connection mints before an exchange phase; 0: mint one, exchange it.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[command(flatten)]
        load: Load,
    },
    /// Hosted sign-in form posts, each for a pending authorization request.
    Signin {
        #[command(flatten)]
        browser: Browser,
        #[command(flatten)]
        load: Load,
    },
    /// Device-grant polls, one pending device code per connection.
    Device {
        #[arg(long)]
        base: String,
        #[arg(long)]
        client_id: String,
        #[arg(long, default_value = "read")]
        scope: String,
        #[command(flatten)]
        load: Load,
    },
    /// Writes live refresh families through `SessionStore::start_family` on a Redis URL.
    Families {
        #[arg(long)]
        redis_url: String,
        /// tokend's `TOKEND_REDIS_PREFIX`.
        #[arg(long, default_value = "tokend:")]
        prefix: String,
        /// How many families.
        #[arg(short = 'n', long)]
        count: u64,
        /// Families per (made-up) user; each user's family list holds this many.
        #[arg(long, default_value_t = 1)]
        per_user: u64,
        /// Every family for this (real) user instead.
        #[arg(long)]
        user_id: Option<String>,
        /// Distinguishes the ids of one run from another's.
        #[arg(long, default_value = "loadgen")]
        seed: String,
        /// Store operations in flight.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Worker threads of the client.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// DPoP-bound traffic: chained refreshes of a bound family, or `/auth/verify` with a bound
    /// token, a fresh proof per request.
    Dpop(DpopRun),
    /// One fixed request, repeated.
    Http {
        #[arg(long)]
        url: String,
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        #[arg(long)]
        body: Option<String>,
        /// The status every answer must have.
        #[arg(long, default_value_t = 200)]
        expect: u16,
        #[command(flatten)]
        load: Load,
    },
    /// Signing (or verifying + signing) loop through `tokend::keys::Keys`: the grants' ceiling.
    Sign {
        #[arg(long, default_value = "EdDSA")]
        alg: String,
        #[arg(long, default_value_t = 2048)]
        rsa_bits: usize,
        /// What a refresh costs in cryptography: verify one token, sign two.
        #[arg(long)]
        refresh: bool,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(short = 'd', long, default_value_t = 5.0)]
        duration: f64,
    },
    /// Argon2id hashes per second at a cost: one thread, and the login ceiling for `cores`.
    Argon2 {
        #[arg(long, default_value = "m=19456,t=2,p=1")]
        cost: String,
        #[arg(long, default_value_t = 2)]
        cores: usize,
        #[arg(short = 'd', long, default_value_t = 5.0)]
        duration: f64,
    },
    /// Creates a keyset with RSA keys of `--rsa-bits`: in a key directory (embedded mode), or
    /// in MongoDB sealed with `--kek` (production mode).
    Keyset {
        #[arg(long, required_unless_present = "mongodb_uri")]
        dir: Option<std::path::PathBuf>,
        #[arg(long, requires = "kek")]
        mongodb_uri: Option<String>,
        #[arg(long, default_value = "tokend")]
        mongodb_db: String,
        /// The base64 `TOKEND_KEY_ENCRYPTION_KEY`.
        #[arg(long)]
        kek: Option<String>,
        #[arg(long, default_value = "EdDSA,RS256")]
        algs: String,
        #[arg(long, default_value_t = 2048)]
        rsa_bits: usize,
    },
    /// Starts `--bin serve` (with this process's environment) `--runs` times and reports the
    /// time until `--url` answers 200.
    Startup {
        #[arg(long)]
        bin: std::path::PathBuf,
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Refresh {
            base,
            email,
            password,
            load,
        } => runtime(load.threads).and_then(|rt| {
            rt.block_on(refresh(&base, &email, &password, &load))
                .map(|r| r.print())
        }),
        Cmd::Code {
            browser,
            batch,
            load,
        } => runtime(load.threads).and_then(|rt| {
            rt.block_on(code(&browser, batch, &load))
                .map(|(r, extra)| r.print_with(&extra))
        }),
        Cmd::Signin { browser, load } => runtime(load.threads).and_then(|rt| {
            rt.block_on(signin(&browser, &load))
                .map(|(r, extra)| r.print_with(&extra))
        }),
        Cmd::Device {
            base,
            client_id,
            scope,
            load,
        } => runtime(load.threads).and_then(|rt| {
            rt.block_on(device(&base, &client_id, &scope, &load))
                .map(|(r, extra)| r.print_with(&extra))
        }),
        Cmd::Families {
            redis_url,
            prefix,
            count,
            per_user,
            user_id,
            seed,
            concurrency,
            threads,
        } => runtime(threads).and_then(|rt| {
            rt.block_on(families(FamiliesRun {
                redis_url,
                prefix,
                count,
                per_user,
                user_id,
                seed,
                concurrency,
            }))
        }),
        Cmd::Dpop(run) => runtime(run.load.threads).and_then(|rt| match &run.proofs_out {
            Some(file) => rt.block_on(write_proofs(&run, file)),
            None => rt.block_on(dpop(&run)).map(|r| r.print()),
        }),
        Cmd::Http {
            url,
            method,
            headers,
            body,
            expect,
            load,
        } => runtime(load.threads).and_then(|rt| {
            rt.block_on(fixed(&url, &method, &headers, body, expect, &load))
                .map(|r| r.print())
        }),
        Cmd::Sign {
            alg,
            rsa_bits,
            refresh,
            threads,
            duration,
        } => sign(&alg, rsa_bits, refresh, threads, duration),
        Cmd::Argon2 {
            cost,
            cores,
            duration,
        } => argon2(&cost, cores, duration),
        Cmd::Keyset {
            dir,
            mongodb_uri,
            mongodb_db,
            kek,
            algs,
            rsa_bits,
        } => keyset(dir, mongodb_uri, &mongodb_db, kek, &algs, rsa_bits),
        Cmd::Startup { bin, url, runs } => startup(&bin, &url, runs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn runtime(threads: usize) -> Res<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(err)
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .map_err(err)
    }
}

// ---- HTTP/1 client --------------------------------------------------------------------------

struct Target {
    addr: SocketAddr,
    authority: String,
    path: String,
}

fn target(url: &str) -> Res<Target> {
    let u = url::Url::parse(url).map_err(err)?;
    let host = u.host_str().ok_or("URL without host")?;
    let port = u.port_or_known_default().ok_or("URL without port")?;
    let addr = format!("{host}:{port}")
        .parse::<SocketAddr>()
        .map_err(|_| format!("{host}:{port}: load only 127.0.0.1 (an IP address)"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{addr} is not a loopback address"));
    }
    let mut path = u.path().to_string();
    if let Some(q) = u.query() {
        path = format!("{path}?{q}");
    }
    Ok(Target {
        addr,
        authority: format!("{host}:{port}"),
        path,
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Res<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(err)?;
    stream.set_nodelay(true).map_err(err)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(err)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn send(sender: &mut Sender, req: Request<Full<Bytes>>) -> Res<(StatusCode, Bytes)> {
    sender.ready().await.map_err(err)?;
    let res = sender.send_request(req).await.map_err(err)?;
    let status = res.status();
    let body = res.into_body().collect().await.map_err(err)?.to_bytes();
    Ok((status, body))
}

// ---- measurement ----------------------------------------------------------------------------

/// What one run measured.
struct Report {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: usize,
    errors: usize,
}

impl Report {
    fn print(&self) {
        self.print_with("");
    }

    /// The line, with more `key=value` pairs after it.
    fn print_with(&self, extra: &str) {
        println!(
            "rps={:.0} p50_ms={:.3} p99_ms={:.3} ok={} errors={}{}{extra}",
            self.rps,
            self.p50_ms,
            self.p99_ms,
            self.ok,
            self.errors,
            if extra.is_empty() { "" } else { " " }
        );
    }
}

/// Latencies (µs) of answers that arrived inside the measuring window, and the errors there.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: usize,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

/// The clock of one connection's run: warm-up, window, and (when paced) the due time of each
/// request.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// Seconds between two requests of one connection, and this connection's offset.
    pace: Option<(f64, f64)>,
}

impl Schedule {
    fn new(load: &Load, conn: usize) -> Schedule {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(load.warmup);
        Schedule {
            start,
            measure_from,
            end: measure_from + Duration::from_secs_f64(load.duration),
            pace: load.rate.map(|r| {
                let n = load.connections as f64;
                (n / r, conn as f64 / r)
            }),
        }
    }

    /// When request `k` is due (now when unpaced); sleeps until then.
    async fn due(&self, k: u64) -> Instant {
        match self.pace {
            None => Instant::now(),
            Some((every, offset)) => {
                let at = self.start + Duration::from_secs_f64(offset + k as f64 * every);
                tokio::time::sleep_until(at.into()).await;
                at
            }
        }
    }

    fn record(&self, tally: &mut Tally, due: Instant, ok: bool) {
        let done = Instant::now();
        if due < self.measure_from || done > self.end {
            return;
        }
        if ok {
            let us = done.duration_since(due).as_micros();
            tally
                .latencies_us
                .push(u32::try_from(us).unwrap_or(u32::MAX));
        } else {
            tally.errors += 1;
        }
    }
}

async fn collect(load: &Load, tasks: Vec<tokio::task::JoinHandle<Res<Tally>>>) -> Res<Report> {
    let mut all = Tally::default();
    for t in tasks {
        let tally = t.await.map_err(err)??;
        all.latencies_us.extend(tally.latencies_us);
        all.errors += tally.errors;
    }
    all.latencies_us.sort_unstable();
    Ok(Report {
        rps: all.latencies_us.len() as f64 / load.duration,
        p50_ms: percentile(&all.latencies_us, 0.50),
        p99_ms: percentile(&all.latencies_us, 0.99),
        ok: all.latencies_us.len(),
        errors: all.errors,
    })
}

// ---- scenarios ------------------------------------------------------------------------------

async fn fixed(
    url: &str,
    method: &str,
    headers: &[String],
    body: Option<String>,
    expect: u16,
    load: &Load,
) -> Res<Report> {
    let t = Arc::new(target(url)?);
    let method = Method::from_bytes(method.as_bytes()).map_err(err)?;
    let mut hs = Vec::new();
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("bad header {h:?}"))?;
        hs.push((
            HeaderName::from_bytes(k.trim().as_bytes()).map_err(err)?,
            HeaderValue::from_str(v.trim()).map_err(err)?,
        ));
    }
    let body = Bytes::from(body.unwrap_or_default());
    let mut tasks = Vec::new();
    for i in 0..load.connections {
        let (t, method, hs, body, load) = (
            t.clone(),
            method.clone(),
            hs.clone(),
            body.clone(),
            load.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(t.addr).await?;
            let sched = Schedule::new(&load, i);
            let mut tally = Tally::default();
            let mut k = 0u64;
            while Instant::now() < sched.end {
                let due = sched.due(k).await;
                k += 1;
                let mut req = Request::builder()
                    .method(method.clone())
                    .uri(t.path.as_str())
                    .header(header::HOST, t.authority.as_str());
                for (name, value) in &hs {
                    req = req.header(name, value);
                }
                let req = req.body(Full::new(body.clone())).map_err(err)?;
                match send(&mut sender, req).await {
                    Ok((status, _)) => sched.record(&mut tally, due, status.as_u16() == expect),
                    Err(_) => {
                        sched.record(&mut tally, due, false);
                        sender = connect(t.addr).await?;
                    }
                }
            }
            Ok(tally)
        }));
    }
    collect(load, tasks).await
}

#[derive(Deserialize)]
struct Pair {
    refresh_token: String,
}

fn json_request(t: &Target, path: &str, body: &serde_json::Value) -> Res<Request<Full<Bytes>>> {
    Request::post(path)
        .header(header::HOST, t.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(err)
}

async fn refresh(base: &str, email: &str, password: &str, load: &Load) -> Res<Report> {
    let t = Arc::new(target(base)?);
    // The account may exist from an earlier run; a 409 is fine.
    let mut sender = connect(t.addr).await?;
    let username = email.split('@').next().unwrap_or("loadgen");
    let register = serde_json::json!({"username": username, "email": email, "password": password});
    let (status, body) = send(&mut sender, json_request(&t, "/auth/register", &register)?).await?;
    if !(status == StatusCode::CREATED || status == StatusCode::CONFLICT) {
        return Err(format!("register answered {status}: {body:?}"));
    }
    let login = serde_json::json!({"email": email, "password": password});
    let mut tasks = Vec::new();
    for i in 0..load.connections {
        let (t, load, login) = (t.clone(), load.clone(), login.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(t.addr).await?;
            let (status, body) =
                send(&mut sender, json_request(&t, "/auth/login", &login)?).await?;
            if status != StatusCode::OK {
                return Err(format!("login answered {status}: {body:?}"));
            }
            let mut token = serde_json::from_slice::<Pair>(&body)
                .map_err(err)?
                .refresh_token;
            let sched = Schedule::new(&load, i);
            let mut tally = Tally::default();
            let mut k = 0u64;
            while Instant::now() < sched.end {
                let due = sched.due(k).await;
                k += 1;
                let req = Request::post("/auth/token/refresh")
                    .header(header::HOST, t.authority.as_str())
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Full::new(Bytes::new()))
                    .map_err(err)?;
                let (status, body) = send(&mut sender, req).await?;
                if status != StatusCode::OK {
                    sched.record(&mut tally, due, false);
                    return Err(format!(
                        "refresh answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                token = serde_json::from_slice::<Pair>(&body)
                    .map_err(err)?
                    .refresh_token;
                sched.record(&mut tally, due, true);
            }
            Ok(tally)
        }));
    }
    collect(load, tasks).await
}

// ---- the browser and device flows ----------------------------------------------------------

/// The cookies of the hosted pages over plain HTTP (docs/authorize.md, "The browser session").
const SESSION_COOKIE: &str = "tokend_session";
const FORM_COOKIE: &str = "tokend_form";

/// An answer with its headers (redirects and cookies).
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn send_full(sender: &mut Sender, req: Request<Full<Bytes>>) -> Res<Answer> {
    sender.ready().await.map_err(err)?;
    let res = sender.send_request(req).await.map_err(err)?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await.map_err(err)?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

impl Answer {
    /// The value a `Set-Cookie` of the answer gives `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    }

    fn location(&self) -> Option<&str> {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(300).collect()
    }
}

fn get_with_cookie(t: &Target, path: &str, cookie: Option<&str>) -> Res<Request<Full<Bytes>>> {
    let mut req = Request::get(path).header(header::HOST, t.authority.as_str());
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    req.body(Full::new(Bytes::new())).map_err(err)
}

fn form_post(
    t: &Target,
    path: &str,
    fields: &[(&str, &str)],
    cookie: Option<&str>,
) -> Res<Request<Full<Bytes>>> {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut req = Request::post(path)
        .header(header::HOST, t.authority.as_str())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    req.body(Full::new(Bytes::from(body))).map_err(err)
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256(data: &[u8]) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, data)
}

/// A PKCE pair (RFC 7636 §4.1, §4.2): a 43-character verifier unique to `(conn, k)` in this
/// run, and its S256 challenge.
fn pkce(run: u128, conn: usize, k: u64) -> (String, String) {
    let verifier = b64url(sha256(format!("{run}:{conn}:{k}").as_bytes()).as_ref());
    let challenge = b64url(sha256(verifier.as_bytes()).as_ref());
    (verifier, challenge)
}

/// A number that differs from run to run (the PKCE verifiers' seed; not a secret).
fn run_seed() -> u128 {
    let clock: SharedClock = Arc::new(SystemClock);
    u128::try_from(clock.now_ms()).unwrap_or(0) * 1_000_000 + u128::from(std::process::id())
}

/// Registers the account (an existing one is fine).
async fn register(t: &Target, email: &str, password: &str) -> Res<()> {
    let mut sender = connect(t.addr).await?;
    let username = email.split('@').next().unwrap_or("loadgen");
    let register = serde_json::json!({"username": username, "email": email, "password": password});
    let (status, body) = send(&mut sender, json_request(t, "/auth/register", &register)?).await?;
    if !(status == StatusCode::CREATED || status == StatusCode::CONFLICT) {
        return Err(format!("register answered {status}: {body:?}"));
    }
    Ok(())
}

/// The sign-in page's CSRF cookie (double submit: the form's `csrf_token` must equal it).
async fn csrf_cookie(sender: &mut Sender, t: &Target) -> Res<String> {
    let page = send_full(sender, get_with_cookie(t, "/login", None)?).await?;
    if page.status != StatusCode::OK {
        return Err(format!(
            "GET /login answered {}: {}",
            page.status,
            page.text()
        ));
    }
    page.cookie(FORM_COOKIE)
        .ok_or_else(|| "GET /login set no CSRF cookie".to_string())
}

/// Signs in once through the hosted form; the browser session cookie's value.
async fn browser_session(b: &Browser, t: &Target) -> Res<String> {
    register(t, &b.email, &b.password).await?;
    let mut sender = connect(t.addr).await?;
    let csrf = csrf_cookie(&mut sender, t).await?;
    let fields = [
        ("csrf_token", csrf.as_str()),
        ("username", b.email.as_str()),
        ("password", b.password.as_str()),
    ];
    let cookie = format!("{FORM_COOKIE}={csrf}");
    let signed = send_full(&mut sender, form_post(t, "/login", &fields, Some(&cookie))?).await?;
    if signed.status != StatusCode::OK {
        return Err(format!(
            "POST /login answered {}: {}",
            signed.status,
            signed.text()
        ));
    }
    signed
        .cookie(SESSION_COOKIE)
        .ok_or_else(|| "POST /login set no session cookie".to_string())
}

/// `/oauth/authorize` for the client with a fresh PKCE challenge (RFC 6749 §4.1.1).
fn authorize_path(b: &Browser, challenge: &str, state: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &b.client_id)
        .append_pair("redirect_uri", &b.redirect_uri)
        .append_pair("scope", &b.scope)
        .append_pair("state", state)
        .append_pair("nonce", state)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    format!("/oauth/authorize?{query}")
}

/// The `name` parameter of a redirect's `Location`.
fn location_param(location: &str, base: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(base).ok()?.join(location).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A code for the signed-in browser: `303` to the redirect URI with `code` (RFC 6749 §4.1.2).
async fn mint(
    sender: &mut Sender,
    t: &Target,
    b: &Browser,
    session: &str,
    challenge: &str,
) -> Res<String> {
    let path = authorize_path(b, challenge, "s");
    let answer = send_full(sender, get_with_cookie(t, &path, Some(session))?).await?;
    let location = answer.location().unwrap_or_default();
    match location_param(location, &b.base, "code") {
        Some(code) if answer.status == StatusCode::SEE_OTHER => Ok(code),
        _ => Err(format!(
            "/oauth/authorize answered {} to {location:?}: {}",
            answer.status,
            answer.text()
        )),
    }
}

/// Exchanges a code (RFC 6749 §4.1.3, RFC 7636 §4.5); `Ok(true)` when the answer is 200 with
/// the tokens (an `id_token` too when `openid` was asked for).
async fn exchange(
    sender: &mut Sender,
    t: &Target,
    b: &Browser,
    code: &str,
    verifier: &str,
) -> Res<Result<(), String>> {
    let fields = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", b.redirect_uri.as_str()),
        ("code_verifier", verifier),
        ("client_id", b.client_id.as_str()),
    ];
    let answer = send_full(sender, form_post(t, "/oauth/token", &fields, None)?).await?;
    let wants_id = b.scope.split(' ').any(|s| s == "openid");
    let body = String::from_utf8_lossy(&answer.body);
    if answer.status == StatusCode::OK
        && body.contains("\"access_token\"")
        && (!wants_id || body.contains("\"id_token\""))
    {
        Ok(Ok(()))
    } else {
        Ok(Err(format!(
            "/oauth/token answered {}: {}",
            answer.status,
            answer.text()
        )))
    }
}

/// Prints the first failure of a run (the rest are counted).
fn first_failure(flag: &std::sync::atomic::AtomicBool, what: &str) {
    if !flag.swap(true, std::sync::atomic::Ordering::Relaxed) {
        eprintln!("loadgen: {what}");
    }
}

/// Latencies of two kinds of request, inside the measuring window.
#[derive(Default)]
struct PairTally {
    main_us: Vec<u32>,
    side_us: Vec<u32>,
    errors: usize,
    /// The exchange phases of `code --batch`: per round, when this connection started and
    /// finished its exchanges.
    phases: Vec<(usize, Instant, Instant)>,
}

impl PairTally {
    /// The tallies of every connection in one.
    async fn join(tasks: Vec<tokio::task::JoinHandle<Res<PairTally>>>) -> Res<PairTally> {
        let mut all = PairTally::default();
        for task in tasks {
            let tally = task.await.map_err(err)??;
            all.main_us.extend(tally.main_us);
            all.side_us.extend(tally.side_us);
            all.errors += tally.errors;
            all.phases.extend(tally.phases);
        }
        Ok(all)
    }

    /// The report of the main requests at `rps`, and `extra` followed by the side requests'
    /// (`/oauth/authorize`) percentiles.
    fn report(self, rps: f64, extra: &str) -> (Report, String) {
        let main = sorted(self.main_us);
        let side = sorted(self.side_us);
        let extra = format!(
            "{extra}authorize_p50_ms={:.3} authorize_p99_ms={:.3}",
            percentile(&side, 0.50),
            percentile(&side, 0.99)
        );
        let report = Report {
            rps,
            p50_ms: percentile(&main, 0.50),
            p99_ms: percentile(&main, 0.99),
            ok: main.len(),
            errors: self.errors,
        };
        (report, extra)
    }
}

fn us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}

async fn code(b: &Browser, batch: usize, load: &Load) -> Res<(Report, String)> {
    let t = Arc::new(target(&b.base)?);
    let session = Arc::new(format!(
        "{SESSION_COOKIE}={}",
        browser_session(b, &t).await?
    ));
    let run = run_seed();
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let n = load.connections.max(1);
    // The rounds of the batched mode: mint, then exchange, then decide together whether to go
    // on (the leader of the second barrier decides, the third makes everyone see it).
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let phase_start = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let exchange_time = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(load.warmup);
    let end = measure_from + Duration::from_secs_f64(load.duration);
    let mut tasks = Vec::new();
    for i in 0..n {
        let (t, b, session, failed) = (t.clone(), b.clone(), session.clone(), failed.clone());
        let (barrier, phase_start, exchange_time, done, load) = (
            barrier.clone(),
            phase_start.clone(),
            exchange_time.clone(),
            done.clone(),
            load.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(t.addr).await?;
            let mut tally = PairTally::default();
            let mut k = 0u64;
            if batch == 0 {
                while Instant::now() < end {
                    let (verifier, challenge) = pkce(run, i, k);
                    k += 1;
                    let t0 = Instant::now();
                    let code = match mint(&mut sender, &t, &b, &session, &challenge).await {
                        Ok(c) => c,
                        Err(e) => {
                            first_failure(&failed, &e);
                            tally.errors += usize::from(t0 >= measure_from);
                            sender = connect(t.addr).await?;
                            continue;
                        }
                    };
                    let t1 = Instant::now();
                    let outcome = exchange(&mut sender, &t, &b, &code, &verifier).await?;
                    let t2 = Instant::now();
                    if t0 < measure_from || t2 > end {
                        continue;
                    }
                    match outcome {
                        Ok(()) => {
                            tally.main_us.push(us(t2 - t1));
                            tally.side_us.push(us(t1 - t0));
                        }
                        Err(e) => {
                            first_failure(&failed, &e);
                            tally.errors += 1;
                        }
                    }
                }
                return Ok::<_, String>(tally);
            }
            let mut round = 0usize;
            let mut codes = Vec::with_capacity(batch);
            loop {
                codes.clear();
                for _ in 0..batch {
                    let (verifier, challenge) = pkce(run, i, k);
                    k += 1;
                    let t0 = Instant::now();
                    match mint(&mut sender, &t, &b, &session, &challenge).await {
                        Ok(code) => {
                            tally.side_us.push(us(t0.elapsed()));
                            codes.push((code, verifier));
                        }
                        Err(e) => {
                            first_failure(&failed, &e);
                            if let Ok(s) = connect(t.addr).await {
                                sender = s;
                            }
                        }
                    }
                }
                if barrier.wait().await.is_leader() {
                    if let Ok(mut s) = phase_start.lock() {
                        *s = Some(Instant::now());
                    }
                }
                let from = Instant::now();
                let measured = from >= measure_from;
                for (code, verifier) in &codes {
                    let t1 = Instant::now();
                    // No early return in a round: every connection must reach the barriers.
                    let outcome = match exchange(&mut sender, &t, &b, code, verifier).await {
                        Ok(o) => o,
                        Err(e) => {
                            if let Ok(s) = connect(t.addr).await {
                                sender = s;
                            }
                            Err(e)
                        }
                    };
                    if !measured {
                        continue;
                    }
                    match outcome {
                        Ok(()) => tally.main_us.push(us(t1.elapsed())),
                        Err(e) => {
                            first_failure(&failed, &e);
                            tally.errors += 1;
                        }
                    }
                }
                if measured {
                    tally.phases.push((round, from, Instant::now()));
                }
                round += 1;
                if barrier.wait().await.is_leader() {
                    let now = Instant::now();
                    let begun = phase_start.lock().ok().and_then(|s| *s).unwrap_or(now);
                    if let Ok(mut total) = exchange_time.lock() {
                        if begun >= measure_from {
                            *total += now - begun;
                        }
                        // Enough exchange time, or (when every mint fails) a bounded run.
                        let enough = total.as_secs_f64() >= load.duration
                            || now > end + Duration::from_secs_f64(10.0 * load.duration + 60.0);
                        done.store(enough, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                barrier.wait().await;
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
            }
            Ok(tally)
        }));
    }
    let all = PairTally::join(tasks).await?;
    let wall = started.elapsed().as_secs_f64() - load.warmup;
    let exchanged = all.main_us.len();
    let (rps, extra_rate) = if batch == 0 {
        let rate = exchanged as f64 / load.duration;
        (rate, format!("pair_rps={rate:.0}"))
    } else {
        // Each round's exchange phase runs from its first connection's start to its last
        // connection's end.
        let mut spans: std::collections::BTreeMap<usize, (Instant, Instant)> = Default::default();
        for (round, from, to) in &all.phases {
            let e = spans.entry(*round).or_insert((*from, *to));
            e.0 = e.0.min(*from);
            e.1 = e.1.max(*to);
        }
        let secs: f64 = spans.values().map(|(a, b)| (*b - *a).as_secs_f64()).sum();
        let rate = exchanged as f64 / secs.max(f64::EPSILON);
        (
            rate,
            format!(
                "pair_rps={:.0} exchange_secs={secs:.2} rounds={}",
                exchanged as f64 / wall.max(f64::EPSILON),
                spans.len()
            ),
        )
    };
    Ok(all.report(rps, &format!("{extra_rate} ")))
}

async fn signin(b: &Browser, load: &Load) -> Res<(Report, String)> {
    let t = Arc::new(target(&b.base)?);
    register(&t, &b.email, &b.password).await?;
    let run = run_seed();
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..load.connections.max(1) {
        let (t, b, failed, load) = (t.clone(), b.clone(), failed.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(t.addr).await?;
            let csrf = csrf_cookie(&mut sender, &t).await?;
            let cookie = format!("{FORM_COOKIE}={csrf}");
            let sched = Schedule::new(&load, i);
            let mut tally = PairTally::default();
            let mut k = 0u64;
            while Instant::now() < sched.end {
                let (_, challenge) = pkce(run, i, k);
                k += 1;
                // A pending request: no session, so `303` to `/login?req=<id>`.
                let t0 = Instant::now();
                let path = authorize_path(&b, &challenge, "s");
                let pending = send_full(&mut sender, get_with_cookie(&t, &path, None)?).await?;
                let req = pending
                    .location()
                    .and_then(|l| location_param(l, &b.base, "req"));
                let Some(req) = req.filter(|_| pending.status == StatusCode::SEE_OTHER) else {
                    first_failure(
                        &failed,
                        &format!(
                            "/oauth/authorize answered {} to {:?}",
                            pending.status,
                            pending.location()
                        ),
                    );
                    tally.errors += usize::from(t0 >= sched.measure_from);
                    continue;
                };
                let t1 = Instant::now();
                let fields = [
                    ("csrf_token", csrf.as_str()),
                    ("req", req.as_str()),
                    ("username", b.email.as_str()),
                    ("password", b.password.as_str()),
                ];
                let signed = send_full(
                    &mut sender,
                    form_post(&t, "/login", &fields, Some(&cookie))?,
                )
                .await?;
                let t2 = Instant::now();
                // Signed in, and the pending request answered: `303` to the client with a code.
                let ok = signed.status == StatusCode::SEE_OTHER
                    && signed.cookie(SESSION_COOKIE).is_some()
                    && signed
                        .location()
                        .and_then(|l| location_param(l, &b.base, "code"))
                        .is_some();
                if t0 < sched.measure_from || t2 > sched.end {
                    continue;
                }
                if ok {
                    tally.main_us.push(us(t2 - t1));
                    tally.side_us.push(us(t1 - t0));
                } else {
                    first_failure(
                        &failed,
                        &format!("POST /login answered {}: {}", signed.status, signed.text()),
                    );
                    tally.errors += 1;
                }
            }
            Ok::<_, String>(tally)
        }));
    }
    let all = PairTally::join(tasks).await?;
    let rps = all.main_us.len() as f64 / load.duration;
    Ok(all.report(rps, ""))
}

/// The device grant's `grant_type` (RFC 8628 §3.4).
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

#[derive(Deserialize)]
struct DeviceStart {
    device_code: String,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
}

async fn device(base: &str, client_id: &str, scope: &str, load: &Load) -> Res<(Report, String)> {
    let t = Arc::new(target(base)?);
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slow_down = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..load.connections.max(1) {
        let (t, load, failed) = (t.clone(), load.clone(), failed.clone());
        let (pending, slow_down) = (pending.clone(), slow_down.clone());
        let (client_id, scope) = (client_id.to_string(), scope.to_string());
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(t.addr).await?;
            let start = [("client_id", client_id.as_str()), ("scope", scope.as_str())];
            let started = send_full(
                &mut sender,
                form_post(&t, "/oauth/device_authorization", &start, None)?,
            )
            .await?;
            if started.status != StatusCode::OK {
                return Err(format!(
                    "/oauth/device_authorization answered {}: {}",
                    started.status,
                    started.text()
                ));
            }
            let code = serde_json::from_slice::<DeviceStart>(&started.body)
                .map_err(err)?
                .device_code;
            let poll = [
                ("grant_type", DEVICE_GRANT),
                ("device_code", code.as_str()),
                ("client_id", client_id.as_str()),
            ];
            let sched = Schedule::new(&load, i);
            let mut tally = Tally::default();
            let mut k = 0u64;
            while Instant::now() < sched.end {
                let due = sched.due(k).await;
                k += 1;
                let answer =
                    send_full(&mut sender, form_post(&t, "/oauth/token", &poll, None)?).await?;
                let error = serde_json::from_slice::<OAuthErrorBody>(&answer.body)
                    .map(|e| e.error)
                    .unwrap_or_default();
                let ok = answer.status == StatusCode::BAD_REQUEST
                    && matches!(error.as_str(), "authorization_pending" | "slow_down");
                if !ok {
                    first_failure(
                        &failed,
                        &format!("a poll answered {}: {}", answer.status, answer.text()),
                    );
                }
                let counted = due >= sched.measure_from && Instant::now() <= sched.end;
                if ok && counted {
                    let which = if error == "slow_down" {
                        &slow_down
                    } else {
                        &pending
                    };
                    which.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                sched.record(&mut tally, due, ok);
            }
            Ok(tally)
        }));
    }
    let report = collect(load, tasks).await?;
    let extra = format!(
        "authorization_pending={} slow_down={}",
        pending.load(std::sync::atomic::Ordering::Relaxed),
        slow_down.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok((report, extra))
}

// ---- live families in Redis -----------------------------------------------------------------

struct FamiliesRun {
    redis_url: String,
    prefix: String,
    count: u64,
    per_user: u64,
    user_id: Option<String>,
    seed: String,
    concurrency: usize,
}

/// 16 bytes from `(seed, what, i)`, base64url: the shape of tokend's random ids (22 characters).
fn made_id(seed: &str, what: &str, i: u64) -> String {
    let d = sha256(format!("{seed}:{what}:{i}").as_bytes());
    b64url(d.as_ref().get(..16).unwrap_or_default())
}

/// A made-up user id in the shape of tokend's (a UUID, 36 characters).
fn made_user(seed: &str, u: u64) -> String {
    let d = sha256(format!("{seed}:user:{u}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(d.as_ref().get(..16).unwrap_or(&[0u8; 16]));
    uuid::Uuid::from_bytes(b).to_string()
}

/// What a password login writes (`Sessions::start_session_with`), with the server's defaults:
/// refresh tokens for 14 days, sessions of 30 days, at most 100 per user.
async fn families(run: FamiliesRun) -> Res<()> {
    use tokend::store::{family_sid, NewFamily, SessionStore};
    const DAY_MS: i64 = 86_400_000;
    // What a sign-in page login stores (docs/sessions.md): a common desktop browser.
    const FAMILY_USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
                                     (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    let store = Arc::new(
        tokend::store::redis::RedisStore::connect(&run.redis_url, &run.prefix)
            .await
            .map_err(err)?,
    );
    let run = Arc::new(run);
    let started = Instant::now();
    let clock: SharedClock = Arc::new(SystemClock);
    let now_ms = clock.now_ms();
    let workers = run.concurrency.max(1) as u64;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (store, run) = (store.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < run.count {
                let u = i / run.per_user.max(1);
                let user_id = match &run.user_id {
                    Some(id) => id.clone(),
                    None => made_user(&run.seed, u),
                };
                // A family id as tokend makes them: 8 characters and the user's id.
                let sid = family_sid(&made_id(&run.seed, "sid", i)[..8], &user_id);
                let family = NewFamily {
                    sid,
                    user_id,
                    client_id: "tokend".into(),
                    refresh_jti: made_id(&run.seed, "rjti", i),
                    issued_at: now_ms / 1000,
                    expires_at_ms: now_ms + 30 * DAY_MS,
                    started_at_ms: now_ms,
                    ttl_ms: 14 * DAY_MS + tokend_token_shape::LEEWAY_SECS * 1000,
                    revoked_ttl_ms: 14 * DAY_MS + tokend_token_shape::LEEWAY_SECS * 1000,
                    credentials_version: 0,
                    max_sessions: 100,
                    // What a browser login stores: a common desktop user agent and an address.
                    user_agent: Some(FAMILY_USER_AGENT.into()),
                    ip: Some("203.0.113.7".into()),
                    expect: None,
                };
                store.start_family(&family).await.map_err(err)?;
                i += workers;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(err)??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "families={} secs={secs:.2} per_sec={:.0}",
        run.count,
        run.count as f64 / secs.max(f64::EPSILON)
    );
    Ok(())
}

// ---- DPoP-bound traffic --------------------------------------------------------------------

/// A client's DPoP key (Ed25519) and the proofs it signs (RFC 9449 §4.2).
struct ProofKey {
    pair: ring::signature::Ed25519KeyPair,
    /// The base64url JOSE header, the same for every proof.
    header: String,
}

impl ProofKey {
    fn new() -> Res<ProofKey> {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(err)?;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(err)?;
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519",
            "x": b64url(pair.public_key().as_ref())});
        let header = serde_json::json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk});
        Ok(ProofKey {
            pair,
            header: b64url(header.to_string().as_bytes()),
        })
    }

    /// A fresh proof for `method` `url`, with `ath` of `access_token` when given.
    fn proof(&self, method: &str, url: &str, access_token: Option<&str>) -> Res<String> {
        use ring::rand::SecureRandom;
        use tokend::clock::Clock;
        let mut jti = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut jti)
            .map_err(err)?;
        let mut claims = serde_json::json!({"jti": b64url(&jti), "htm": method, "htu": url,
            "iat": SystemClock.now()});
        if let Some(token) = access_token {
            let ath = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            claims["ath"] = serde_json::Value::String(b64url(ath.as_ref()));
        }
        let input = format!("{}.{}", self.header, b64url(claims.to_string().as_bytes()));
        let sig = self.pair.sign(input.as_bytes());
        Ok(format!("{input}.{}", b64url(sig.as_ref())))
    }
}

#[derive(Deserialize)]
struct BoundPair {
    access_token: String,
    refresh_token: String,
    token_type: String,
}

/// Logs in (`login` is the JSON body) with a proof of `key` (`issuer` is what `htu` names)
/// and answers the pair, which must be bound to the key.
async fn bound_login(
    t: &Target,
    sender: &mut Sender,
    login: &serde_json::Value,
    issuer: &str,
    key: &ProofKey,
) -> Res<BoundPair> {
    let mut req = json_request(t, "/auth/login", login)?;
    let proof = key.proof("POST", &format!("{issuer}/auth/login"), None)?;
    req.headers_mut()
        .insert("dpop", HeaderValue::from_str(&proof).map_err(err)?);
    let (status, body) = send(sender, req).await?;
    if status != StatusCode::OK {
        return Err(format!("login answered {status}: {body:?}"));
    }
    let pair = serde_json::from_slice::<BoundPair>(&body).map_err(err)?;
    if pair.token_type != "DPoP" {
        return Err(format!("the login was not bound: {}", pair.token_type));
    }
    Ok(pair)
}

/// `dpop --what verify --proofs-out FILE`: one bound login, then the access token and
/// `--presign` fresh `/auth/verify` proofs for it, one a line.
async fn write_proofs(run: &DpopRun, file: &std::path::Path) -> Res<()> {
    use std::io::Write;
    if run.what != "verify" {
        return Err("--proofs-out goes with --what verify".into());
    }
    let t = target(&run.base)?;
    let mut sender = connect(t.addr).await?;
    register(&t, &run.email, &run.password).await?;
    let key = ProofKey::new()?;
    let issuer = run
        .issuer
        .as_deref()
        .unwrap_or(&run.base)
        .trim_end_matches('/');
    let login = serde_json::json!({"email": run.email, "password": run.password});
    let pair = bound_login(&t, &mut sender, &login, issuer, &key).await?;
    let htu = format!("{issuer}/auth/verify");
    let mut out = std::io::BufWriter::new(std::fs::File::create(file).map_err(err)?);
    writeln!(out, "{}", pair.access_token).map_err(err)?;
    for _ in 0..run.presign {
        writeln!(out, "{}", key.proof("GET", &htu, Some(&pair.access_token))?).map_err(err)?;
    }
    out.flush().map_err(err)?;
    println!("proofs={}", run.presign);
    Ok(())
}

async fn dpop(run: &DpopRun) -> Res<Report> {
    let (what, load, email, password) = (run.what.as_str(), &run.load, &run.email, &run.password);
    let issuer = run.issuer.as_deref().unwrap_or(&run.base);
    if !matches!(what, "refresh" | "verify") {
        return Err(format!("--what is refresh or verify, not {what:?}"));
    }
    let t = Arc::new(target(&run.base)?);
    let issuer: Arc<str> = Arc::from(issuer.trim_end_matches('/'));
    register(&t, email, password).await?;
    let login = serde_json::json!({"email": email, "password": password});
    let refresh = what == "refresh";
    let per_connection = run.presign.div_ceil(load.connections.max(1));
    let ready = Arc::new(tokio::sync::Barrier::new(load.connections));
    let mut tasks = Vec::new();
    for i in 0..load.connections {
        let (t, load, login, issuer) = (t.clone(), load.clone(), login.clone(), issuer.clone());
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let key = ProofKey::new()?;
            let mut sender = connect(t.addr).await?;
            // A login with a proof: the pair and (the built-in client being public) the family
            // are bound to this connection's key.
            let pair = bound_login(&t, &mut sender, &login, &issuer, &key).await?;
            let (access, mut token) = (pair.access_token, pair.refresh_token);
            let (path, method) = if refresh {
                ("/auth/token/refresh", Method::POST)
            } else {
                ("/auth/verify", Method::GET)
            };
            let htu = format!("{issuer}{path}");
            let (htm, ath) = if refresh {
                ("POST", None)
            } else {
                ("GET", Some(access.as_str()))
            };
            let mut signed = (0..per_connection)
                .map(|_| key.proof(htm, &htu, ath))
                .collect::<Res<Vec<String>>>()?;
            // Every connection starts at once; one that failed to log in stops the rest.
            tokio::time::timeout(Duration::from_secs(120), ready.wait())
                .await
                .map_err(|_| "another connection did not get ready".to_string())?;
            let sched = Schedule::new(&load, i);
            let mut tally = Tally::default();
            let mut k = 0u64;
            while Instant::now() < sched.end {
                let proof = match signed.pop() {
                    Some(p) => p,
                    None => key.proof(htm, &htu, ath)?,
                };
                let authorization = if refresh {
                    format!("Bearer {token}")
                } else {
                    format!("DPoP {access}")
                };
                let due = sched.due(k).await;
                k += 1;
                let req = Request::builder()
                    .method(method.clone())
                    .uri(path)
                    .header(header::HOST, t.authority.as_str())
                    .header(header::AUTHORIZATION, authorization)
                    .header("dpop", proof)
                    .body(Full::new(Bytes::new()))
                    .map_err(err)?;
                let (status, body) = send(&mut sender, req).await?;
                if status != StatusCode::OK {
                    sched.record(&mut tally, due, false);
                    return Err(format!(
                        "{path} answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                if refresh {
                    token = serde_json::from_slice::<Pair>(&body)
                        .map_err(err)?
                        .refresh_token;
                }
                sched.record(&mut tally, due, true);
            }
            Ok(tally)
        }));
    }
    collect(load, tasks).await
}

// ---- reference loops ------------------------------------------------------------------------

fn keys_config(algs: Vec<Alg>, rsa_bits: usize) -> KeysConfig {
    KeysConfig {
        algs,
        rotation: Duration::from_secs(7 * 86_400),
        prepublish: Duration::from_secs(3600),
        retention: Duration::from_secs(14 * 86_400 + 30),
        reload: Duration::from_secs(30),
        rsa_bits,
    }
}

fn sign(alg: &str, rsa_bits: usize, refresh: bool, threads: usize, duration: f64) -> Res<()> {
    let alg = Alg::parse(alg).ok_or("alg is EdDSA or RS256")?;
    let rt = runtime(1)?;
    let clock: SharedClock = Arc::new(SystemClock);
    let store: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::new());
    let keys = rt
        .block_on(Keys::open(
            keys_config(vec![alg], rsa_bits),
            store,
            None,
            clock.clone(),
        ))
        .map_err(err)?;
    let issuer = "http://localhost:5000".to_string();
    let tokens = Tokens::new(issuer.clone(), "tokend".into(), keys);
    let now = clock.now();
    let access = AccessClaims {
        iss: issuer.clone(),
        sub: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        aud: Audience::One("tokend".into()),
        exp: now + 900,
        iat: now,
        nbf: now,
        jti: "q3bN0xw1l8mJ4Cj2YbKp9A".into(),
        client_id: "svc".into(),
        scope: "read write".into(),
        sid: None,
        fresh: false,
        auth_time: None,
        roles: vec![],
        username: None,
        cnf: None,
        act: None,
    };
    let refresh_claims = RefreshClaims {
        iss: issuer.clone(),
        sub: access.sub.clone(),
        aud: Audience::One(issuer),
        exp: now + 86_400,
        iat: now,
        jti: "Zk2x7pQ1rT9vW3yB5nM8cA".into(),
        sid: "b8Yt1c0qL2mN4pR6sT8uVw".into(),
        client_id: "tokend".into(),
        scope: String::new(),
        resources: vec![],
        // What a login's refresh token carries (docs/sessions.md, "The records").
        auth_time: Some(now),
        username: Some("loader".into()),
        roles: Some(vec![]),
        user_version: Some(now * 1000),
        cnf: None,
    };
    let presented = tokens
        .sign_refresh(alg, &refresh_claims)
        .map_err(|e| e.to_string())?;
    let stop = Instant::now() + Duration::from_secs_f64(duration);
    let counts: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while Instant::now() < stop {
                        if refresh {
                            let _ = tokens.decode_refresh(&presented, now);
                            let _ = tokens.sign_access(alg, &access);
                            let _ = tokens.sign_refresh(alg, &refresh_claims);
                        } else {
                            let _ = tokens.sign_access(alg, &access);
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    let total: u64 = counts.iter().sum();
    println!(
        "ops={:.0} threads={threads} alg={alg}{}",
        total as f64 / duration,
        if alg == Alg::RS256 {
            format!(" rsa_bits={rsa_bits}")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn argon2(cost: &str, cores: usize, duration: f64) -> Res<()> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let cost: tokend::config::Argon2Cost = cost.parse()?;
    let params = argon2::Params::new(cost.m_kib, cost.t, cost.p, None).map_err(err)?;
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"loadgen-salt-16b").map_err(err)?;
    let stop = Instant::now() + Duration::from_secs_f64(duration);
    let start = Instant::now();
    let mut n = 0u32;
    while Instant::now() < stop {
        hasher
            .hash_password(b"correct horse battery", &salt)
            .map_err(err)?;
        n += 1;
    }
    let per_hash = start.elapsed().as_secs_f64() / f64::from(n.max(1));
    // The same work on `cores` threads at once: what the cores really deliver together.
    let stop = Instant::now() + Duration::from_secs_f64(duration);
    let together: u32 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cores.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u32;
                    while Instant::now() < stop {
                        if hasher
                            .hash_password(b"correct horse battery", &salt)
                            .is_err()
                        {
                            break;
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    println!(
        "hash_ms={:.2} ceiling_rps={:.1} cores={cores} parallel_rps={:.1}",
        per_hash * 1000.0,
        cores as f64 / per_hash,
        f64::from(together) / duration
    );
    Ok(())
}

fn keyset(
    dir: Option<std::path::PathBuf>,
    mongodb_uri: Option<String>,
    mongodb_db: &str,
    kek: Option<String>,
    algs: &str,
    rsa_bits: usize,
) -> Res<()> {
    use base64::Engine as _;
    let algs = algs
        .split(',')
        .map(|a| Alg::parse(a.trim()).ok_or_else(|| format!("unknown alg {a}")))
        .collect::<Res<Vec<_>>>()?;
    let rt = runtime(1)?;
    let store: Arc<dyn KeyStore> = match (dir, mongodb_uri, kek) {
        (_, Some(uri), Some(kek)) => {
            let kek: [u8; 32] = base64::engine::general_purpose::STANDARD
                .decode(kek.trim())
                .map_err(err)?
                .try_into()
                .map_err(|_| "the key-encryption key must be 32 bytes")?;
            let mongo = rt
                .block_on(tokend::store::mongo::MongoStore::connect(&uri, mongodb_db))
                .map_err(err)?;
            Arc::new(MongoKeyStore::new(mongo.database(), kek))
        }
        (Some(dir), _, _) => Arc::new(DirKeyStore::new(dir)),
        _ => return Err("give --dir, or --mongodb-uri with --kek".into()),
    };
    let clock: SharedClock = Arc::new(SystemClock);
    let keys = rt
        .block_on(Keys::open(keys_config(algs, rsa_bits), store, None, clock))
        .map_err(err)?;
    for k in keys.list() {
        println!("{} {} {}", k.alg, k.state.as_str(), k.kid);
    }
    Ok(())
}

fn startup(bin: &std::path::Path, url: &str, runs: usize) -> Res<()> {
    let t = target(url)?;
    let rt = runtime(1)?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let mut child = std::process::Command::new(bin)
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(err)?;
        let ready = rt.block_on(async {
            let deadline = start + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(mut s) = connect(t.addr).await {
                    let req = Request::get(t.path.as_str())
                        .header(header::HOST, t.authority.as_str())
                        .body(Full::new(Bytes::new()))
                        .map_err(err)?;
                    if let Ok((StatusCode::OK, _)) = send(&mut s, req).await {
                        return Ok::<_, String>(Some(start.elapsed()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(None)
        })?;
        let _ = child.kill();
        let _ = child.wait();
        let ready = ready.ok_or("not ready within 10 s")?;
        times.push(ready.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(200));
    }
    times.sort_by(f64::total_cmp);
    println!(
        "startup_ms_median={:.1} min={:.1} max={:.1} runs={}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    );
    Ok(())
}
