//! Beyond one machine: a run's events in Redis streams. `publish` appends
//! the run's log to Redis as it grows (one more reader of the log, like the
//! terminal); `source` fills a relay's log from Redis, so the same server
//! code serves it with the same ids and bytes.
//!
//! What is in Redis, per run (on a Cluster, `<run_id>` goes in braces,
//! a hash tag: see [`Target::tagged`]):
//! - the stream `batchsse:run:<run_id>`: one entry per event, with the
//!   explicit entry ID `<event id>-0` (so a resend is refused, never doubled)
//!   and the fields `event` (its name) and `data` (the SSE `data:` JSON);
//! - the string `batchsse:plan:<plan>:latest`: the plan's newest run id;
//! - the string `batchsse:alive:<run_id>`, while the run's process lives
//!   and reaches Redis (it expires [`ALIVE_SECS`] after the last sign), so
//!   a relay can tell a quiet run from one that was killed.
//!
//! While the run's process lives, the publisher keeps both alive; they
//! expire `--publish-ttl` after its last write: the `finished` event, or,
//! for a run that was killed, its last sign of life.

pub mod publish;
pub mod source;
mod tls;

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::error::UsageError;
use crate::human::{quoted, shell_word};

/// What a Redis URL does not say, from flags and the environment: the
/// PEM files for `rediss://` (`--redis-ca`, `--redis-cert`, `--redis-key`)
/// and a password kept out of `ps` (`BATCHSSE_REDIS_PASSWORD`).
#[derive(Debug, Default, Clone)]
pub struct Access {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub password: Option<String>,
}

/// Where the Redis is and how to reach it, with the URL as shown to people
/// (no password).
pub struct Target {
    server: Server,
    /// `AUTH`'s arguments: the user, if any, and the password.
    auth: Option<(Option<String>, String)>,
    /// The first host and port, for `redis-cli` hints.
    host: String,
    port: u16,
    db: i64,
    tls: bool,
    /// Sentinel's name for the primary.
    service: Option<String>,
    shown: String,
    /// `--redis-ca FILE` and the rest, as given, for the relay command.
    tls_flags: String,
    /// The same files as `redis-cli` takes them, for its hints.
    cli_tls_flags: String,
}

/// The server behind a URL. Credentials and the database are not in it:
/// `connect` sends `AUTH` and `SELECT` itself, so a refusal reaches the
/// user in Redis's own words (the crate would replace them with its own).
enum Server {
    /// One node: `redis://`, `rediss://`.
    Node(redis::Client),
    /// The primary Sentinel names: `redis+sentinel://`.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
    /// A Redis Cluster: `redis+cluster://`. The crate authenticates each
    /// node's connection itself.
    Cluster(redis::cluster::ClusterClient),
}

impl std::fmt::Debug for Target {
    /// The password stays out of debug output too.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Target").field(&self.shown).finish()
    }
}

/// How long a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The URL forms batchsse takes, for messages.
const FORMS: &str = "redis://[USER:PASSWORD@]HOST:PORT[/DB] (rediss:// for TLS, redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB], redis+cluster://HOST:PORT[,HOST:PORT…]), e.g. redis://127.0.0.1:6379/0";

/// A URL taken apart: scheme, user, password, the hosts and what follows.
struct Parts {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    hosts: Vec<(String, u16)>,
    path: Vec<String>,
}

impl Parts {
    fn of(url: &str) -> Result<Parts, String> {
        let (scheme, rest) = url.split_once("://").ok_or("is not a URL")?;
        let scheme = scheme.to_ascii_lowercase();
        // Unescaped, these end the host part, so a password holding one
        // would be read, and echoed in an error, as a host or port.
        let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if rest[host_end..].contains('@') {
            return Err(
                "has a '/', '?' or '#' in its user or password: write them %2F, %3F and %23 there, or give the password in BATCHSSE_REDIS_PASSWORD"
                    .into(),
            );
        }
        if let Some(at) = rest[host_end..].find(['?', '#']) {
            let extra = &rest[host_end + at..];
            if !extra.trim_start_matches(['?', '#']).is_empty() {
                return Err(unread(extra));
            }
        }
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| "has a bad %-escape in its user or password".to_owned())
        };
        let (user, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
            Some((u, p)) => (
                Some(decode(u)?).filter(|u| !u.is_empty()),
                Some(decode(p)?).filter(|p| !p.is_empty()),
            ),
            None => (None, None),
        };
        let default_port = if scheme.contains("sentinel") {
            26379
        } else {
            6379
        };
        let hosts = hosts
            .split(',')
            .map(|h| host_port(h, default_port))
            .collect::<Result<Vec<_>, _>>()?;
        let path = path
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Parts {
            scheme,
            user,
            password,
            hosts,
            path,
        })
    }
}

impl Parts {
    /// The URL as shown to people: without its password.
    fn shown(&self, service: Option<&str>, db: i64, cluster: bool) -> String {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|(h, p)| format!("{}:{p}", url_host(h)))
            .collect();
        let user = self
            .user
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let (scheme, hosts) = (&self.scheme, hosts.join(","));
        match (cluster, service) {
            (true, _) => format!("{scheme}://{user}{hosts}"),
            (false, Some(service)) => format!("{scheme}://{user}{hosts}/{service}/{db}"),
            (false, None) => format!("{scheme}://{user}{hosts}/{db}"),
        }
    }
}

