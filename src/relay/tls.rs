//! Reaching Redis past one plain TCP node: `rediss://` (the `redis` crate's
//! rustls, on ring), the PEM files of `--redis-ca`, `--redis-cert` and
//! `--redis-key`, Sentinel's `redis+sentinel://` and Cluster's
//! `redis+cluster://`; and a TLS failure told
//! in plain words.

use std::collections::HashMap;
use std::path::Path;

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, TlsCertificates, TlsMode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{Access, Server};

/// Why a handshake failed, when [`failure`] cannot say more.
pub const VAGUE: &str = "the TLS handshake failed";

/// What to try when the TLS handshake fails for a reason not told apart.
pub const FIX: &str = "check that the server's certificate is signed by the CA you trust (the system's roots, Mozilla's on macOS, or --redis-ca FILE) and names the URL's host, and that --redis-cert/--redis-key are given where the server wants a client certificate";

/// The PEM files' contents, read at start.
pub struct Pem(Option<TlsCertificates>);

impl Pem {
    /// Reads the files `access` names; refuses them without TLS, and a
    /// certificate without its key (or the other way round).
    pub fn read(access: &Access, tls: bool) -> Result<Pem, String> {
        let named = [&access.ca, &access.cert, &access.key];
        if !tls && named.iter().any(|f| f.is_some()) {
            return Err(
                "--redis-ca, --redis-cert and --redis-key are for TLS: use a rediss:// URL (or rediss+sentinel://, rediss+cluster://)"
                    .into(),
            );
        }
        let read = |flag: &str, path: &Option<std::path::PathBuf>| -> Result<_, String> {
            path.as_ref()
                .map(|p| {
                    std::fs::read(p).map_err(|e| {
                        let p = crate::human::shown_path(p);
                        format!("{flag} {p}: cannot read it ({e})")
                    })
                })
                .transpose()
        };
        let ca = read("--redis-ca", &access.ca)?;
        if let (Some(pem), Some(path)) = (&ca, &access.ca) {
            certs("--redis-ca", path, pem)?;
        }
        let client_tls = match (read("--redis-cert", &access.cert)?, read("--redis-key", &access.key)?) {
            (Some(client_cert), Some(client_key)) => {
                let paths = access.cert.as_deref().zip(access.key.as_deref());
                if let Some((cert_path, key_path)) = paths {
                    key_pair((cert_path, &client_cert), (key_path, &client_key))?;
                }
                Some(ClientTlsConfig {
                    client_cert,
                    client_key,
                })
            }
            (None, None) => None,
            _ => return Err("give --redis-cert and --redis-key together (the client certificate and its private key)".into()),
        };
        if ca.is_none() && client_tls.is_none() {
            return Ok(Pem(None));
        }
        Ok(Pem(Some(TlsCertificates {
            client_tls,
            root_cert: ca,
        })))
    }
}

/// The certificates in a PEM file named by `flag`: at least one, else
/// the handshake would fail later in words that blame the server.
fn certs(flag: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = crate::human::shown_path(path);
    if is_der(pem) {
        return Err(format!(
            "{flag} {shown} is a DER (binary) certificate, and batchsse reads PEM: convert it with `openssl x509 -inform der -in {shown} -out CERT.pem` and give that"
        ));
    }
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{flag} {shown}: cannot read it as PEM ({e})"))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {shown} holds no certificate: give a PEM file with a -----BEGIN CERTIFICATE----- block"
        ));
    }
    Ok(certs)
}

/// Whether a file is DER, as `openssl … -outform der` writes certificates
/// and keys: an ASN.1 SEQUENCE with a long-form length, where a PEM file
/// is text (a `0` is never followed by a byte past ASCII there).
fn is_der(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x30) && bytes.get(1).is_some_and(|b| (0x81..=0x84).contains(b))
}

/// Checks `--redis-cert` and `--redis-key`: a certificate, a private key,
/// and the key the certificate's.
fn key_pair(
    (cert_path, cert): (&Path, &[u8]),
    (key_path, key): (&Path, &[u8]),
) -> Result<(), String> {
    let chain = certs("--redis-cert", cert_path, cert)?;
    // PKCS#8's ENCRYPTED PRIVATE KEY, or OpenSSL's traditional encryption.
    let text = String::from_utf8_lossy(key);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        let shown = crate::human::shown_path(key_path);
        return Err(format!(
            "--redis-key {shown} is encrypted with a passphrase, which batchsse cannot give: decrypt it into a file of its own (`openssl pkey -in KEY -out DECRYPTED.key`), readable only by the user that runs batchsse, and give that"
        ));
    }
    if is_der(key) {
        let shown = crate::human::shown_path(key_path);
        return Err(format!(
            "--redis-key {shown} is a DER (binary) key, and batchsse reads PEM: convert it with `openssl pkey -inform der -in {shown} -out KEY.pem` and give that"
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        format!(
            "--redis-key {} holds no private key ({e}): give a PEM file with a -----BEGIN … PRIVATE KEY----- block",
            crate::human::shown_path(key_path)
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        format!(
            "--redis-key {} is not the private key of --redis-cert {} ({e}); give the key the certificate was made for",
            crate::human::shown_path(key_path),
            crate::human::shown_path(cert_path)
        )
    })?;
    Ok(())
}

/// One node at `host`, over TLS where `pem` or the scheme says so.
pub fn node(host: &(String, u16), tls: bool, pem: Pem) -> redis::RedisResult<Server> {
    let info = address(host, tls).into_connection_info()?;
    let client = match pem.0 {
        Some(certs) => redis::Client::build_with_tls(info, certs)?,
        None => redis::Client::open(info)?,
    };
    Ok(Server::Node(client))
}

/// The primary of `service`, as the sentinels at `hosts` name it; TLS
/// (with the same files) to the sentinels and to the nodes alike. The
/// crate asks each node it is given for its `ROLE` before handing it over,
/// so `auth` goes to it too: else a node with a password answers `NOAUTH`.
pub fn sentinel(
    hosts: &[(String, u16)],
    service: &str,
    tls: bool,
    pem: Pem,
    auth: Option<&(Option<String>, String)>,
) -> redis::RedisResult<Server> {
    let addrs = hosts.iter().map(|h| address(h, tls));
    let mut b = SentinelClientBuilder::new(addrs, service, SentinelServerType::Master)?;
    if let Some((user, password)) = auth {
        b = b.set_client_to_redis_password(password);
        if let Some(user) = user {
            b = b.set_client_to_redis_username(user);
        }
    }
    if tls {
        b = b
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(certs) = pem.0 {
            b = b
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs);
        }
    }
    Ok(Server::Sentinel(tokio::sync::Mutex::new(b.build()?)))
}

