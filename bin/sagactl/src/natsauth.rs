//! `sagactl nats-auth`: one NATS user (nkey) per role with the permissions of
//! `saga_nats::auth`, and, with `--tls`, a CA and a server certificate for client TLS.
//!
//! Writes into `--out`:
//!
//! | file | what |
//! | --- | --- |
//! | `auth.conf` | the server's `authorization { users = [...] }` block (public keys only) |
//! | `server.conf` | a whole server configuration: the repo's `nats.conf`, `auth.conf`, and `tls {}` with `--tls` |
//! | `nkeys/<role>.nk` | each role's seed (mode 0600): give each process its own, as `NATS_NKEY` |
//! | `env/<role>.env` | `NATS_NKEY=...` (and `NATS_TLS_CA=...`) for that role, for `env $(cat ...)` or compose `env_file` |
//! | `tls/ca.pem`, `tls/server.pem`, `tls/server-key.pem` | with `--tls`: the CA clients trust, the server's certificate and key |
//!
//! Existing seeds are kept (rerunning rotates nothing); `--rotate` makes new ones.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use saga_nats::auth::{Role, Users};

/// The example participant binaries and the services each serves.
pub const EXAMPLE_PARTICIPANTS: [(&str, &[&str]); 5] = [
    ("inventory", &["inventory"]),
    ("payment", &["payment", "PaymentService"]),
    ("orders", &["orders"]),
    ("flight", &["FlightService"]),
    ("hotel", &["HotelService"]),
];

/// The example choreography consumers.
pub const EXAMPLE_CONSUMERS: [&str; 3] = ["notification", "rewards", "shipping"];

/// `sagactl nats-auth`.
#[derive(Debug, Args)]
pub struct NatsAuthArgs {
    /// Directory to write the users, seeds and certificates into.
    #[arg(long, default_value = "deploy/nats/auth")]
    pub out: PathBuf,
    /// A participant binary and the services it serves, NAME=SERVICE[,SERVICE...];
    /// repeat for more. Default: the example participants.
    #[arg(long = "participant", value_name = "NAME=SERVICES")]
    pub participants: Vec<String>,
    /// A choreography consumer service; repeat for more. Default: the examples.
    #[arg(long = "consumer", value_name = "SERVICE")]
    pub consumers: Vec<String>,
    /// Also write a CA and a server certificate (for these host names / IPs; repeat).
    #[arg(long = "tls-host", value_name = "HOST")]
    pub tls_hosts: Vec<String>,
    /// Write a CA and a server certificate for localhost, 127.0.0.1 and `nats`.
    #[arg(long)]
    pub tls: bool,
    /// The server configuration `server.conf` includes (JetStream settings).
    #[arg(long, default_value = "nats.conf")]
    pub nats_conf: PathBuf,
    /// Make new seeds for every role (old ones stop working once the server reloads).
    #[arg(long)]
    pub rotate: bool,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct AuthDir {
    /// The directory.
    pub dir: PathBuf,
    /// `server.conf`.
    pub server_conf: PathBuf,
    /// The CA certificate, with TLS.
    pub ca: Option<PathBuf>,
}

impl AuthDir {
    /// The environment of the process connecting as `name` (a role name).
    pub fn env_for(&self, name: &str) -> Vec<(String, String)> {
        let mut env = vec![(
            "NATS_NKEY".to_string(),
            self.dir
                .join("nkeys")
                .join(format!("{name}.nk"))
                .display()
                .to_string(),
        )];
        if let Some(ca) = &self.ca {
            env.push(("NATS_TLS_CA".into(), ca.display().to_string()));
        }
        env
    }

    /// The [`saga_nats::Security`] of role `name`, for this process's own connections.
    pub fn security_for(&self, name: &str) -> Result<saga_nats::Security> {
        let env = self.env_for(name);
        Ok(saga_nats::Security::from_lookup(|k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })?)
    }
}

/// The roles of a deployment.
pub fn roles(participants: &[String], consumers: &[String]) -> Result<Vec<Role>> {
    let mut roles = vec![Role::Operator, Role::Gateway, Role::Worker, Role::Bank];
    if participants.is_empty() {
        for (name, services) in EXAMPLE_PARTICIPANTS {
            roles.push(Role::Participant {
                name: name.into(),
                services: services.iter().map(|s| s.to_string()).collect(),
                // The orders example keeps the event-sourced Order aggregate.
                event_sourced: name == "orders",
            });
        }
    }
    for p in participants {
        let Some((name, services)) = p.split_once('=') else {
            bail!("--participant {p:?}: expected NAME=SERVICE[,SERVICE...]");
        };
        let services: Vec<String> = services
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if services.is_empty() {
            bail!("--participant {p:?}: no service after '='");
        }
        for s in std::iter::once(name).chain(services.iter().map(String::as_str)) {
            saga_nats::names::check_token(s).with_context(|| format!("--participant {p:?}"))?;
        }
        roles.push(Role::Participant {
            name: name.into(),
            services,
            event_sourced: false,
        });
    }
    let consumers: Vec<String> = if consumers.is_empty() {
        EXAMPLE_CONSUMERS.iter().map(|s| s.to_string()).collect()
    } else {
        consumers.to_vec()
    };
    for service in consumers {
        saga_nats::names::check_token(&service)
            .with_context(|| format!("--consumer {service:?}"))?;
        roles.push(Role::EventConsumer { service });
    }
    Ok(roles)
}

