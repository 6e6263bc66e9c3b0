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

/// The shared Redis of this test run (or the one [`with_redis_url`] names).
pub fn redis_url() -> String {
    current_redis_url().unwrap_or_else(|| required(ENV_REDIS_URL))
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

/// Every key under `prefix` (of every master when `url` is a `redis+cluster://` URL).
pub async fn redis_keys(url: &str, prefix: &str) -> Vec<String> {
    if url.starts_with("redis+cluster://") {
        return redis_cluster_keys(url, prefix).await;
    }
    scan_node(url, prefix).await
}

/// Every key under `prefix` on one server.
async fn scan_node(url: &str, prefix: &str) -> Vec<String> {
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
    let mut conn = kv_conn(url).await;
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
    let mut conn = kv_conn(url).await;
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("PTTL")
}

/// A loopback port nobody listens on right now, below the range the kernel hands to outgoing
/// connections (`/proc/sys/net/ipv4/ip_local_port_range`): a port from that range could be
/// given to a client socket between this call and the bind of the server it is for.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// The lowest port [`free_ports`] hands out.
const LOWEST_PORT: u16 = 10_000;

/// The first port of the kernel's range for outgoing connections.
fn outgoing_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
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
    /// Set for a one-node Redis Cluster: where its `nodes.conf` lives and its bus port.
    cluster: Option<ClusterNode>,
    /// Set for a server with an append-only file (`appendfsync always`): where it lives.
    aof_dir: Option<tempfile::TempDir>,
}

/// What a one-node cluster needs besides its port: a bus port of its own (the default, port +
/// 10000, may fall in the kernel's range for outgoing connections or on another test's port)
/// and a directory for `nodes.conf`.
struct ClusterNode {
    dir: tempfile::TempDir,
    bus: u16,
}

impl OwnedRedis {
    /// Spawns a server on a free port and waits until it accepts connections.
    pub async fn start() -> Self {
        let mut r = OwnedRedis {
            port: free_port(),
            child: None,
            cluster: None,
            aof_dir: None,
        };
        r.start_again().await;
        r
    }

    /// Spawns a server that persists every write before answering (`appendonly yes`,
    /// `appendfsync always`): what it acknowledged survives a kill and a restart.
    pub async fn start_persistent() -> Self {
        let mut r = OwnedRedis {
            port: free_port(),
            child: None,
            cluster: None,
            aof_dir: Some(tempfile::tempdir().expect("temp dir for the append-only file")),
        };
        r.start_again().await;
        r
    }

