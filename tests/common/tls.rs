//! Certificates made in the tests (rcgen), and secrets laid out and rotated as Kubernetes does.
use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority, made here.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A leaf certificate for `name` (also its DNS name) and its private key, both PEM.
    pub fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        (
            params.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    pub fn server_cert(&self) -> (String, String) {
        self.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth)
    }

    pub fn client_cert(&self, name: &str) -> (String, String) {
        self.issue(name, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A directory laid out as kubelet lays out a mounted secret: `tls.crt` and `tls.key` are links
/// through `..data` into a versioned directory; an update writes a new version and swaps
/// `..data` in one rename.
pub struct SecretDir {
    dir: tempfile::TempDir,
    version: usize,
}

impl SecretDir {
    pub fn new(files: &[(&str, &str)]) -> SecretDir {
        let mut secret = SecretDir {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        secret.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), secret.dir.path().join(name))
                .unwrap();
        }
        secret
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.path().join(&version)).unwrap();
        for (name, content) in files {
            std::fs::write(self.dir.path().join(&version).join(name), content).unwrap();
        }
        let staged = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staged).unwrap();
        std::fs::rename(&staged, self.dir.path().join("..data")).unwrap();
    }
}
