//! Receipt files (PDF/OFD): kept in an object store (a local directory by default,
//! S3-compatible when configured) and, when an issuer sends a URL, fetched only from
//! the agency's allow-listed hosts, over https (unless `files.allow_http`), directly
//! (never through a proxy named by the environment), and never from an address
//! that is not public unicast unless `files.allow_private_networks`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use piaojia_core::settings::{FileStoreKind, Settings};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("host {0:?} is not on this agency's file host allow-list")]
    HostNotAllowed(String),
    #[error("the file URL resolves to a private or loopback address")]
    PrivateAddress,
    #[error("the file URL is not https")]
    InsecureScheme,
    #[error("the file could not be fetched: {0}")]
    Fetch(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

#[derive(Clone)]
pub struct FileStore {
    store: Arc<dyn ObjectStore>,
    max_bytes: u64,
    fetch_timeout: Duration,
    allow_private: bool,
    allow_http: bool,
}

impl FileStore {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let store: Arc<dyn ObjectStore> = match settings.files.store {
            FileStoreKind::Local => {
                let dir = settings.files_dir();
                std::fs::create_dir_all(&dir)?;
                Arc::new(LocalFileSystem::new_with_prefix(&dir)?)
            }
            FileStoreKind::S3 => Arc::new(s3_store(&settings.files)?),
        };
        Ok(Self {
            store,
            max_bytes: settings.files.max_bytes,
            fetch_timeout: settings.files.fetch_timeout,
            allow_private: settings.files.allow_private_networks,
            allow_http: settings.files.allow_http,
        })
    }

    /// The underlying object store (readers such as the payers' downloads).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn check_size(&self, len: usize) -> Result<(), FileError> {
        if len as u64 > self.max_bytes {
            return Err(FileError::TooLarge { limit: self.max_bytes });
        }
        Ok(())
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), FileError> {
        self.store.put(&ObjectPath::from(key), PutPayload::from(bytes)).await?;
        Ok(())
    }

    /// Deletes a file no record points at; a failure only leaves garbage behind.
    pub async fn remove(&self, key: &str) {
        if let Err(e) = self.store.delete(&object_store::path::Path::from(key)).await {
            tracing::warn!(key, error = %e, "removing an unused receipt file failed");
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, FileError> {
        Ok(self.store.get(&ObjectPath::from(key)).await?.bytes().await?)
    }

    /// Fetches `url` if its host is allow-listed, refusing private addresses (checked
    /// on the resolved address that is then used, so DNS rebinding cannot slip past)
    /// and redirects, and stopping at the size limit.
    pub async fn fetch(&self, url: &url::Url, allowed_hosts: &[String]) -> Result<Bytes, FileError> {
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if !allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
            return Err(FileError::HostNotAllowed(host));
        }
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(FileError::InsecureScheme),
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = match url.host() {
            // A literal address is what is connected to: check it, resolve nothing.
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(ip.into(), port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(ip.into(), port)],
            _ => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| FileError::Fetch(format!("cannot resolve host: {e}")))?
                .collect(),
        };
        let addr = addrs
            .first()
            .copied()
            .ok_or_else(|| FileError::Fetch("host has no address".into()))?;
        if !self.allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
            return Err(FileError::PrivateAddress);
        }
        // The checked address is the one connected to (no second lookup that DNS
        // rebinding could answer differently), and directly: a proxy from the
        // environment would connect wherever it likes.
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.fetch_timeout)
            .resolve(&host, addr)
            .build()
            .map_err(|e| FileError::Fetch(e.to_string()))?;
        let resp = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| FileError::Fetch(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(FileError::Fetch(format!("the file host answered {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > self.max_bytes) {
            return Err(FileError::TooLarge { limit: self.max_bytes });
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| FileError::Fetch(e.without_url().to_string()))?;
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(FileError::TooLarge { limit: self.max_bytes });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }
}

/// Public unicast addresses only. Refused: IPv4 this-network `0.0.0.0/8`, private
/// `10/8`, `172.16/12`, `192.168/16`, CGNAT `100.64.0.0/10`, loopback `127/8`,
/// link-local `169.254/16`, IETF protocol assignments `192.0.0.0/24`, documentation
/// (`192.0.2/24`, `198.51.100/24`, `203.0.113/24`), benchmarking `198.18.0.0/15`,
/// multicast `224/4`, reserved `240.0.0.0/4` and broadcast; IPv6 unspecified,
/// loopback, IPv4-mapped `::ffff:0:0/96` and IPv4-compatible `::/96` (judged by
/// their IPv4 address: refused when that is), NAT64 `64:ff9b::/96` and
/// `64:ff9b:1::/48`, discard `100::/64`, 6to4 `2002::/16`, Teredo and ORCHID
/// (`2001::/23`), documentation `2001:db8::/32` and `3fff::/20`, unique-local
/// `fc00::/7`, link-local `fe80::/10`, site-local `fec0::/10` and multicast `ff00::/8`.
/// Tunnels and translators are refused whole: what they reach is not ours to judge.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(o[0] == 0
                || o[0] == 10
                || o[0] == 127
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 169 && o[1] == 254)
                || (o[0] == 172 && (16..32).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 192 && o[1] == 0 && o[2] == 2)
                || (o[0] == 192 && o[1] == 168)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                || (o[0] == 203 && o[1] == 0 && o[2] == 113)
                || o[0] >= 224)
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated): the IPv4
            // address decides; `::` and `::1` are in the compatible range and refused.
            if seg[..5] == [0; 5] && (seg[5] == 0xffff || seg[5] == 0) {
                if seg[5] == 0 && seg[6] == 0 {
                    return false;
                }
                let [a, b] = seg[6].to_be_bytes();
                let [c, d] = seg[7].to_be_bytes();
                return is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            !((seg[0] == 0x64 && seg[1] == 0xff9b)
                || (seg[0] == 0x100 && seg[1..4] == [0; 3])
                || seg[0] == 0x2002
                || (seg[0] == 0x2001 && seg[1] < 0x200)
                || (seg[0] == 0x2001 && seg[1] == 0xdb8)
                || (seg[0] & 0xfff0) == 0x3ff0
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] & 0xffc0) == 0xfec0
                || (seg[0] & 0xff00) == 0xff00)
        }
    }
}

