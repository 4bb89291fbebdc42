//! Receipt files (PDF/OFD): kept in an object store (a local directory by default,
//! S3-compatible when configured) and, when an issuer sends a URL, fetched only from
//! the agency's allow-listed hosts and never from private networks unless allowed.

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
}

impl FileStore {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let store: Arc<dyn ObjectStore> = match settings.files.store {
            FileStoreKind::Local => {
                let dir = settings.files_dir();
                std::fs::create_dir_all(&dir)?;
                Arc::new(LocalFileSystem::new_with_prefix(&dir)?)
            }
            FileStoreKind::S3 => {
                anyhow::bail!("files.store = \"s3\" needs a build with the `s3` feature; this build supports \"local\"")
            }
        };
        Ok(Self {
            store,
            max_bytes: settings.files.max_bytes,
            fetch_timeout: Duration::from_secs(settings.files.fetch_timeout_secs),
            allow_private: settings.files.allow_private_networks,
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
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| FileError::Fetch(format!("cannot resolve host: {e}")))?
            .collect();
        let addr = addrs
            .first()
            .copied()
            .ok_or_else(|| FileError::Fetch("host has no address".into()))?;
        if !self.allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
            return Err(FileError::PrivateAddress);
        }
        let client = reqwest::Client::builder()
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

/// Public unicast addresses only: no loopback, private, link-local, CGNAT,
/// unspecified, multicast, documentation or unique-local ranges.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn private_ranges_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["114.114.114.114", "2400:3200::1"] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
    }
}