/// Why a URL's query or fragment is refused: other clients read some
/// (`?db=2`, `#insecure`), and dropping them would publish elsewhere, or
/// seem to, than the user wrote. Not quoted: it may hold a password.
fn unread(extra: &str) -> String {
    match extra.starts_with('?') {
        true => "has a query (after '?'), which batchsse does not read: put the database in the path (…/2), the password before the host or in BATCHSSE_REDIS_PASSWORD, and nothing after".into(),
        false => "has a fragment (after '#'), which batchsse does not read: TLS always checks the server's certificate (for a private CA, give --redis-ca FILE)".into(),
    }
}

/// `HOST[:PORT]` or `[V6][:PORT]`.
fn host_port(h: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = match h.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']').ok_or("has an unclosed [")?;
            (host, rest.strip_prefix(':'))
        }
        None => match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        },
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("has a bad port {}", quoted(p)))?,
        None => default_port,
    };
    Ok((host.to_owned(), port))
}

/// `%XX` escapes decoded; `None` for a bad one.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// batchsse's names for the CA, client certificate and key files, and
/// `redis-cli`'s, which its hints need to connect as batchsse did.
const OUR_TLS_FLAGS: [&str; 3] = ["--redis-ca", "--redis-cert", "--redis-key"];
const CLI_TLS_FLAGS: [&str; 3] = ["--cacert", "--cert", "--key"];

/// The TLS file flags of `access` under `names`, each with its path as a
/// shell word.
fn tls_flags(access: &Access, names: [&str; 3]) -> String {
    let paths = [&access.ca, &access.cert, &access.key];
    names
        .iter()
        .zip(paths)
        .filter_map(|(flag, path)| {
            Some(format!(
                " {flag} {}",
                crate::human::shell_path(path.as_ref()?)
            ))
        })
        .collect()
}

/// A host as it goes in a URL (an IPv6 address in brackets).
fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

impl Target {
    /// Parses a Redis URL given to `flag` (which names the environment
    /// variable too, where one can set it), with what `access` adds.
    pub fn parse(flag: &str, url: &str, access: &Access) -> Result<Target, UsageError> {
        let usage = |why: String| UsageError::new(format!("{flag} {why}; give {FORMS}"));
        let url = url.trim();
        if url.is_empty() {
            return Err(usage("is empty".into()));
        }
        let parts = Parts::of(url).map_err(|why| {
            usage(if url.contains("://") {
                why
            } else {
                "is not a redis:// URL".into()
            })
        })?;
        let tls = match parts.scheme.as_str() {
            "redis" | "redis+sentinel" => false,
            "rediss" | "rediss+sentinel" => true,
            "redis+cluster" => false,
            "rediss+cluster" => true,
            _ => return Err(usage("is not a redis:// URL".into())),
        };
        let sentinel = parts.scheme.ends_with("+sentinel");
        let cluster = parts.scheme.ends_with("+cluster");
        if cluster && !parts.path.is_empty() {
            return Err(usage(
                "names a database, which Redis Cluster does not have".into(),
            ));
        }
        let (service, db) = match (sentinel, parts.path.as_slice()) {
            (false, []) => (None, "0"),
            (false, [db]) => (None, db.as_str()),
            (true, [service]) => (Some(service.clone()), "0"),
            (true, [service, db]) => (Some(service.clone()), db.as_str()),
            (true, []) => return Err(usage("names no service (…/SERVICE[/DB])".into())),
            _ => return Err(usage("has more path than a database number".into())),
        };
        let db: i64 = db
            .parse()
            .map_err(|_| usage(format!("has {} where the database number goes", quoted(db))))?;
        if parts.hosts.len() > 1 && !sentinel && !cluster {
            return Err(usage(
                "lists several hosts, which only redis+sentinel:// and redis+cluster:// take"
                    .into(),
            ));
        }
        let password = parts.password.clone().or_else(|| access.password.clone());
        let auth = password.map(|p| (parts.user.clone(), p));
        let pem = tls::Pem::read(access, tls).map_err(UsageError::new)?;
        let server = match &service {
            Some(service) => tls::sentinel(&parts.hosts, service, tls, pem, auth.as_ref()),
            None if cluster => tls::cluster(&parts.hosts, tls, pem, auth.as_ref()),
            None => tls::node(&parts.hosts[0], tls, pem),
        }
        .map_err(|e| usage(format!("is not usable ({e})")))?;
        let shown = parts.shown(service.as_deref(), db, cluster);
        Ok(Target {
            server,
            auth,
            host: parts.hosts[0].0.clone(),
            port: parts.hosts[0].1,
            db,
            tls,
            service,
            tls_flags: tls_flags(access, OUR_TLS_FLAGS),
            cli_tls_flags: tls_flags(access, CLI_TLS_FLAGS),
            shown,
        })
    }

    /// The URL without its password, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The TLS file flags given (` --redis-ca ca.pem`…), which a relay of
    /// this Redis needs as well.
    pub fn tls_flags(&self) -> &str {
        &self.tls_flags
    }

