//! Certificates for TLS tests, made by the openssl CLI: two CAs (`ca`, `other-ca`) and
//! leaf certificates signed by either (server or client, valid or expired).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        std::fs::write(pki.path("index.txt"), "").unwrap();
        std::fs::write(pki.path("serial"), "1000\n").unwrap();
        std::fs::write(pki.path("ca.cnf"), ca_config(pki.dir.path())).unwrap();
        pki.ca("ca");
        pki.ca("other-ca");
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "3",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    /// A certificate `name.pem` / `name.key` signed by `ca`, with `ext` (server_ext or
    /// client_ext), valid now or (expired) in 2020 only.
    pub fn leaf(&self, name: &str, cn: &str, ca: &str, ext: &str, expired: bool) {
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}/O=Gantry Tests"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        let mut args: Vec<String> = [
            "ca",
            "-batch",
            "-notext",
            "-config",
            "ca.cnf",
            "-extensions",
            ext,
        ]
        .map(String::from)
        .to_vec();
        for (flag, file) in [
            ("-cert", format!("{ca}.pem")),
            ("-keyfile", format!("{ca}.key")),
            ("-in", format!("{name}.csr")),
            ("-out", format!("{name}.pem")),
        ] {
            args.push(flag.to_string());
            args.push(file);
        }
        let dates: &[&str] = if expired {
            &[
                "-startdate",
                "20200101000000Z",
                "-enddate",
                "20200102000000Z",
            ]
        } else {
            &["-days", "2"]
        };
        args.extend(dates.iter().map(|d| d.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.openssl(&refs);
    }
}

fn ca_config(dir: &Path) -> String {
    format!(
        "[ca]\ndefault_ca = c\n[c]\ndir = {}\ndatabase = $dir/index.txt\nnew_certs_dir = $dir\nserial = $dir/serial\n\
         default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\norganizationName = optional\n\
         [server_ext]\nbasicConstraints = CA:FALSE\nsubjectAltName = IP:127.0.0.1,DNS:localhost\nextendedKeyUsage = serverAuth\nkeyUsage = critical,digitalSignature\n\
         [client_ext]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\nkeyUsage = critical,digitalSignature\n",
        dir.display()
    )
}