/// Writes users, seeds and (with `tls_hosts`) certificates into `dir`.
pub fn generate(
    dir: &Path,
    roles: &[Role],
    tls_hosts: &[String],
    nats_conf: &Path,
    rotate: bool,
) -> Result<AuthDir> {
    let mkdir =
        |d: &Path| fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()));
    mkdir(dir)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let (nkeys_dir, env_dir) = (dir.join("nkeys"), dir.join("env"));
    mkdir(&nkeys_dir)?;
    mkdir(&env_dir)?;

    let ca = if tls_hosts.is_empty() {
        None
    } else {
        Some(write_tls(&dir.join("tls"), tls_hosts)?)
    };
    let mut users = Users::default();
    for role in roles {
        let seed_path = nkeys_dir.join(format!("{}.nk", role.name()));
        let pair = match fs::read_to_string(&seed_path) {
            Ok(seed) if !rotate => nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| {
                anyhow::anyhow!("{}: not a valid nkey seed: {e}", seed_path.display())
            })?,
            _ => {
                let pair = nkeys::KeyPair::new_user();
                let seed = pair
                    .seed()
                    .map_err(|e| anyhow::anyhow!("encoding an nkey seed: {e}"))?;
                write_secret(&seed_path, &format!("{seed}\n"))?;
                pair
            }
        };
        users.users.push((role.clone(), pair.public_key()));
    }
    let auth_dir = AuthDir {
        server_conf: dir.join("server.conf"),
        dir: dir.clone(),
        ca,
    };
    for role in roles {
        let env: String = auth_dir
            .env_for(role.name())
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        write_secret(&env_dir.join(format!("{}.env", role.name())), &env)?;
    }
    fs::write(dir.join("auth.conf"), users.render())
        .with_context(|| format!("writing {}", dir.join("auth.conf").display()))?;

    // A copy, not an `include`: nats-server resolves includes relative to the including
    // file's directory, so an include of the repo's file would break when either moves.
    let base = fs::read_to_string(nats_conf).with_context(|| {
        format!(
            "reading the nats-server configuration {}",
            nats_conf.display()
        )
    })?;
    let mut server = format!(
        "# nats-server with one user per role (written by `sagactl nats-auth` from {}).\n\
         {base}\n\
         include \"auth.conf\"\n",
        nats_conf.display()
    );
    if auth_dir.ca.is_some() {
        let tls = dir.join("tls");
        server.push_str(&format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n}}\n",
            tls.join("server.pem").display(),
            tls.join("server-key.pem").display()
        ));
    }
    fs::write(&auth_dir.server_conf, server)
        .with_context(|| format!("writing {}", auth_dir.server_conf.display()))?;
    Ok(auth_dir)
}

/// A CA and a server certificate signed by it; returns the CA's path.
fn write_tls(dir: &Path, hosts: &[String]) -> Result<PathBuf> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca_key_pem = ca_key.serialize_pem();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "saga-runtime dev CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("signing the CA")?;
    let key = KeyPair::generate().context("generating the server key")?;
    let mut params = CertificateParams::new(hosts.to_vec()).context("server certificate names")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "saga-runtime nats-server");
    let cert = params
        .signed_by(&key, &ca)
        .context("signing the server certificate")?;
    let ca_path = dir.join("ca.pem");
    fs::write(&ca_path, ca.pem()).with_context(|| format!("writing {}", ca_path.display()))?;
    fs::write(dir.join("server.pem"), cert.pem()).context("writing server.pem")?;
    write_secret(&dir.join("server-key.pem"), &key.serialize_pem())?;
    write_secret(&dir.join("ca-key.pem"), &ca_key_pem)?;
    Ok(ca_path)
}

/// Writes `text` readable by its owner only.
fn write_secret(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

/// `sagactl nats-auth`.
pub fn run(args: NatsAuthArgs) -> Result<()> {
    let roles = roles(&args.participants, &args.consumers)?;
    let mut hosts = args.tls_hosts.clone();
    if args.tls && hosts.is_empty() {
        hosts = vec!["localhost".into(), "127.0.0.1".into(), "nats".into()];
    }
    let dir = generate(&args.out, &roles, &hosts, &args.nats_conf, args.rotate)?;
    println!("wrote {} users into {}", roles.len(), dir.dir.display());
    println!(
        "  server:  nats-server -c {} -sd <store dir>",
        dir.server_conf.display()
    );
    for role in &roles {
        println!(
            "  {:<14} env $(cat {}) <binary>",
            role.name(),
            dir.dir
                .join("env")
                .join(format!("{}.env", role.name()))
                .display()
        );
    }
    if let Some(ca) = &dir.ca {
        println!("  clients trust {} (NATS_TLS_CA)", ca.display());
    }
    Ok(())
}