/// The S3-compatible store of `files.s3_*`, reached directly like every fetch
/// (no proxy from the environment); plain http only when the endpoint says so.
fn s3_store(files: &piaojia_core::settings::FileSettings) -> anyhow::Result<object_store::aws::AmazonS3> {
    use object_store::aws::AmazonS3Builder;
    use secrecy::ExposeSecret as _;
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&files.s3_bucket)
        .with_region(&files.s3_region)
        .with_http_connector(DirectConnector);
    if !files.s3_endpoint.is_empty() {
        builder = builder
            .with_endpoint(&files.s3_endpoint)
            .with_allow_http(files.s3_endpoint.starts_with("http://"));
    }
    if !files.s3_access_key_id.is_empty() {
        builder = builder
            .with_access_key_id(&files.s3_access_key_id)
            .with_secret_access_key(files.s3_secret_access_key.expose_secret());
    }
    Ok(builder.build()?)
}

/// object_store's HTTP client, built without environment proxies.
#[derive(Debug)]
struct DirectConnector;

impl object_store::client::HttpConnector for DirectConnector {
    fn connect(&self, options: &object_store::ClientOptions) -> object_store::Result<object_store::client::HttpClient> {
        let _ = options;
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(object_store::client::HttpClient::new(client))
    }
}

#[cfg(test)]
mod tests {
    use super::is_public;