/// The primary the sentinels name for `service` (`HOST:PORT`) and how
/// they flag it (`master,s_down,o_down`…), from the first sentinel that
/// answers; `None` if none knows the service, or none answers.
pub async fn named_primary(
    client: &tokio::sync::Mutex<SentinelClient>,
    service: &str,
) -> Option<(String, String)> {
    let limit = super::CONNECT_TIMEOUT;
    let sentinel = {
        let mut client = client.lock().await;
        super::within(limit, client.async_get_sentinel_client()).await
    };
    let mut conn = super::within(limit, sentinel.ok()?.get_multiplexed_async_connection())
        .await
        .ok()?;
    let mut ask = redis::cmd("SENTINEL");
    ask.arg("MASTER").arg(service);
    let info: HashMap<String, String> = super::within(limit, ask.query_async(&mut conn))
        .await
        .ok()?;
    let host = super::url_host(info.get("ip")?);
    let flags = info.get("flags").cloned().unwrap_or_default();
    Some((format!("{host}:{}", info.get("port")?), flags))
}

/// A Redis Cluster reached through any of `hosts`, with `auth` for each
/// node it connects to.
pub fn cluster(
    hosts: &[(String, u16)],
    tls: bool,
    pem: Pem,
    auth: Option<&(Option<String>, String)>,
) -> redis::RedisResult<Server> {
    let nodes: Vec<ConnectionAddr> = hosts.iter().map(|h| address(h, tls)).collect();
    let mut b = redis::cluster::ClusterClientBuilder::new(nodes)
        .connection_timeout(super::CONNECT_TIMEOUT)
        .retries(2);
    if tls {
        b = b.tls(TlsMode::Secure);
        if let Some(certs) = pem.0 {
            b = b.certs(certs);
        }
    }
    if let Some((user, password)) = auth {
        b = b.password(password);
        if let Some(user) = user {
            b = b.username(user);
        }
    }
    Ok(Server::Cluster(b.build()?))
}

/// A host and port, over TLS (its certificate checked) or plain TCP.
fn address((host, port): &(String, u16), tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: host.clone(),
            port: *port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.clone(), *port)
    }
}

/// A failed TLS handshake, in plain words, and what to do about it;
/// `None` for any other failure.
pub fn failure(e: &redis::RedisError) -> Option<(String, String)> {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let says = |w: &str| lower.contains(w);
    // An alert is the server's word on this side's certificate; the rest
    // is this side's on the server's.
    let (why, fix) = if says("alert") {
        refused_by_server(&says)
    } else if says("unknownissuer") || says("unknown issuer") || says("badsignature") {
        // BadSignature: a trusted CA has the issuer's name but not its key
        // (a CA made again under the same name, say): not signed by it.
        (
            "the server's TLS certificate is not signed by a CA this side trusts",
            "give the CA that signed it with --redis-ca FILE (else the system's roots are used, Mozilla's on macOS)",
        )
    } else if says("causedasendentity") {
        (
            "the server's TLS certificate is a CA certificate (basicConstraints CA:TRUE, as `openssl req -x509` makes one by default), which rustls does not take as a server's",
            "have a CA sign the server's certificate and give that CA with --redis-ca FILE, or remake the self-signed one with `-addext basicConstraints=critical,CA:FALSE` (and give it with --redis-ca FILE)",
        )
    } else if says("notvalidforname") || says("not valid for name") {
        (
            "the server's TLS certificate does not name the URL's host",
            "use a host name (or IP address) the certificate names, or have it reissued for this one",
        )
    } else if says("expired") || says("notvalidyet") {
        (
            "the server's TLS certificate has expired, or is not valid yet",
            "have it renewed, or check this machine's clock",
        )
    } else if says("certificate") || says("handshake") || says("tls") {
        (VAGUE, FIX)
    } else {
        return None;
    };
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    Some((format!("{why} ({words})"), fix.to_owned()))
}

/// Why the server ended the handshake with an alert (`says`: whether the
/// error's words hold this), and what to do.
fn refused_by_server(says: &dyn Fn(&str) -> bool) -> (&'static str, &'static str) {
    if says("certificaterequired") || says("certificate required") {
        (
            "the server wants a client certificate",
            "give --redis-cert FILE and --redis-key FILE, signed by a CA the server trusts (its tls-ca-cert-file)",
        )
    } else if says("certificateexpired") || says("certificate expired") {
        (
            "the server refused the client certificate (--redis-cert): it has expired, or is not valid yet",
            "renew the certificate given with --redis-cert, or check this machine's clock",
        )
    } else if says("unknownca") || says("badcertificate") {
        (
            "the server refused the client certificate (--redis-cert)",
            "give one signed by a CA the server trusts (its tls-ca-cert-file)",
        )
    } else {
        (VAGUE, FIX)
    }
}
