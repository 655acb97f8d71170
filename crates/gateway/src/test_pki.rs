//! A throw-away PKI for tests of the SNS path, made with the `openssl` tool
//! exactly as an operator would: a CA, a signing certificate it issued
//! (`signer`), a second one with another key (`intruder`), and an EC
//! certificate. Messages are signed with `openssl dgst`, as SNS signs them.
//! Built once per test process, in a fresh directory under the temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;

pub struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl tool is installed (scripts/deps.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// The PKI of this test process.
    pub fn get() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(Pki::build)
    }

    fn build() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "kubernaut-test-pki-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).expect("create the PKI directory");
        #[rustfmt::skip]
        openssl(&dir, &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=Test SNS CA", "-keyout", "ca.key", "-out", "ca.pem"]);
        for (i, name) in ["signer", "intruder"].into_iter().enumerate() {
            let (key, csr, pem, serial) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                (i + 1).to_string(),
            );
            #[rustfmt::skip]
            openssl(&dir, &["req", "-newkey", "rsa:2048", "-nodes", "-subj",
                &format!("/CN=sns.amazonaws.com/OU={name}"), "-keyout", &key, "-out", &csr]);
            #[rustfmt::skip]
            openssl(&dir, &["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key",
                "-set_serial", &serial, "-days", "2", "-out", &pem]);
        }
        #[rustfmt::skip]
        openssl(&dir, &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=ec", "-keyout", "ec.key", "-out", "ec.pem"]);
        Pki { dir }
    }

    /// The certificate file of `name` (`signer` or `intruder`).
    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub fn cert_pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.cert_path(name)).expect("read a test certificate")
    }

    pub fn ec_cert_pem(&self) -> Vec<u8> {
        self.cert_pem("ec")
    }

    /// The base64 `Signature` of `text` with `name`'s key, as SNS computes
    /// it for SignatureVersion `version` (1: SHA1withRSA, 2: SHA256withRSA).
    pub fn sign(&self, name: &str, version: &str, text: &str) -> String {
        let digest = if version == "1" { "-sha1" } else { "-sha256" };
        // Tests sign concurrently: each signature has its own files.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (input, output) = (format!("msg-{seq}.txt"), format!("sig-{seq}.bin"));
        std::fs::write(self.dir.join(&input), text).expect("write the text to sign");
        #[rustfmt::skip]
        openssl(&self.dir, &["dgst", digest, "-sign", &format!("{name}.key"), "-out", &output, &input]);
        let sig = std::fs::read(self.dir.join(&output)).expect("read the signature");
        base64::engine::general_purpose::STANDARD.encode(sig)
    }
}