    /// Every range that is not public unicast, with an address inside and, where a
    /// neighbour is public, the first public address past it.
    #[test]
    fn only_public_unicast_addresses_are_public() {
        let refused: &[(&str, &str)] = &[
            ("this network 0.0.0.0/8", "0.1.2.3"),
            ("unspecified", "0.0.0.0"),
            ("private 10/8", "10.1.2.3"),
            ("CGNAT 100.64.0.0/10, first", "100.64.0.1"),
            ("CGNAT 100.64.0.0/10, last", "100.127.255.254"),
            ("loopback 127/8", "127.0.0.1"),
            ("loopback 127/8, far end", "127.255.255.254"),
            ("link-local 169.254/16 (cloud metadata)", "169.254.169.254"),
            ("private 172.16/12, first", "172.16.0.1"),
            ("private 172.16/12, last", "172.31.255.254"),
            ("IETF protocol assignments 192.0.0.0/24", "192.0.0.8"),
            ("documentation TEST-NET-1", "192.0.2.1"),
            ("private 192.168/16", "192.168.1.1"),
            ("benchmarking 198.18.0.0/15, first", "198.18.0.1"),
            ("benchmarking 198.18.0.0/15, last", "198.19.255.254"),
            ("documentation TEST-NET-2", "198.51.100.7"),
            ("documentation TEST-NET-3", "203.0.113.7"),
            ("multicast 224/4", "224.0.0.1"),
            ("multicast 224/4, last", "239.255.255.255"),
            ("reserved 240/4", "240.0.0.1"),
            ("reserved 240/4, last", "255.255.255.254"),
            ("broadcast", "255.255.255.255"),
            ("IPv6 unspecified", "::"),
            ("IPv6 loopback", "::1"),
            ("IPv4-mapped loopback", "::ffff:127.0.0.1"),
            ("IPv4-mapped private", "::ffff:10.0.0.1"),
            ("IPv4-mapped metadata", "::ffff:169.254.169.254"),
            ("IPv4-compatible loopback", "::127.0.0.1"),
            ("IPv4-compatible private", "::192.168.0.1"),
            ("NAT64 64:ff9b::/96 of a private address", "64:ff9b::10.0.0.1"),
            ("NAT64 64:ff9b::/96 of a public address", "64:ff9b::8.8.8.8"),
            ("local-use NAT64 64:ff9b:1::/48", "64:ff9b:1::a00:1"),
            ("discard 100::/64", "100::1"),
            ("6to4 2002::/16 of loopback", "2002:7f00:1::1"),
            ("6to4 2002::/16 of a public address", "2002:808:808::1"),
            ("Teredo 2001::/32", "2001:0:4136:e378:8000:63bf:3fff:fdd2"),
            ("ORCHID / benchmarking 2001::/23", "2001:10::1"),
            ("documentation 2001:db8::/32", "2001:db8::1"),
            ("documentation 3fff::/20", "3fff::1"),
            ("unique-local fc00::/7", "fc00::1"),
            ("unique-local fd00::/8", "fd12:3456::1"),
            ("link-local fe80::/10", "fe80::1"),
            ("site-local fec0::/10", "fec0::1"),
            ("multicast ff00::/8", "ff02::1"),
        ];
        for (range, ip) in refused {
            assert!(!is_public(ip.parse().expect("ip")), "{range}: {ip} must be refused");
        }
        let public: &[(&str, &str)] = &[
            ("public IPv4", "114.114.114.114"),
            ("just below CGNAT", "100.63.255.255"),
            ("just above CGNAT", "100.128.0.1"),
            ("just above 172.16/12", "172.32.0.1"),
            ("just below 198.18/15", "198.17.255.255"),
            ("just above 198.18/15", "198.20.0.1"),
            ("just below 240/4 and 224/4", "223.255.255.254"),
            ("IPv4-mapped public", "::ffff:114.114.114.114"),
            ("public IPv6", "2400:3200::1"),
            ("public IPv6 past the special 2001::/23", "2001:200::1"),
        ];
        for (what, ip) in public {
            assert!(is_public(ip.parse().expect("ip")), "{what}: {ip} is public");
        }
    }
}