    /// Spawns a one-node Redis Cluster holding every slot: the cluster rules (no command or
    /// script across slots) apply as on a real one. [`url`](Self::url) is then a
    /// `redis+cluster://` URL.
    pub async fn start_cluster() -> Self {
        let ports = free_ports(2);
        let mut r = OwnedRedis {
            port: ports[0],
            child: None,
            cluster: Some(ClusterNode {
                dir: tempfile::tempdir().expect("temp dir for nodes.conf"),
                bus: ports[1],
            }),
            aof_dir: None,
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
        match self.cluster {
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
            .args(["--daemonize", "no"]);
        match &self.aof_dir {
            None => {
                cmd.args(["--appendonly", "no"]);
            }
            Some(dir) => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                    .arg(dir.path());
            }
        }
        if let Some(node) = &self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-port"])
                .arg(node.bus.to_string())
                .arg("--cluster-config-file")
                .arg(node.dir.path().join("nodes.conf"));
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

// ---------------------------------------------------------------------------------------------
// Redis URL override, Redis Cluster, tokend processes
// ---------------------------------------------------------------------------------------------

pub const ENV_REDIS_CLUSTER_URL: &str = "TOKEND_TEST_REDIS_CLUSTER_URL";
pub const ENV_REDIS_CLI_BIN: &str = "TOKEND_TEST_REDIS_CLI_BIN";

tokio::task_local! {
    /// A Redis URL that replaces [`redis_url`] inside [`with_redis_url`].
    static REDIS_URL_OVERRIDE: String;
}

/// Runs `fut` with [`redis_url`] answering `url`: the same test bodies then run against another
/// Redis (a cluster) without changing them. Only the task running `fut` sees the override.
pub async fn with_redis_url<F: std::future::Future>(url: String, fut: F) -> F::Output {
    REDIS_URL_OVERRIDE.scope(url, fut).await
}

/// The Redis a test should use: the override of [`with_redis_url`], else the shared one.
fn current_redis_url() -> Option<String> {
    REDIS_URL_OVERRIDE.try_with(Clone::clone).ok()
}

/// A connection for test queries to one server or to a cluster (`redis+cluster://`).
pub enum KvConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for KvConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            KvConn::Single(c) => c.req_packed_command(cmd),
            KvConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            KvConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            KvConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            KvConn::Single(c) => c.get_db(),
            KvConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The `redis://` URLs of the nodes a `redis+cluster://h1:p1,h2:p2` URL names.
pub fn cluster_node_urls(url: &str) -> Vec<String> {
    let rest = url
        .strip_prefix("redis+cluster://")
        .expect("a redis+cluster:// URL");
    rest.split(['/', '?'])
        .next()
        .unwrap_or_default()
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{h}/"))
        .collect()
}

/// Connects to `url` (one server, or a cluster given as `redis+cluster://`).
pub async fn kv_conn(url: &str) -> KvConn {
    if url.starts_with("redis+cluster://") {
        let client = redis::cluster::ClusterClient::new(cluster_node_urls(url)).unwrap();
        KvConn::Cluster(
            client
                .get_async_connection()
                .await
                .expect("connect to the cluster"),
        )
    } else {
        let client = redis::Client::open(url).expect("redis url");
        KvConn::Single(
            client
                .get_multiplexed_async_connection()
                .await
                .expect("connect to redis"),
        )
    }
}

/// The `redis://` URLs of every master of the cluster `url` names (asked of its first node).
pub async fn cluster_masters(url: &str) -> Vec<String> {
    let first = cluster_node_urls(url).remove(0);
    let client = redis::Client::open(first).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .expect("CLUSTER NODES");
    nodes
        .lines()
        .filter(|l| l.contains("master") && !l.contains("fail"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|addr| format!("redis://{}/", addr.split('@').next().unwrap_or(addr)))
        .collect()
}

/// Every key under `prefix` in a cluster: a `SCAN` of each master.
pub async fn redis_cluster_keys(url: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for node in cluster_masters(url).await {
        keys.extend(scan_node(&node, prefix).await);
    }
    keys.sort();
    keys.dedup();
    keys
}

/// A Redis Cluster of three masters (no replicas) on loopback ports, made with
/// `redis-cli --cluster create`, as an operator would. Killed on drop.
pub struct RedisCluster {
    /// (client port, cluster bus port) of each node.
    nodes: Vec<(u16, u16)>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// `n` distinct loopback ports nobody listens on right now, chosen at random below the
/// kernel's range for outgoing connections (see [`free_port`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::hash::{BuildHasher, Hasher};
    let top = outgoing_ports_start().max(LOWEST_PORT + 1_000);
    let mut held: Vec<TcpListener> = Vec::with_capacity(n);
    for _ in 0..10_000 {
        if held.len() == n {
            break;
        }
        // A new RandomState has new random keys: its hash of nothing is a random number.
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let offset = u16::try_from(r % u64::from(top - LOWEST_PORT)).expect("below top");
        if let Ok(l) = TcpListener::bind(("127.0.0.1", LOWEST_PORT + offset)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), n, "free loopback ports below {top}");
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn redis_cli_bin() -> PathBuf {
    if let Ok(bin) = std::env::var(ENV_REDIS_CLI_BIN) {
        return PathBuf::from(bin);
    }
    if let Ok(server) = std::env::var(ENV_REDIS_SERVER_BIN) {
        let sibling = PathBuf::from(server).with_file_name("redis-cli");
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from("redis-cli")
}

impl RedisCluster {
    /// Starts three `redis-server --cluster-enabled yes` nodes (each with its own bus port),
    /// joins them with `redis-cli --cluster create … --cluster-replicas 0`, and waits until
    /// every node reports `cluster_state:ok`.
    pub async fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir for nodes.conf");
        let ports = free_ports(6);
        let nodes: Vec<(u16, u16)> = (0..3).map(|i| (ports[2 * i], ports[2 * i + 1])).collect();
        let bin = std::env::var(ENV_REDIS_SERVER_BIN).unwrap_or_else(|_| "redis-server".into());
        let mut children = Vec::new();
        for (port, bus) in &nodes {
            let mut child = Command::new(&bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .arg("--cluster-config-file")
                .arg(dir.path().join(format!("nodes-{port}.conf")))
                .args(["--cluster-node-timeout", "5000"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log_file(&format!("cluster-redis-{port}.log")))
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {bin} (set {ENV_REDIS_SERVER_BIN}): {e}"));
            wait_for_port(*port, &mut child, "redis-server (cluster node)").await;
            children.push(child);
        }
        let cluster = RedisCluster {
            nodes,
            children,
            _dir: dir,
        };
        let mut create = Command::new(redis_cli_bin());
        create.arg("--cluster").arg("create");
        for (port, _) in &cluster.nodes {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok().await;
        cluster
    }

    /// Polls `CLUSTER INFO` on every node until each says `cluster_state:ok` and knows three
    /// nodes.
    async fn wait_ok(&self) {
        for (port, _) in &self.nodes {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let mut ok = false;
            for _ in 0..1200 {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            assert!(ok, "cluster node {port} did not reach cluster_state:ok");
        }
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(p, _)| *p).collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The cluster a test runs against: the one `deploy/test.sh` started
/// (`TOKEND_TEST_REDIS_CLUSTER_URL`), else a private one for this test.
pub enum ClusterHandle {
    Shared(String),
    Owned(RedisCluster),
}

impl ClusterHandle {
    pub fn url(&self) -> String {
        match self {
            ClusterHandle::Shared(url) => url.clone(),
            ClusterHandle::Owned(c) => c.url(),
        }
    }
}

pub async fn redis_cluster() -> ClusterHandle {
    match std::env::var(ENV_REDIS_CLUSTER_URL) {
        Ok(url) if !url.trim().is_empty() => ClusterHandle::Shared(url),
        _ => ClusterHandle::Owned(RedisCluster::start().await),
    }
}

/// A `tokend serve` process of the real binary, with JSON logs drained from its stderr (kept in
/// memory, the last [`KEEP_LOG_LINES`], and written to `target/test-services/`). Killed on drop.
pub struct TokendProcess {
    child: Option<Child>,
    pub name: String,
    pub addr: SocketAddr,
    pub base: String,
    pub env: std::collections::HashMap<String, String>,
    lines: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    cwd: PathBuf,
}

/// How many log lines of a [`TokendProcess`] are kept in memory.
pub const KEEP_LOG_LINES: usize = 5_000;

impl TokendProcess {
    /// Starts `tokend serve` in `cwd` with exactly `env` (plus `PATH`, JSON logs) and waits for
    /// its "tokend listening" line (bounded) to learn the address.
    pub async fn start(
        name: &str,
        env: &std::collections::HashMap<String, String>,
        cwd: &std::path::Path,
    ) -> TokendProcess {
        use std::io::{BufRead, BufReader, Write};
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokend"));
        cmd.env_clear();
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        cmd.envs(env)
            .env("TOKEND_LOG_FORMAT", "json")
            .env(
                "TOKEND_LOG",
                env.get("TOKEND_LOG").map_or("info", String::as_str),
            )
            .arg("serve")
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tokend");
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let lines = lines.clone();
            let mut file =
                std::fs::File::create(log_dir().join(format!("tokend-{name}-{}.log", child.id())))
                    .ok();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = String::new();
                let mut announced = false;
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if let Some(f) = file.as_mut() {
                        let _ = f.write_all(line.as_bytes());
                    }
                    if !announced && line.contains("tokend listening") {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                            let addr = v["addr"]
                                .as_str()
                                .or_else(|| v["fields"]["addr"].as_str())
                                .unwrap_or_default()
                                .to_string();
                            announced = tx.send(addr).is_ok();
                        }
                    }
                    let mut kept = lines.lock().unwrap();
                    if kept.len() == KEEP_LOG_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line.trim_end().to_string());
                }
            });
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let addr = loop {
            match rx.try_recv() {
                Ok(addr) => break addr,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    let status = child.wait().ok();
                    let log: Vec<String> = lines.lock().unwrap().iter().cloned().collect();
                    panic!("tokend {name} exited before listening ({status:?}): {log:#?}");
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                panic!("tokend {name} did not log \"tokend listening\" within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|_| panic!("tokend {name} listens on {addr:?}?"));
        TokendProcess {
            child: Some(child),
            name: name.to_string(),
            addr,
            base: format!("http://{addr}"),
            env: env.clone(),
            lines,
            cwd: cwd.to_path_buf(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the process is still running (it has not exited or been killed).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// SIGKILL, like a crash or an OOM kill, and reap it.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// SIGTERM and wait (bounded) for a clean exit; returns the exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        for _ in 0..1200 {
            if let Ok(Some(status)) = c.try_wait() {
                self.child.take();
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        kill(&mut self.child);
        None
    }

    /// The log lines kept so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().cloned().collect()
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/<pid>/fd")
            .count()
    }

    /// The working directory it runs in.
    pub fn cwd(&self) -> &std::path::Path {
        &self.cwd
    }
}

impl Drop for TokendProcess {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