    /// A new connection. Replies are not timed out here: a relay's reads
    /// block on purpose, so callers bound each call themselves.
    pub async fn connect(&self) -> redis::RedisResult<Conn> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        let mut conn = match &self.server {
            Server::Node(client) => Conn::Node(
                within(
                    CONNECT_TIMEOUT,
                    client.get_multiplexed_async_connection_with_config(&config),
                )
                .await?,
            ),
            Server::Sentinel(client) => {
                let mut client = client.lock().await;
                Conn::Node(
                    within(
                        CONNECT_TIMEOUT * 2,
                        client.get_async_connection_with_config(&config),
                    )
                    .await?,
                )
            }
            Server::Cluster(client) => {
                let mut conn = within(CONNECT_TIMEOUT * 2, client.get_async_connection()).await?;
                within(
                    CONNECT_TIMEOUT,
                    redis::cmd("PING").query_async::<()>(&mut conn),
                )
                .await?;
                return Ok(Conn::Cluster(conn));
            }
        };
        // One at a time, so a refusal is Redis's own sentence. A server that
        // wants a password answers the first command, not the connection,
        // with NOAUTH; hence the PING.
        let mut setup = Vec::new();
        if let Some((user, password)) = &self.auth {
            setup.push(redis::cmd("AUTH").arg(user).arg(password).clone());
        }
        if self.db != 0 {
            setup.push(redis::cmd("SELECT").arg(self.db).clone());
        }
        setup.push(redis::cmd("PING"));
        for cmd in setup {
            within(CONNECT_TIMEOUT, cmd.query_async::<()>(&mut conn)).await?;
        }
        Ok(conn)
    }

    /// A connection at start, or the usage error that ends the command
    /// before anything is done (`doing`: "publish to", "relay from"; `url`:
    /// where the URL came from, for the fix).
    pub async fn connect_or_refuse(&self, doing: &str, url: &str) -> Result<Conn, UsageError> {
        let e = match self.connect().await {
            Ok(mut conn) => {
                if !self.one_node_of_a_cluster(&mut conn).await {
                    return Ok(conn);
                }
                return Err(UsageError::new(format!(
                    "cannot {doing} {}: that node is one of a Redis Cluster; give redis+cluster://HOST:PORT, to the run and its relays alike",
                    self.shown
                )));
            }
            Err(e) => e,
        };
        let (why, fix) = match self.tls.then(|| tls::failure(&e)).flatten() {
            Some(why_fix) => why_fix,
            None => match self.primary_down(&e).await.or_else(|| self.nodes_away(&e)) {
                Some(why_fix) => why_fix,
                None => match self.full(&e).await {
                    Some(why_fix) => why_fix,
                    None => self.refusal(e, url),
                },
            },
        };
        Err(UsageError::new(format!(
            "cannot {doing} {}: {why}; {fix}",
            self.shown
        )))
    }

    /// Whether a plain URL names one node of a Redis Cluster (its `INFO
    /// cluster` says so; for a user whose ACL refuses `INFO`, keys in
    /// other nodes' slots: [`keys_elsewhere`]).
    /// Through one node a run and its relays would find their keys by the
    /// luck of the hash: a key in another node's slot is refused (`MOVED`),
    /// and a relay by plan whose key the node held waited forever for a
    /// run stream it looked for under another name than the Cluster's.
    async fn one_node_of_a_cluster(&self, conn: &mut Conn) -> bool {
        if !matches!(self.server, Server::Node(_)) {
            return false;
        }
        let mut info = redis::cmd("INFO");
        info.arg("cluster");
        match within(CONNECT_TIMEOUT, info.query_async::<String>(conn)).await {
            Ok(s) => s.lines().any(|l| l.trim() == "cluster_enabled:1"),
            // An ACL user may not run INFO (the least rules the README
            // gives do not allow it): the keys tell instead. Any other
            // failure (a node that did not answer in time) is not asked
            // again: the run's own first write says what is wrong.
            Err(e) if e.code() == Some("NOPERM") => keys_elsewhere(conn).await,
            Err(_) => false,
        }
    }

    /// Under Sentinel, a failure to reach the primary the sentinels name,
    /// said as that (with its address and their flags), not as a wrong
    /// service or a sentinel that is not there; `None` for any other.
    async fn primary_down(&self, e: &redis::RedisError) -> Option<(String, String)> {
        let (Server::Sentinel(client), Some(service)) = (&self.server, &self.service) else {
            return None;
        };
        let not_found = e.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel;
        if !not_found && !e.is_connection_refusal() {
            return None;
        }
        let (addr, flags) = tls::named_primary(client, service).await?;
        let named = format!(
            "{addr}, the primary the sentinels name for {}",
            quoted(service)
        );
        let down = "start it, or let the sentinels fail over to a replica (one with a replica-priority above 0), then try again";
        let (why, fix) = if flags.split(',').any(|f| f == "s_down" || f == "o_down") {
            (
                format!("{named}, is down (the sentinels flag it {flags})"),
                down,
            )
        } else if not_found {
            (
                format!("{named}, does not answer as a primary (its ROLE says otherwise)"),
                "a failover may be under way: try again once the sentinels name the new primary (if none is, that node was made a replica by hand: see its replicaof)",
            )
        } else {
            (
                format!("nothing is listening at {named} ({})", one_line(e)),
                down,
            )
        };
        Some((why, fix.to_owned()))
    }

    /// A Redis at its `maxclients` answers a new connection with an error
    /// and closes it, which the crate, writing its first command, sees as
    /// a broken pipe ("is Redis running there?"). On such a failure a
    /// plain connection of its own reads what the server says first.
    async fn full(&self, e: &redis::RedisError) -> Option<(String, String)> {
        use tokio::io::AsyncReadExt;
        if self.tls || self.is_sentinel() || !(e.is_io_error() || e.is_connection_dropped()) {
            return None;
        }
        let first = async {
            let mut conn = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .ok()?;
            let mut said = [0u8; 64];
            let n = conn.read(&mut said).await.ok()?;
            Some(said[..n].to_vec())
        };
        let said = tokio::time::timeout(Duration::from_millis(500), first)
            .await
            .ok()??;
        if !said.starts_with(b"-ERR max number of clients reached") {
            return None;
        }
        let (host, port) = (&self.host, self.port);
        Some((
            format!(
                "Redis at {host}:{port} takes no more clients (it answered \"ERR max number of clients reached\": it holds as many as its maxclients allows)"
            ),
            format!(
                "close some of its connections (`redis-cli -h {host} -p {port} CLIENT LIST` shows them), or raise its limit (`CONFIG SET maxclients N`, and in redis.conf), then try again"
            ),
        ))
    }

    /// In a Cluster, the node in the URL answered but none of the nodes
    /// could be reached at the addresses the Cluster gives for them (the
    /// crate says only that it found no connection): said as that.
    fn nodes_away(&self, e: &redis::RedisError) -> Option<(String, String)> {
        if !self.is_cluster() || e.kind() != redis::ErrorKind::ClusterConnectionNotFound {
            return None;
        }
        let why = format!(
            "the Cluster's nodes cannot be reached at the addresses it gives for them ({})",
            one_line(e)
        );
        let (host, port) = (&self.host, self.port);
        let tls = match self.tls {
            true => " --tls",
            false => "",
        };
        let names = match self.tls {
            true => {
                ", and that its TLS certificate names (an IP address, unless the nodes announce host names)"
            }
            false => "",
        };
        let auth = self.cli_auth();
        let fix = format!(
            "`redis-cli -h {host} -p {port}{tls}{auth} CLUSTER SLOTS` shows them; have each node announce an address this host can reach (cluster-announce-ip, cluster-announce-port, or cluster-announce-hostname with cluster-preferred-endpoint-type hostname){names}"
        );
        Some((why, fix))
    }

    /// Why a connection at start failed, in Redis's words where it
    /// answered, and what to try for that cause.
    fn refusal(&self, e: redis::RedisError, url: &str) -> (String, String) {
        if e.kind() == redis::ErrorKind::Parse {
            // Bytes that are no Redis reply: another server on that port.
            return (
                format!(
                    "the server at {}:{} does not answer as Redis does ({})",
                    self.host,
                    self.port,
                    one_line(&e)
                ),
                format!(
                    "is that {}? Fix the host or port in {url}",
                    match self.is_sentinel() {
                        true => "a sentinel's port (26379 by default)",
                        false => "Redis's port (6379 by default)",
                    }
                ),
            );
        }
        let not_found = e.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel;
        let text = e.to_string().to_ascii_lowercase();
        let crate_words = one_line(&e);
        let failure = Failure::of(e);
        let why = match not_found {
            true => crate_words,
            false => failure.why().to_owned(),
        };
        let (host, port) = (&self.host, self.port);
        let fix = if not_found {
            format!(
                "the sentinels there watch no primary of that name: fix the SERVICE in {url} (`redis-cli -h {host} -p {port} SENTINEL MASTERS` names the ones they watch)"
            )
        } else if text.contains("not point to a sentinel") {
            format!(
                "{host}:{port} is a Redis node, not a sentinel: give the sentinels' addresses (port 26379 by default) in {url}, or a redis:// URL for that node"
            )
        } else if text.contains("cluster support disabled") {
            format!(
                "{host}:{port} is not a Redis Cluster node: give a redis:// URL for a single node in {url}"
            )
        } else if why.contains("\"NOAUTH") && self.is_sentinel() && self.auth.is_some() {
            // The crate authenticates to the nodes with the URL's password
            // now, so a NOAUTH is the sentinels'.
            "the sentinels want a password (requirepass in sentinel.conf), which batchsse cannot give them: the URL's password goes to the Redis nodes; give batchsse sentinels without one".to_owned()
        } else if why.contains("\"NOPERM") {
            format!(
                "give the Redis user that command (see the README's ACL rules, \"On production Redis\"), or another user in {url}"
            )
        } else if text.contains("authentication failed") || matches!(failure, Failure::Refused(_)) {
            format!("fix the password (or user, or database) in {url}, or BATCHSSE_REDIS_PASSWORD")
        } else if why.starts_with("Redis answered") {
            "Redis is there but cannot serve for now (its log says why); try again once it can"
                .to_owned()
        } else if self.tls {
            format!(
                "is Redis running there, with TLS on that port (its tls-port)? Start it, or fix {url}"
            )
        } else if why.starts_with("nothing is listening") {
            format!("is Redis running there? Start it, or fix {url}")
        } else {
            let scheme = self.shown.split("://").next().unwrap_or_default();
            format!(
                "is Redis running there? Start it, or fix {url} (a port that wants TLS takes {}://)",
                scheme.replacen("redis", "rediss", 1)
            )
        };
        (why, fix)
    }

    /// Whether the primary is found through Sentinel (whose failovers the
    /// publisher guards against with `WAIT`).
    pub fn is_sentinel(&self) -> bool {
        matches!(self.server, Server::Sentinel(_))
    }

    /// Whether this is a Redis Cluster, where what is written together
    /// must be in one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.server, Server::Cluster(_))
    }

    /// A run id as it goes into the run's key names: in a Cluster, as a
    /// hash tag (`{run_id}`), so that the run's stream and `alive` key share
    /// a slot; elsewhere as it is (the layout relays already read).
    pub fn tagged(&self, run_id: &str) -> String {
        if self.is_cluster() {
            format!("{{{run_id}}}")
        } else {
            run_id.to_owned()
        }
    }

    /// What a failed call to this Redis means: as [`Failure::of`] says,
    /// but in a Cluster a `MOVED` or `ASK` passes (a slot being moved
    /// between nodes, which a reconnection follows). A TLS handshake that
    /// fails mid-run (a server restarted with a certificate renewed
    /// wrong) passes too, said in the plain words of the start.
    pub fn failure(&self, e: redis::RedisError) -> Failure {
        match self.handshake_failure(&e) {
            Some(why) => Failure::Away(why),
            None => Failure::sort(e, self.is_cluster()),
        }
    }

    /// A TLS handshake that failed for a reason [`tls::failure`] can
    /// name, with what to do; `None` for anything else, a dropped TLS
    /// connection included (its words say `TLS` too).
    pub fn handshake_failure(&self, e: &redis::RedisError) -> Option<String> {
        // A server's own reply (`-ERR … expired`) came over a handshake
        // made already: its words are never the handshake's.
        if e.code().is_some() {
            return None;
        }
        let (why, fix) = self.tls.then(|| tls::failure(e)).flatten()?;
        (!why.starts_with(tls::VAGUE)).then(|| format!("{why}; {fix}"))
    }

    /// `redis-cli`'s flags for this user, the password left as `PASSWORD`.
    fn cli_auth(&self) -> String {
        match &self.auth {
            Some((Some(user), _)) => format!(" --user {} -a PASSWORD", shell_word(user)),
            Some((None, _)) => " -a PASSWORD".to_owned(),
            None => String::new(),
        }
    }

    /// Whether the URL carries a password (which messages leave out).
    pub fn has_password(&self) -> bool {
        self.auth.is_some()
    }

    /// A `redis-cli` command that lists the runs this Redis holds (without
    /// the password): on one node a scan; under Sentinel, on the primary
    /// the sentinels name (a sentinel has no keys); in a Cluster, on each
    /// node (a scan covers only the node it asks).
    pub fn list_runs_hint(&self) -> String {
        let tls = if self.tls {
            format!(" --tls{}", self.cli_tls_flags)
        } else {
            String::new()
        };
        let auth = self.cli_auth();
        let (host, port, db) = (&self.host, self.port, self.db);
        let scan = format!("-n {db}{tls}{auth} --scan --pattern 'batchsse:run:*'");
        match (&self.server, &self.service) {
            (Server::Sentinel(_), Some(service)) => format!(
                "`redis-cli -h {host} -p {port}{tls} SENTINEL get-master-addr-by-name {}` names the primary, where `redis-cli -h HOST -p PORT {scan}` lists the runs it holds",
                shell_word(service)
            ),
            (Server::Cluster(_), _) => format!(
                "`redis-cli{tls}{auth} --cluster call {host}:{port} KEYS 'batchsse:run:*'` lists the runs each node holds"
            ),
            _ => format!("`redis-cli -h {host} -p {port} {scan}` lists the runs it holds"),
        }
    }
}

