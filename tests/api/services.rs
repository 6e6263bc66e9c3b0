//! The real services the tests run against: where the shared Redis and MongoDB are (started by
//! `deploy/test.sh`), per-test names, and private server instances a test can stop and start
//! again to simulate an outage.

// Test support: a failed set-up should stop the test loudly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokend::store::mongo::MongoStore;
use tokend::store::redis::RedisStore;

pub const ENV_MONGODB_URI: &str = "TOKEND_TEST_MONGODB_URI";
pub const ENV_REDIS_URL: &str = "TOKEND_TEST_REDIS_URL";
pub const ENV_REDIS_SERVER_BIN: &str = "TOKEND_TEST_REDIS_SERVER_BIN";
pub const ENV_SECANTUSD_BIN: &str = "TOKEND_TEST_SECANTUSD_BIN";

/// How long a freshly spawned server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(30);

fn required(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{var} is not set: run the tests with deploy/test.sh (it starts Redis and MongoDB), \
             or set {ENV_REDIS_URL} and {ENV_MONGODB_URI} to servers of your own"
        ),
    }
}

/// The shared MongoDB of this test run.
pub fn mongo_uri() -> String {
    required(ENV_MONGODB_URI)
}

/// The shared Redis of this test run.
pub fn redis_url() -> String {
    required(ENV_REDIS_URL)
}

/// `{prefix}_{uuid}`: a name no other test uses (a Mongo database, a Redis key prefix).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A MongoDB store on a fresh database of the shared server, indexes in place.
pub async fn mongo_store() -> MongoStore {
    let store = MongoStore::connect(&mongo_uri(), &unique_name("tokend_test"))
        .await
        .expect("connect to the test MongoDB");
    store.ensure_indexes().await.expect("create indexes");
    store
}

/// A Redis store on the shared server under a fresh key prefix (`tokend_test_<uuid>:`).
pub async fn redis_store() -> RedisStore {
    RedisStore::connect(&redis_url(), &format!("{}:", unique_name("tokend_test")))
        .await
        .expect("connect to the test Redis")
}

