//! The client side of an agent's API, shared by `netmon top --agent` and `netmon
//! history --agent`: an agent URL (`http://` or `https://HOST:PORT[/prefix]`), the
//! token (`NETMON_TOKEN` or a token file), TLS trust (the system's roots, or only the
//! `--ca-cert` given for a self-signed deployment), and one HTTP/1.1 connection.
//! Knows no endpoint beyond the paths its callers give.
use std::{path::Path, sync::Arc, time::Duration};

use hyper::{Uri, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

/// The flag that names the CA file, for error messages.
pub const CA_FLAG: &str = "--ca-cert";

/// An agent as the user named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentUrl {
    pub tls: bool,
    /// `host:port` as given (IPv6 in brackets), for the `Host` header.
    pub authority: String,
    /// The host without brackets: what to connect to and the TLS server name.
    pub host: String,
    pub port: u16,
    /// A path the agent is served under (a reverse proxy's), without the last `/`.
    pub prefix: String,
}

impl AgentUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("`{url}`: give the agent as http(s)://HOST:PORT")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{url}` has no host"))?;
        if uri.query().is_some() {
            return Err(format!("`{url}`: an agent URL takes no query"));
        }
        Ok(Self {
            tls,
            authority: authority.as_str().to_owned(),
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The origin-form target of an API path (`/api/v1/events` → `/prefix/api/v1/events`).
    pub fn target(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.prefix)
    }
}

/// The token: `NETMON_TOKEN` (when not empty), else the first line of `file`.
pub fn token(file: &Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    if let Ok(t) = std::env::var("NETMON_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_owned());
    }
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "cannot read the API token from {}: give --token-file FILE or set NETMON_TOKEN",
            file.display()
        )
    })?;
    let t = text.lines().next().unwrap_or("").trim().to_owned();
    anyhow::ensure!(
        !t.is_empty(),
        "the token file {} is empty: give --token-file FILE or set NETMON_TOKEN",
        file.display()
    );
    Ok(t)
}

/// TLS trust for https agents: only the CA in `ca_cert` (PEM) when given, else the
/// system's roots.
pub fn tls_connector(ca_cert: Option<&Path>) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            for cert in crate::api::tls::read_certs(path)? {
                roots.add(cert).map_err(|e| {
                    anyhow::anyhow!("{CA_FLAG} {}: not a usable CA: {e}", path.display())
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "no trusted CA certificates found on this system: give {CA_FLAG} FILE (the CA that signed the agent's certificate)"
            );
        }
    }
    let mut cfg = ClientConfig::builder_with_provider(crate::api::tls::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// Why a connection to an agent could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect: {0}")]
    Tcp(std::io::Error),
    #[error("no answer within {}s", .0.as_secs())]
    Timeout(Duration),
    #[error("TLS: {0} (a self-signed agent needs --ca-cert FILE; an http agent needs http://)")]
    Tls(std::io::Error),
    #[error("an https agent needs TLS set up (internal)")]
    NoTls,
    #[error("`{0}` is not a name TLS can check")]
    ServerName(String),
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One HTTP/1.1 connection to the agent (TCP, then TLS for https), its driver
/// spawned on the current runtime; the driver ends when the sender is dropped.
pub async fn connect<B>(
    agent: &AgentUrl,
    tls: Option<&TlsConnector>,
    timeout: Duration,
) -> Result<SendRequest<B>, ConnectError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((agent.host.as_str(), agent.port)),
    )
    .await
    .map_err(|_| ConnectError::Timeout(timeout))?
    .map_err(ConnectError::Tcp)?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if agent.tls {
        let connector = tls.ok_or(ConnectError::NoTls)?;
        let name = ServerName::try_from(agent.host.clone())
            .map_err(|_| ConnectError::ServerName(agent.host.clone()))?;
        let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
            .map_err(ConnectError::Tls)?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::AgentUrl;

    #[test]
    fn agent_urls_name_scheme_host_port_and_prefix() {
        let a = AgentUrl::parse("https://[::1]:9469/netmon/").unwrap();
        assert!(a.tls);
        assert_eq!((a.host.as_str(), a.port), ("::1", 9469));
        assert_eq!(a.authority, "[::1]:9469");
        assert_eq!(
            a.target("/api/v1/history/flows?limit=5"),
            "/netmon/api/v1/history/flows?limit=5"
        );
        let a = AgentUrl::parse("http://10.0.0.7:9469").unwrap();
        assert!(!a.tls);
        assert_eq!(a.target("/api/v1/events"), "/api/v1/events");
        assert_eq!(AgentUrl::parse("https://agent.example").unwrap().port, 443);
        for bad in ["ftp://h:1", "h:1", "http://h:1/?x=1", "not a url"] {
            assert!(AgentUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
