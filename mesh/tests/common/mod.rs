//! A fleet CA in a temporary directory, shared by the mesh's tests.

use starling_mesh::enrol::Enrolment;
use starling_mesh::identity::{FleetCa, Role, TlsFiles};

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

    /// Issues a certificate for `name` in `role` and loads it.
    pub fn enrol(&self, role: Role, name: &str) -> Enrolment {
        let (cert, key) = self
            .ca
            .issue(role, name, &[], &[], 30)
            .expect("issue")
            .write(self.dir.path(), name)
            .expect("write");
        Enrolment::load(&TlsFiles {
            ca_cert: self.dir.path().join("ca.pem"),
            cert,
            key,
        })
        .expect("enrolment loads")
    }
}