/// A connection to Redis, as publisher and relay hold it: to one node
/// (directly or as Sentinel named it), or to a Cluster.
#[derive(Clone)]
pub enum Conn {
    Node(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The stream that holds one run's events.
pub fn run_key(run_id: &str) -> String {
    format!("batchsse:run:{run_id}")
}

/// How long a run's `alive` key outlives its last refresh.
pub const ALIVE_SECS: u64 = 15;

/// The key that exists while a run's process lives.
pub fn alive_key(run_id: &str) -> String {
    format!("batchsse:alive:{run_id}")
}

/// The key that names a plan's newest run.
pub fn latest_key(plan: &str) -> String {
    format!("batchsse:plan:{plan}:latest")
}

/// The event id of a stream entry ID `N-0`.
pub fn event_id(entry: &str) -> Option<u64> {
    entry.strip_suffix("-0")?.parse().ok()
}

/// Stream entries as `XRANGE` and `XREAD` give them: each ID with its
/// field-value pairs, flat, as bytes (an entry batchsse did not write may
/// hold anything).
pub type Entries = Vec<(String, Vec<Vec<u8>>)>;

/// `XRANGE <stream> - + COUNT 1`: the stream's first entry, if any.
pub fn head_cmd(stream: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(stream).arg("-").arg("+").arg("COUNT").arg(1);
    cmd
}

/// Whether a stream's first entry (from [`head_cmd`]) is the run's `start`
/// at `1-0`, as every published run begins. Anything else means Redis lost
/// the stream's head (a `FLUSHALL`, an eviction under `maxmemory`, a
/// restart) after events were sent: what is left is not the whole run.
pub fn begins_at_start(head: &Entries) -> bool {
    head.first()
        .is_some_and(|(id, fields)| id == "1-0" && field(fields, "event") == Some(&b"start"[..]))
}

/// A field's value in a flat field-value list.
pub fn field<'a>(fields: &'a [Vec<u8>], name: &str) -> Option<&'a [u8]> {
    fields
        .chunks_exact(2)
        .find(|pair| pair[0] == name.as_bytes())
        .map(|pair| pair[1].as_slice())
}

