//! Reaching servers: the `--server` URLs, DNS, TLS, the API key, and timeouts.
//!
//! A `--server` URL names a host; a host that resolves to several addresses (a Kubernetes
//! headless Service does) is several servers. Channels are made per address, while TLS checks
//! the certificate against the URL's host name and requests carry it as their authority, so a
//! certificate for `bertd.ns.svc` is accepted at each of that name's pod addresses.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::future::BoxFuture;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// The variable an API key is read from when no `--api-key-file` is given.
pub const API_KEY_ENV: &str = "BERTD_API_KEY";
/// The largest response message accepted (token embeddings of a long batch are large).
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// A server: http://HOST:PORT, or https:// for TLS. Repeat it for several servers; a host
    /// name that resolves to several addresses (a headless Service) counts as several.
    #[arg(
        long = "server",
        value_name = "URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub servers: Vec<String>,
    /// CA certificate (PEM) to trust for https:// servers, instead of the public web roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require mTLS.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The name to check the server's certificate against, when not the URL's host.
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// A file holding the API key (its first line). Without it, the key is read from the
    /// BERTD_API_KEY variable, if set. Keys are never accepted as flags: those show in `ps`.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Seconds to wait for a connection.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds to wait for an answer (for a stream: each message's answer).
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub timeout: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("--server {url}: {message}")]
    Url { url: String, message: String },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error("--server {url}: cannot resolve {host}: {source}")]
    Resolve {
        url: String,
        host: String,
        source: std::io::Error,
    },
}

/// One `--server` URL, parsed.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    origin: Uri,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, ConnectError> {
        let invalid = |message: &str| ConnectError::Url {
            url: url.to_string(),
            message: message.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| invalid("not a URL like http://HOST:PORT"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(invalid("the scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if !matches!(uri.path(), "" | "/") {
            return Err(invalid("a server URL has no path"));
        }
        Ok(Target {
            url: url.to_string(),
            tls,
            host,
            port,
            origin: uri,
        })
    }
}

/// Where host names get their addresses.
pub trait Resolve: Send + Sync {
    /// Every address of `host`, with `port`; an empty list when it has none now.
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>>;
}

/// The system's resolver (getaddrinfo: the hosts file, then DNS), as every other program on the
/// machine resolves. Nothing is cached here: each lookup asks again, which is what lets a job
/// follow the pods of a headless Service.
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Adds `authorization: Bearer KEY` to every call when a key is configured.
#[derive(Clone, Default)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Everything needed to open a channel to any address of any target.
#[derive(Clone)]
pub struct Connector {
    resolver: Arc<dyn Resolve>,
    tls: ClientTlsConfig,
    tls_server_name: Option<String>,
    pub auth: Auth,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::File {
        path: path.clone(),
        source,
    })
}

fn seconds(what: &str, value: f64) -> Result<Duration, ConnectError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ConnectError::Invalid {
            what: what.to_string(),
            message: format!("{value} is not a positive number of seconds"),
        })
}

impl Connector {
    pub fn new(args: &ServerArgs, resolver: Arc<dyn Resolve>) -> Result<Connector, ConnectError> {
        let mut tls = ClientTlsConfig::new();
        tls = match &args.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => tls.with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        let key = match &args.api_key_file {
            Some(path) => {
                let text = String::from_utf8(read(path)?).map_err(|_| ConnectError::Invalid {
                    what: path.display().to_string(),
                    message: "the API key file is not UTF-8".into(),
                })?;
                Some(text.lines().next().unwrap_or("").trim().to_string())
            }
            None => std::env::var(API_KEY_ENV).ok(),
        };
        let auth = match key.filter(|k| !k.is_empty()) {
            None => Auth(None),
            Some(key) => {
                let value = format!("Bearer {key}")
                    .parse()
                    .map_err(|_| ConnectError::Invalid {
                        what: "the API key".into(),
                        message: "holds characters a gRPC header cannot carry".into(),
                    })?;
                Auth(Some(value))
            }
        };
        Ok(Connector {
            resolver,
            tls,
            tls_server_name: args.tls_server_name.clone(),
            auth,
            connect_timeout: seconds("--connect-timeout", args.connect_timeout)?,
            timeout: seconds("--timeout", args.timeout)?,
        })
    }

    /// The addresses `target`'s host has now, sorted, each once.
    pub async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, ConnectError> {
        let mut addrs = self
            .resolver
            .lookup(&target.host, target.port)
            .await
            .map_err(|source| ConnectError::Resolve {
                url: target.url.clone(),
                host: target.host.clone(),
                source,
            })?;
        addrs.sort();
        addrs.dedup();
        Ok(addrs)
    }

    /// A lazily connecting channel to one address of `target`.
    pub fn channel(&self, target: &Target, addr: SocketAddr) -> Result<Channel, ConnectError> {
        let invalid = |e: tonic::transport::Error| ConnectError::Url {
            url: target.url.clone(),
            message: e.to_string(),
        };
        let scheme = if target.tls { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(invalid)?
            .origin(target.origin.clone())
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .tcp_nodelay(true);
        if target.tls {
            let name = self.tls_server_name.as_deref().unwrap_or(&target.host);
            let tls = self.tls.clone().domain_name(name);
            endpoint = endpoint.tls_config(tls).map_err(invalid)?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// A channel to the first address of the first `--server` (for one-call commands).
    pub async fn first(&self, args: &ServerArgs) -> Result<Channel, ConnectError> {
        let url = args.servers.first().expect("--server has a default");
        let target = Target::parse(url)?;
        let addrs = self.resolve(&target).await?;
        let addr = addrs.first().ok_or_else(|| ConnectError::Url {
            url: url.clone(),
            message: "the host has no address".into(),
        })?;
        self.channel(&target, *addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_give_scheme_host_and_port() {
        let t = Target::parse("https://bertd.ml.svc:8443").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("bertd.ml.svc", 8443));
        let t = Target::parse("http://[::1]:50051").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 50051, false));
    }

    #[test]
    fn server_urls_without_a_usable_scheme_or_with_a_path_are_refused() {
        for url in ["127.0.0.1:50051", "ftp://host:1", "http://host:1/v1"] {
            let error = Target::parse(url).unwrap_err().to_string();
            assert!(error.contains(url), "{error}");
        }
    }
}
