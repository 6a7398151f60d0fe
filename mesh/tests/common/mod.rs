//! A fleet CA in a temporary directory, shared by the mesh's tests.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use starling_mesh::enrol::Enrolment;
use starling_mesh::identity::{FleetCa, Role, TlsFiles};

#[allow(dead_code)]
pub mod task_plane;

/// A fleet CA and the credentials it issued.
pub struct Fleet {
    dir: tempfile::TempDir,
    ca: FleetCa,
}

impl Fleet {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = FleetCa::generate("t", 30).expect("ca");
        ca.pem().write(dir.path(), "ca").expect("write ca");
        Self { dir, ca }
    }

    /// Issues a certificate for `name` in `role`; returns its files.
    pub fn files(&self, role: Role, name: &str) -> TlsFiles {
        let (cert, key) = self
            .ca
            .issue(role, name, &[], &[], 30)
            .expect("issue")
            .write(self.dir.path(), name)
            .expect("write");
        TlsFiles {
            ca_cert: self.dir.path().join("ca.pem"),
            cert,
            key,
        }
    }

    /// Issues a certificate for `name` in `role` and loads it.
    #[allow(dead_code)]
    pub fn enrol(&self, role: Role, name: &str) -> Enrolment {
        Enrolment::load(&self.files(role, name)).expect("enrolment loads")
    }

    /// Where the fleet's revocation list is written.
    #[allow(dead_code)]
    pub fn revocation_list(&self) -> std::path::PathBuf {
        self.dir.path().join("crl.pem")
    }

    /// Revokes the certificate issued to `name` and writes the new list.
    #[allow(dead_code)]
    pub fn revoke(&self, name: &str) {
        let cert = CertificateDer::from_pem_file(self.dir.path().join(format!("{name}.pem")))
            .expect("issued certificate");
        self.ca
            .revoke(&self.revocation_list(), &[cert], 7)
            .expect("revocation list written");
    }
}