/// What a failed Redis call means for whoever made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Redis is out of reach, or says to come back later: retry.
    Away(String),
    /// Redis answered, and retrying the same will get the same answer (a
    /// missing permission, a key of another type, a reply batchsse cannot
    /// read): give up, and say why.
    Refused(String),
}

/// Redis's error replies that pass: a primary with too few replicas
/// (`min-replicas-to-write`), loading its data after a restart, busy
/// with a script, a failover or cluster change under way, out of memory
/// until something expires, a replica until it is promoted, a snapshot
/// that failed (a full disk) until one succeeds, and a blocked command
/// (the relay's `XREAD`, the publisher's `WAIT`) ended by a primary made
/// a replica (`REPLICAOF`, a Cluster's failover), which answers it
/// `UNBLOCKED` and closes the connection.
const PASSING: [&str; 10] = [
    "MISCONF",
    "UNBLOCKED",
    "NOREPLICAS",
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "OOM",
    "READONLY",
];

impl Failure {
    /// Sorts an error, keeping Redis's own words (from a pipeline too).
    pub fn of(e: redis::RedisError) -> Failure {
        Failure::sort(e, false)
    }

    /// The same; `cluster`: the error came through a Cluster connection,
    /// where `MOVED` and `ASK` are a slot on its way to another node (a
    /// reshard), which passes. Elsewhere they mean the URL names one node
    /// of a Cluster.
    fn sort(e: redis::RedisError, cluster: bool) -> Failure {
        if e.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel {
            // The name was found at start: its primary is down, or is not
            // a primary any more, until the sentinels fail over.
            return Failure::Away(
                "the sentinels name no primary that is up (a failover may be under way)".into(),
            );
        }
        let answered = e.clone().into_server_errors().and_then(|errors| {
            errors
                .first()
                .map(|(_, s)| (s.code().to_owned(), s.details().map(str::to_owned)))
        });
        if let Some((code, detail)) = answered {
            let detail = detail
                .map(|d| format!(" {}", d.trim_end_matches('.')))
                .unwrap_or_default();
            let mut words = format!("Redis answered \"{code}{detail}\"");
            let redirect = code == "MOVED" || code == "ASK";
            if redirect && cluster {
                words.push_str(": a slot of the Cluster is moving to another node");
                return Failure::Away(words);
            }
            if redirect {
                words.push_str(
                    ": that node is one of a Redis Cluster; give redis+cluster://HOST:PORT, to the run and its relays alike",
                );
            }
            return if PASSING.contains(&code.as_str()) {
                Failure::Away(words)
            } else {
                Failure::Refused(words)
            };
        }
        if e.is_connection_refusal() {
            Failure::Away(format!("nothing is listening there ({e})"))
        } else if cluster && e.kind() == redis::ErrorKind::ClusterConnectionNotFound {
            // Every node out of reach at once (all restarted, say): the
            // crate finds no connection for the slot until one is back.
            Failure::Away(format!(
                "no node of the Cluster can be reached ({})",
                one_line(&e)
            ))
        } else if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
            Failure::Away(one_line(&e))
        } else if let Some(code) = e.code() {
            Failure::Refused(format!(
                "Redis answered \"{code} {}\"",
                e.detail().unwrap_or_default().trim_end_matches('.')
            ))
        } else {
            // Not Redis's answer at all (another server on that port, say).
            Failure::Refused(one_line(&e))
        }
    }

    pub fn why(&self) -> &str {
        match self {
            Failure::Away(why) | Failure::Refused(why) => why,
        }
    }
}