/// Every key under `prefix`.
pub async fn redis_keys(url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let pattern = format!("{prefix}*");
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The keys under `prefix` that exist without a TTL (`PTTL` -1; a key that expired between the
/// scan and the check is not one of them).
pub async fn redis_keys_without_ttl(url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let mut without = Vec::new();
    for key in redis_keys(url, prefix).await {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        if pttl == -1 {
            without.push(key);
        }
    }
    without
}

/// `PTTL` of one key (-2 missing, -1 no TTL).
pub async fn redis_pttl(url: &str, key: &str) -> i64 {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("PTTL")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Where test servers write their logs: `target/test-services/`.
fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-services");
    std::fs::create_dir_all(&dir).expect("create target/test-services");
    dir
}

fn log_file(name: &str) -> Stdio {
    std::fs::File::create(log_dir().join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// Polls a TCP connect until the port accepts, for at most [`READY_WITHIN`].
async fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} on port {port} exited at start-up ({status}); see target/test-services/"
            );
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what} did not accept connections on port {port} within {READY_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls until nothing accepts on the port any more (the server is really gone).
async fn wait_port_closed(port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("port {port} still accepts connections after the server was killed");
}

/// Asks the process to shut down cleanly (SIGTERM), killing it if it has not exited in time.
async fn terminate(child: &mut Option<Child>) {
    let Some(c) = child.as_mut() else { return };
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    for _ in 0..400 {
        if let Ok(Some(_)) = c.try_wait() {
            child.take();
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    kill(child);
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A private `redis-server` (no persistence) that a test may stop and start again on the same
/// port. Killed on drop.
pub struct OwnedRedis {
    port: u16,
    child: Option<Child>,
    /// Set for a one-node Redis Cluster: where its `nodes.conf` lives.
    cluster_dir: Option<tempfile::TempDir>,
}

impl OwnedRedis {
    /// Spawns a server on a free port and waits until it accepts connections.
    pub async fn start() -> Self {
        let mut r = OwnedRedis {
            port: free_port(),
            child: None,
            cluster_dir: None,
        };
        r.start_again().await;
        r
    }

    /// Spawns a one-node Redis Cluster holding every slot: the cluster rules (no command or
    /// script across slots) apply as on a real one. [`url`](Self::url) is then a
    /// `redis+cluster://` URL.
    pub async fn start_cluster() -> Self {
        let mut r = OwnedRedis {
            port: free_port(),
            child: None,
            cluster_dir: Some(tempfile::tempdir().expect("temp dir for nodes.conf")),
        };
        r.start_again().await;
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", r.port)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTS")
            .arg((0..16384).collect::<Vec<u16>>())
            .query_async(&mut conn)
            .await
            .expect("CLUSTER ADDSLOTS");
        for _ in 0..400 {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .unwrap();
            if info.contains("cluster_state:ok") {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the one-node Redis Cluster did not reach cluster_state:ok");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        match self.cluster_dir {
            Some(_) => format!("redis+cluster://127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (like a crash) and waits until the port is closed.
    pub async fn stop(&mut self) {
        kill(&mut self.child);
        wait_port_closed(self.port).await;
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, like a hung
    /// host.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`pause`](Self::pause)d server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let status = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {sig} failed");
        }
    }

    /// Starts the server again on the same port (empty: no persistence) and waits until it
    /// accepts connections. Does nothing if it is running.
    pub async fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let bin = std::env::var(ENV_REDIS_SERVER_BIN).unwrap_or_else(|_| "redis-server".into());
        let port = self.port.to_string();
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"]);
        if let Some(dir) = &self.cluster_dir {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(dir.path().join("nodes.conf"));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log_file(&format!("owned-redis-{port}.log")))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} (set {ENV_REDIS_SERVER_BIN}): {e}"));
        wait_for_port(self.port, &mut child, "redis-server").await;
        self.child = Some(child);
    }
}

impl Drop for OwnedRedis {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A private SecantusDB (MongoDB wire protocol) that a test may stop and start again on the same
/// port. Its data lives in a temporary directory, so it survives a restart. Killed on drop.
pub struct OwnedMongo {
    port: u16,
    child: Option<Child>,
    data: tempfile::TempDir,
}

impl OwnedMongo {
    /// Spawns a server on a free port and waits until it accepts connections.
    pub async fn start() -> Self {
        let mut m = OwnedMongo {
            port: free_port(),
            child: None,
            data: tempfile::tempdir().expect("temp dir for SecantusDB"),
        };
        m.start_again().await;
        m
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }

    pub fn uri(&self) -> String {
        self.url()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Shuts the server down (its data stays on disk) and waits until the port is closed.
    pub async fn stop(&mut self) {
        terminate(&mut self.child).await;
        wait_port_closed(self.port).await;
    }

    /// Starts the server again on the same port and data directory and waits until it accepts
    /// connections. Does nothing if it is running.
    pub async fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let bin = secantusd_bin();
        let port = self.port.to_string();
        let storage = self.data.path().join("db");
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port, "--storage-path"])
            .arg(&storage)
            .current_dir(self.data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&format!("owned-secantusd-{port}.log")))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (set {ENV_SECANTUSD_BIN}): {e}",
                    bin.display()
                )
            });
        wait_for_port(self.port, &mut child, "secantusd-py").await;
        self.child = Some(child);
    }
}

impl Drop for OwnedMongo {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// `TOKEND_TEST_SECANTUSD_BIN`, else the venv `deploy/test.sh` makes, else the `PATH`.
fn secantusd_bin() -> PathBuf {
    if let Ok(bin) = std::env::var(ENV_SECANTUSD_BIN) {
        return PathBuf::from(bin);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/secantusd-py");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("secantusd-py")
    }
}
