//! Who may sign SNS messages (K-GW-3): the RSA keys of signing certificates,
//! verification of SignatureVersion 1 (SHA1withRSA) and 2 (SHA256withRSA),
//! certificates trusted from PEM files (so that the path works where AWS is
//! not reachable), and certificates fetched from `SigningCertURL`, cached,
//! one fetch per URL at a time.
//!
//! Callers check the URL rules ([`crate::sns::check_cert_url`]) first: this
//! module fetches whatever URL it is given.

use hashlink::LruCache;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use futures::future::BoxFuture;
use ring::signature::{
    RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use x509_cert::Certificate;
use x509_cert::der::Decode as _;
use x509_cert::der::oid::ObjectIdentifier;

use crate::sns::SnsMessage;

/// rsaEncryption (RFC 8017): the only key type SNS signs with.
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// A fetched certificate is used this long; SNS names a new certificate by a
/// new URL, so the content behind one URL does not change.
const CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// At most this many certificate URLs are remembered (SNS uses a handful);
/// past it the least recently used goes.
const CACHE_MAX: usize = 64;
/// A failed fetch is remembered this long: a sender naming URLs that fail
/// does not make the gateway fetch on every message.
const FAILURE_TTL: Duration = Duration::from_secs(30);
/// Certificate fetches in flight at once, over all URLs; a fetch waits at
/// most [`FETCH_QUEUE_WAIT`] for its turn, then the message is answered 503
/// and SNS delivers it again.
const FETCHES_IN_FLIGHT: usize = 4;
const FETCH_QUEUE_WAIT: Duration = Duration::from_secs(5);

/// The public key of one signing certificate and when it may be used.
#[derive(Clone, Debug)]
pub struct SigningKey {
    /// PKCS#1 `RSAPublicKey`, as ring wants it.
    rsa_public_key: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
    pub subject: String,
}

impl SigningKey {
    /// Every certificate of a PEM bundle; an error names what is wrong.
    pub fn from_pem(pem: &[u8]) -> Result<Vec<SigningKey>, String> {
        // rustls' PEM reader, not x509-cert's `load_pem_chain`, which panics
        // on empty input.
        let ders = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not PEM: {e}"))?;
        if ders.is_empty() {
            return Err("no certificate in the PEM data".into());
        }
        ders.iter()
            .map(|der| {
                let cert = Certificate::from_der(der)
                    .map_err(|e| format!("not an X.509 certificate: {e}"))?;
                Self::from_certificate(&cert)
            })
            .collect()
    }

    fn from_certificate(cert: &Certificate) -> Result<SigningKey, String> {
        let tbs = &cert.tbs_certificate;
        let subject = tbs.subject.to_string();
        let spki = &tbs.subject_public_key_info;
        if spki.algorithm.oid != RSA_ENCRYPTION {
            return Err(format!(
                "certificate {subject:?} has a {} key; SNS signs with RSA",
                spki.algorithm.oid
            ));
        }
        let rsa_public_key = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| format!("certificate {subject:?} has a malformed public key"))?
            .to_vec();
        Ok(SigningKey {
            rsa_public_key,
            not_before: tbs.validity.not_before.to_system_time(),
            not_after: tbs.validity.not_after.to_system_time(),
            subject,
        })
    }

    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verifies(&self, version: SignatureVersion, message: &[u8], signature: &[u8]) -> bool {
        let alg = match version {
            // SHA-1 because SignatureVersion 1 is defined with it; version 2
            // exists and topics can be switched to it.
            SignatureVersion::V1 => &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            SignatureVersion::V2 => &RSA_PKCS1_2048_8192_SHA256,
        };
        UnparsedPublicKey::new(alg, &self.rsa_public_key)
            .verify(message, signature)
            .is_ok()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureVersion {
    /// SHA1withRSA.
    V1,
    /// SHA256withRSA.
    V2,
}

impl SignatureVersion {
    pub fn parse(v: &str) -> Result<Self, String> {
        match v {
            "1" => Ok(Self::V1),
            "2" => Ok(Self::V2),
            other => Err(format!(
                "SignatureVersion {other:?} is not supported (1 or 2)"
            )),
        }
    }
}

/// Outbound HTTPS GETs: signing certificates and subscription confirmations.
pub trait Fetch: Send + Sync {
    /// The body of a 2xx answer, or why there is none.
    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>>;
}

/// [`Fetch`] over HTTPS with the system's trust store (proxies from the
/// environment apply), a short deadline, no redirects, and a size cap.
pub struct HttpsFetch {
    client: reqwest::Client,
}

/// Certificates and confirmation answers are a few KiB.
const FETCH_MAX_BYTES: usize = 64 * 1024;

impl HttpsFetch {
    pub fn new(timeout: Duration) -> Result<Self, crate::ConfigError> {
        // reqwest is built without a default TLS provider (see Cargo.toml);
        // an error means one is installed already, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .build()
            .map_err(crate::ConfigError::Https)?;
        Ok(Self { client })
    }
}

impl Fetch for HttpsFetch {
    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let mut resp = self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("GET {url}: {}", resp.status()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
                if body.len() + chunk.len() > FETCH_MAX_BYTES {
                    return Err(format!(
                        "GET {url}: answer larger than {FETCH_MAX_BYTES} bytes"
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })
    }
}

/// Why a message's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// Malformed signature fields (400).
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The signature does not verify with any usable key (403).
    #[error("signature refused: {0}")]
    Refused(String),
    /// The signing certificate could not be fetched; SNS should re-send (503).
    #[error("signing certificate unavailable: {0}")]
    Unavailable(String),
}

/// One URL's keys, or why they could not be had; fetched once however
/// many messages ask at the same time.
type CachedKeys = Arc<tokio::sync::OnceCell<Result<Arc<Vec<SigningKey>>, TrustError>>>;

/// The keys messages may be signed with.
pub struct Trust {
    trusted: Vec<SigningKey>,
    /// `None`: trusted certificates only, nothing is fetched.
    fetch: Option<Arc<dyn Fetch>>,
    cache: Mutex<LruCache<String, (Instant, CachedKeys)>>,
    fetching: tokio::sync::Semaphore,
}

impl Trust {
    pub fn new(trusted: Vec<SigningKey>, fetch: Option<Arc<dyn Fetch>>) -> Self {
        Self {
            trusted,
            fetch,
            cache: Mutex::new(LruCache::new(CACHE_MAX)),
            fetching: tokio::sync::Semaphore::new(FETCHES_IN_FLIGHT),
        }
    }

    /// Accepts `m` if its signature verifies with a trusted certificate or
    /// with the certificate at its `SigningCertURL`.
    pub async fn verify(&self, m: &SnsMessage, now: SystemTime) -> Result<(), TrustError> {
        let version =
            SignatureVersion::parse(&m.signature_version).map_err(TrustError::Malformed)?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(m.signature.trim())
            .map_err(|e| TrustError::Malformed(format!("Signature is not base64: {e}")))?;
        let text = m.string_to_sign();
        let verifies =
            |k: &SigningKey| k.valid_at(now) && k.verifies(version, text.as_bytes(), &signature);
        if self.trusted.iter().any(verifies) {
            return Ok(());
        }
        let Some(fetch) = &self.fetch else {
            return Err(TrustError::Refused(
                "the signature does not verify with any trusted certificate (fetching certificates is off)".into(),
            ));
        };
        let keys = self.fetched(fetch.as_ref(), &m.signing_cert_url).await?;
        if keys.iter().any(verifies) {
            Ok(())
        } else {
            Err(TrustError::Refused(format!(
                "the signature does not verify with the certificate at {} or a trusted one",
                m.signing_cert_url
            )))
        }
    }

    /// The keys at `url`: from the cache, or fetched once however many
    /// messages ask at the same time. A failure is remembered for
    /// [`FAILURE_TTL`], the keys for [`CACHE_TTL`].
    async fn fetched(
        &self,
        fetch: &dyn Fetch,
        url: &str,
    ) -> Result<Arc<Vec<SigningKey>>, TrustError> {
        let cell = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let fresh = cache.get(url).is_some_and(|(at, cell)| {
                let ttl = match cell.get() {
                    Some(Err(_)) => FAILURE_TTL,
                    _ => CACHE_TTL,
                };
                now.duration_since(*at) < ttl
            });
            if !fresh {
                cache.insert(url.to_string(), (now, CachedKeys::default()));
            }
            match cache.get(url) {
                Some((_, cell)) => cell.clone(),
                None => CachedKeys::default(),
            }
        };
        cell.get_or_init(|| async {
            let Ok(Ok(_permit)) =
                tokio::time::timeout(FETCH_QUEUE_WAIT, self.fetching.acquire()).await
            else {
                return Err(TrustError::Unavailable(
                    "too many signing certificates are being fetched".into(),
                ));
            };
            let pem = fetch.get(url).await.map_err(TrustError::Unavailable)?;
            let keys = SigningKey::from_pem(&pem).map_err(|e| {
                TrustError::Refused(format!("the certificate at {url} is unusable: {e}"))
            })?;
            tracing::info!(%url, subject = %keys[0].subject, "fetched an SNS signing certificate");
            Ok(Arc::new(keys))
        })
        .await
        .clone()
    }

    #[cfg(test)]
    fn cached_urls(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sns;
    use crate::sns::tests::NOTIFICATION;
    use crate::test_pki::Pki;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Serves one PEM for every URL and counts the requests: the cache logic
    /// is what is under test, not the network.
    struct CountingFetch {
        pem: Vec<u8>,
        calls: AtomicUsize,
    }

    impl Fetch for CountingFetch {
        fn get<'a>(&'a self, _url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(self.pem.clone())
            })
        }
    }

    fn signed(pki: &Pki, key: &str, version: &str, body: &str) -> SnsMessage {
        let mut m = sns::parse(body.as_bytes()).unwrap();
        m.signature_version = version.to_string();
        m.signature = pki.sign(key, version, &m.string_to_sign());
        m
    }

    #[tokio::test]
    async fn both_signature_versions_verify_with_a_trusted_certificate() {
        let pki = Pki::get();
        let trust = Trust::new(SigningKey::from_pem(&pki.cert_pem("signer")).unwrap(), None);
        for version in ["1", "2"] {
            let m = signed(pki, "signer", version, NOTIFICATION);
            assert_eq!(
                trust.verify(&m, SystemTime::now()).await,
                Ok(()),
                "v{version}"
            );
        }
    }

    #[tokio::test]
    async fn a_flipped_byte_a_wrong_key_or_a_wrong_version_is_refused() {
        let pki = Pki::get();
        let trust = Trust::new(SigningKey::from_pem(&pki.cert_pem("signer")).unwrap(), None);
        let now = SystemTime::now();
        let good = signed(pki, "signer", "2", NOTIFICATION);

        let mut flipped = good.clone();
        let mut bytes = flipped.message.into_bytes();
        bytes[10] ^= 0x01;
        flipped.message = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            trust.verify(&flipped, now).await,
            Err(TrustError::Refused(_))
        ));

        let mut sig = base64::engine::general_purpose::STANDARD
            .decode(&good.signature)
            .unwrap();
        sig[0] ^= 0x80;
        let mut bad_sig = good.clone();
        bad_sig.signature = base64::engine::general_purpose::STANDARD.encode(sig);
        assert!(matches!(
            trust.verify(&bad_sig, now).await,
            Err(TrustError::Refused(_))
        ));

        let other = signed(pki, "intruder", "2", NOTIFICATION);
        assert!(matches!(
            trust.verify(&other, now).await,
            Err(TrustError::Refused(_))
        ));

        // Signed as version 1, claimed as version 2.
        let mut v1_as_v2 = signed(pki, "signer", "1", NOTIFICATION);
        v1_as_v2.signature_version = "2".into();
        assert!(matches!(
            trust.verify(&v1_as_v2, now).await,
            Err(TrustError::Refused(_))
        ));

        let mut v3 = good.clone();
        v3.signature_version = "3".into();
        assert!(matches!(
            trust.verify(&v3, now).await,
            Err(TrustError::Malformed(_))
        ));
        let mut not_b64 = good;
        not_b64.signature = "***".into();
        assert!(matches!(
            trust.verify(&not_b64, now).await,
            Err(TrustError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn a_certificate_outside_its_validity_is_not_used() {
        let pki = Pki::get();
        let trust = Trust::new(SigningKey::from_pem(&pki.cert_pem("signer")).unwrap(), None);
        let m = signed(pki, "signer", "2", NOTIFICATION);
        let in_ten_years = SystemTime::now() + Duration::from_secs(10 * 365 * 86400);
        assert!(trust.verify(&m, in_ten_years).await.is_err());
    }

    #[tokio::test]
    async fn fetched_certificates_are_fetched_once_and_cached() {
        let pki = Pki::get();
        let fetch = Arc::new(CountingFetch {
            pem: pki.cert_pem("signer"),
            calls: AtomicUsize::new(0),
        });
        let trust = Arc::new(Trust::new(Vec::new(), Some(fetch.clone())));
        let m = signed(pki, "signer", "2", NOTIFICATION);
        let checks = (0..20).map(|_| {
            let (trust, m) = (trust.clone(), m.clone());
            tokio::spawn(async move { trust.verify(&m, SystemTime::now()).await })
        });
        for r in futures::future::join_all(checks).await {
            assert_eq!(r.unwrap(), Ok(()));
        }
        assert_eq!(fetch.calls.load(Ordering::SeqCst), 1);
        // A wrong key is still refused with the certificate cached.
        let other = signed(pki, "intruder", "2", NOTIFICATION);
        assert!(matches!(
            trust.verify(&other, SystemTime::now()).await,
            Err(TrustError::Refused(_))
        ));
        assert_eq!(fetch.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unreachable_certificate_asks_for_a_retry_and_is_not_fetched_again_at_once() {
        struct Down(AtomicUsize);
        impl Fetch for Down {
            fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move { Err(format!("GET {url}: connection refused")) })
            }
        }
        let down = Arc::new(Down(AtomicUsize::new(0)));
        let trust = Trust::new(Vec::new(), Some(down.clone()));
        let m = signed(Pki::get(), "signer", "2", NOTIFICATION);
        for _ in 0..3 {
            assert!(matches!(
                trust.verify(&m, SystemTime::now()).await,
                Err(TrustError::Unavailable(_))
            ));
        }
        assert_eq!(
            down.0.load(Ordering::SeqCst),
            1,
            "the failure is remembered for a while"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
        /// However many certificate URLs senders name, the cache holds at
        /// most CACHE_MAX of them.
        #[test]
        fn the_certificate_cache_stays_within_its_bound(
            urls in proptest::collection::vec("[0-9a-f]{32}", 1..200)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            struct Refusing;
            impl Fetch for Refusing {
                fn get<'a>(&'a self, _url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>> {
                    Box::pin(async { Err("refused".to_string()) })
                }
            }
            let trust = Trust::new(Vec::new(), Some(Arc::new(Refusing)));
            rt.block_on(async {
                for u in &urls {
                    let url = format!("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-{u}.pem");
                    let _ = trust.fetched(trust.fetch.as_deref().unwrap(), &url).await;
                }
            });
            proptest::prop_assert!(trust.cached_urls() <= CACHE_MAX);
        }
    }

    #[test]
    fn pem_files_that_are_not_rsa_certificates_are_refused_with_a_reason() {
        assert!(SigningKey::from_pem(b"").is_err());
        assert!(
            SigningKey::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        let pki = Pki::get();
        let e = SigningKey::from_pem(&pki.ec_cert_pem()).unwrap_err();
        assert!(e.contains("RSA"), "{e}");
    }
}