/// An error's text on one line.
fn one_line(e: &redis::RedisError) -> String {
    let mut words: Vec<String> = Vec::new();
    for w in e.to_string().split_whitespace() {
        // rustls points to its own manual ("…close_notify: https://docs.rs/
        // rustls/…"), which tells a batchsse user nothing.
        if w.starts_with("https://docs.rs/rustls") {
            if let Some(last) = words.last_mut() {
                last.truncate(last.trim_end_matches(':').len());
            }
            continue;
        }
        words.push(w.to_owned());
    }
    words.join(" ")
}

/// Keys in far-apart slots, one of which a node of a Cluster of two or
/// more primaries almost surely does not own ([`keys_elsewhere`]).
const PROBES: usize = 16;

/// The answers only a node of a Cluster gives to a key's command.
const CLUSTER_ONLY: [&str; 4] = ["MOVED", "ASK", "CROSSSLOT", "CLUSTERDOWN"];

/// Whether the node answers as one of a Cluster to commands on keys of
/// different hash tags, sent in one round trip: `XRANGE` on [`PROBES`]
/// keys (which the README's least ACL rules give a publisher and a relay
/// alike), one of which another primary's slot answers `MOVED`; and two
/// keys in one `EXISTS` (a relay's rules) and one `DEL` (a publisher's),
/// which a Cluster refuses as `CROSSSLOT` whoever owns the slots: a
/// Cluster of one primary, or a node that owns every slot the probes fall
/// in, answers no `MOVED`. On a node that is not in a Cluster they are
/// empty reads, and a `DEL` of keys batchsse never writes. A command the
/// user may not run is refused first (`NOPERM`), and tells nothing.
async fn keys_elsewhere(conn: &mut Conn) -> bool {
    let probe = |i: usize| format!("batchsse:cluster-probe:{{{i}}}");
    let mut pipe = redis::pipe();
    for i in 0..PROBES {
        pipe.cmd("XRANGE")
            .arg(probe(i))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
    }
    for cmd in ["EXISTS", "DEL"] {
        pipe.cmd(cmd).arg(probe(0)).arg(probe(1));
    }
    pipe.ignore_errors();
    let answers = within(
        CONNECT_TIMEOUT,
        pipe.query_async::<Vec<redis::RedisResult<redis::Value>>>(conn),
    )
    .await;
    answers.is_ok_and(|all| {
        all.iter().any(|a| {
            a.as_ref()
                .err()
                .and_then(redis::RedisError::code)
                .is_some_and(|c| CLUSTER_ONLY.contains(&c))
        })
    })
}

/// Runs a Redis call with a time limit; running out counts as an I/O error,
/// so the caller treats it as a lost connection.
pub async fn within<T>(
    limit: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("Redis did not answer within {} s", limit.as_secs_f64()),
        )
        .into()),
    }
}

/// Waits between reconnection attempts: 100 ms, doubling up to 2 s.
pub struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    pub fn new() -> Backoff {
        Backoff(Self::FIRST)
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }

    pub fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Target, UsageError> {
        Target::parse("--publish", url, &Access::default())
    }

    /// The TLS flags a relay needs as well, pasted, reach their files: a
    /// name that is not UTF-8 kept its bytes, not U+FFFD, and one that
    /// begins with `-` is not taken for an option.
    #[cfg(unix)]
    #[test]
    fn the_tls_flags_named_keep_their_paths_bytes() {
        let access = Access {
            ca: Some(crate::platform::path_from_bytes(b"certs/caf\xe9.pem")),
            key: Some("-key.pem".into()),
            ..Access::default()
        };
        assert_eq!(
            tls_flags(&access, OUR_TLS_FLAGS),
            " --redis-ca $'certs/caf\\xe9.pem' --redis-key ./-key.pem"
        );
    }

    #[test]
    fn a_lost_tls_connection_is_said_without_rustls_s_manual() {
        let e = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
        ));
        let said = Failure::of(e).why().to_owned();
        assert!(said.contains("close_notify"), "{said}");
        assert!(!said.contains("docs.rs") && !said.ends_with(':'), "{said}");
    }

    #[test]
    fn urls_are_checked_and_shown_without_their_password() {
        let t = parse("redis://:s3cret@10.0.0.5:6380/2").unwrap();
        assert_eq!(t.shown(), "redis://10.0.0.5:6380/2");
        assert_eq!(
            t.list_runs_hint(),
            "`redis-cli -h 10.0.0.5 -p 6380 -n 2 -a PASSWORD --scan --pattern 'batchsse:run:*'` lists the runs it holds"
        );
        let t = parse("redis://127.0.0.1").unwrap();
        assert_eq!(t.shown(), "redis://127.0.0.1:6379/0");
        let t = parse("rediss://app:p%40ss@cache.example:6380/1").unwrap();
        assert_eq!(t.shown(), "rediss://app@cache.example:6380/1");
        assert_eq!(t.auth, Some((Some("app".into()), "p@ss".into())));
        assert!(
            t.list_runs_hint().starts_with(
                "`redis-cli -h cache.example -p 6380 -n 1 --tls --user app -a PASSWORD --scan"
            ),
            "{}",
            t.list_runs_hint()
        );
        let t = parse("redis+sentinel://u:pw@10.0.0.1,10.0.0.2:26380/main/3").unwrap();
        assert_eq!(
            t.shown(),
            "redis+sentinel://u@10.0.0.1:26379,10.0.0.2:26380/main/3"
        );
        assert!(
            t.list_runs_hint().starts_with(
                "`redis-cli -h 10.0.0.1 -p 26379 SENTINEL get-master-addr-by-name main`"
            ),
            "{}",
            t.list_runs_hint()
        );
        let t = parse("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001").unwrap();
        assert_eq!(t.shown(), "redis+cluster://u@10.0.0.1:7000,10.0.0.2:7001");
        assert!(
            t.list_runs_hint()
                .contains("--user u -a PASSWORD --cluster call 10.0.0.1:7000 KEYS"),
            "{}",
            t.list_runs_hint()
        );
        assert_eq!(t.tagged("r-1"), "{r-1}");
        let t = parse("redis://[::1]:7000").unwrap();
        assert_eq!(t.tagged("r-1"), "r-1");
        assert_eq!(t.shown(), "redis://[::1]:7000/0");
        for (bad, says) in [
            ("http://127.0.0.1:6379", "not a redis:// URL"),
            ("127.0.0.1:6379", "not a redis:// URL"),
            ("redis://127.0.0.1:x", "bad port"),
            ("redis://a:1,b:2/0", "several hosts"),
            ("redis+sentinel://a:1", "no service"),
            ("redis://a/b", "database number"),
            ("redis://:%zz@a", "%-escape"),
            ("redis+cluster://a:1,b:2/0", "does not have"),
            ("redis://u:le4k/rest@a:1/0", "%2F"),
            ("redis://u:le4k?rest@a:1/0", "%3F"),
            ("redis+sentinel://:le4k#rest@a:1/main", "%23"),
            ("redis://a:1?db=2", "does not read"),
            ("redis://a:1/0?password=le4k", "BATCHSSE_REDIS_PASSWORD"),
            ("rediss://a:1/0#insecure", "--redis-ca"),
            ("redis://u:123/le4k@a:1/0", "BATCHSSE_REDIS_PASSWORD"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains(says) && e.contains("redis://127.0.0.1:6379/0"),
                "{bad}: {e}"
            );
            assert!(!e.contains("le4k"), "a password shown: {e}");
        }
    }

    #[test]
    fn the_password_comes_from_the_environment_where_the_url_has_none() {
        let access = Access {
            password: Some("from-env".into()),
            ..Access::default()
        };
        let t = Target::parse("--publish", "redis://pub@h:1/0", &access).unwrap();
        assert_eq!(t.auth, Some((Some("pub".into()), "from-env".into())));
        assert_eq!(t.shown(), "redis://pub@h:1/0");
        let t = Target::parse("--publish", "redis://:inurl@h:1/0", &access).unwrap();
        assert_eq!(t.auth, Some((None, "inurl".into())));
    }

    #[test]
    fn tls_files_go_with_rediss_only_and_must_be_readable() {
        let ca = Access {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Access::default()
        };
        let e = Target::parse("--publish", "redis://h:1", &ca).unwrap_err();
        assert!(e.to_string().contains("use a rediss:// URL"), "{e}");
        let e = Target::parse("--publish", "rediss://h:1", &ca).unwrap_err();
        assert!(
            e.to_string()
                .contains("--redis-ca /nonexistent/ca.pem: cannot read it"),
            "{e}"
        );
        let half = Access {
            cert: Some("/nonexistent/c.pem".into()),
            ..Access::default()
        };
        let e = Target::parse("--publish", "rediss://h:1", &half).unwrap_err();
        assert!(e.to_string().contains("cannot read it"), "{e}");
    }

    #[test]
    fn schemes_ignore_case_and_an_empty_url_says_so() {
        let t = parse("REDIS://127.0.0.1:6380").unwrap();
        assert_eq!(t.shown(), "redis://127.0.0.1:6380/0");
        let e =
            Target::parse("--publish (or BATCHSSE_PUBLISH)", " ", &Access::default()).unwrap_err();
        assert!(e.to_string().contains("BATCHSSE_PUBLISH) is empty"), "{e}");
    }

    /// A server's reply whose words a TLS failure also has (`expired`) is
    /// its own answer, told as such: taken for a handshake that failed,
    /// it was waited out as an outage for good.
    #[test]
    fn a_server_reply_with_tls_words_is_no_handshake_failure() {
        let t = parse("rediss://cache.example:6380/0").unwrap();
        let reply = redis::make_extension_error("ERR".into(), Some("the lease has expired".into()));
        assert_eq!(t.handshake_failure(&reply), None);
        assert!(matches!(t.failure(reply), Failure::Refused(_)));
        let io: redis::RedisError =
            std::io::Error::other("invalid peer certificate: Expired").into();
        let named = t.handshake_failure(&io).unwrap_or_default();
        assert!(named.contains("has expired"), "{named}");
    }

    #[test]
    fn failures_that_pass_are_told_from_refusals() {
        use redis::{ErrorKind, RedisError};
        let io: RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer").into();
        assert!(matches!(Failure::of(io), Failure::Away(_)));
        let parse: RedisError = (ErrorKind::UnexpectedReturnType, "not a string").into();
        assert!(matches!(Failure::of(parse), Failure::Refused(_)));
        let moved = redis::make_extension_error("MOVED".into(), Some("3134 10.0.0.1:7001".into()));
        assert!(
            Failure::of(moved.clone())
                .why()
                .contains("give redis+cluster://")
        );
        let in_cluster = Failure::sort(moved, true);
        assert!(matches!(in_cluster, Failure::Away(_)), "{in_cluster:?}");
        assert!(in_cluster.why().contains("slot"), "{in_cluster:?}");
        // Mid-run, every node restarted at once: wait for one, not give up.
        let none: RedisError = (ErrorKind::ClusterConnectionNotFound, "no connection").into();
        let mid_run = Failure::sort(none.clone(), true);
        assert!(matches!(mid_run, Failure::Away(_)), "{mid_run:?}");
        assert!(
            mid_run.why().contains("no node of the Cluster"),
            "{mid_run:?}"
        );
        assert!(matches!(Failure::of(none), Failure::Refused(_)));
        let codes = [
            ("LOADING", true),
            ("UNBLOCKED", true),
            ("NOPERM", false),
            ("WRONGTYPE", false),
        ];
        for (code, passes) in codes {
            let e = redis::make_extension_error(code.into(), Some("the words.".into()));
            let f = Failure::of(e);
            assert_eq!(matches!(f, Failure::Away(_)), passes, "{code}: {f:?}");
            assert!(f.why().contains(&format!("{code} the words\"")), "{f:?}");
        }
    }

    #[test]
    fn keys_and_entry_ids() {
        assert_eq!(run_key("r1"), "batchsse:run:r1");
        assert_eq!(latest_key("plan.json"), "batchsse:plan:plan.json:latest");
        assert_eq!(event_id("42-0"), Some(42));
        assert_eq!(event_id("42-1"), None);
        assert_eq!(event_id("x-0"), None);
    }

    #[test]
    fn a_stream_is_whole_only_if_it_begins_with_start_at_1() {
        let entry = |id: &str, name: &str| {
            (
                id.to_owned(),
                vec![b"event".to_vec(), name.as_bytes().to_vec()],
            )
        };
        assert!(begins_at_start(&vec![entry("1-0", "start")]));
        assert!(!begins_at_start(&vec![entry("52-0", "progress")]));
        assert!(!begins_at_start(&vec![entry("1-0", "message")]));
        assert!(!begins_at_start(&vec![entry("1-1", "start")]));
        assert!(!begins_at_start(&Vec::new()));
    }
}
