//! `starlingctl`: the operator's tool.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use starling_admin::{event_row, table_header};
use starling_mesh::identity::{FleetCa, Role};
use starling_sink::local_store::LocalStoreReader;

mod files;
mod fleet_commands;
mod key_commands;
mod rollout_commands;
mod root_commands;
mod task_commands;

/// Starling operator tool: fleet credentials, signed tasks and views of
/// the mesh.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The fleet certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Host certificates signed by the fleet CA.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Events stored by a sink's embedded local store.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// The mesh as this host's node sees it.
    Mesh {
        #[command(subcommand)]
        command: MeshCommand,
    },
    /// Operator signing keys (ed25519).
    Key {
        #[command(subcommand)]
        command: key_commands::KeyCommand,
    },
    /// The fleet's trust root: who may sign which tasks.
    Root {
        #[command(subcommand)]
        command: root_commands::RootCommand,
    },
    /// Signed tasks: configuration, tags, revocations, root rotation.
    Task {
        #[command(subcommand)]
        command: task_commands::TaskCommand,
    },
    /// Staged rollouts: check a plan, follow the waves, pause, resume or
    /// abort.
    Rollout {
        #[command(subcommand)]
        command: rollout_commands::RolloutCommand,
    },
    /// The fleet's hosts: cells, who is down and since when, and with
    /// --cell each host's version, facts and agent resources.
    Fleet(fleet_commands::FleetArgs),
}

#[derive(Debug, Subcommand)]
enum MeshCommand {
    /// Members of this host's cell, its aggregators with their load and
    /// attached nodes, the sinks, and where this host's events go.
    Status {
        #[command(flatten)]
        node: starling_admin::NodeDataDir,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        /// Redraw every two seconds.
        #[arg(short, long)]
        watch: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a new fleet CA (ca.pem, ca.key) in the PKI directory.
    Init {
        /// PKI directory.
        #[arg(long, env = "STARLING_PKI", default_value = "/etc/starling/pki")]
        pki: PathBuf,
        /// Name of the fleet, recorded in the CA's subject.
        #[arg(long, default_value = "default")]
        fleet: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (every issued certificate stops working).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Issue a certificate for a node or a sink.
    Issue {
        /// PKI directory holding ca.pem and ca.key.
        #[arg(long, env = "STARLING_PKI", default_value = "/etc/starling/pki")]
        pki: PathBuf,
        /// Role of the holder.
        #[arg(long)]
        role: Role,
        /// Host name (a node's host_id; a sink's server_name).
        #[arg(long)]
        name: String,
        /// Extra DNS names (sinks: names nodes use to reach it).
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses to include (sinks).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Output directory (default: the PKI directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// File name stem (default: the name); writes STEM.pem and STEM.key.
        #[arg(long)]
        stem: Option<String>,
    },
    /// Revoke certificates: writes a new revocation list (PKI/crl.pem,
    /// signed by the CA) that also keeps every earlier revocation. Copy it
    /// to each host's tls.revocations path (default: crl.pem beside
    /// ca.pem); members re-read it within seconds and drop the revoked.
    Revoke {
        /// PKI directory holding ca.pem, ca.key and the issued certificates.
        #[arg(long, env = "STARLING_PKI", default_value = "/etc/starling/pki")]
        pki: PathBuf,
        /// Name whose certificate (PKI/NAME.pem) is revoked; repeatable.
        #[arg(long, required_unless_present = "cert")]
        name: Vec<String>,
        /// A certificate file to revoke; repeatable.
        #[arg(long)]
        cert: Vec<PathBuf>,
        /// Days until members should expect a newer list.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

/// `cert revoke`: adds the certificates' serials to the fleet's list.
fn revoke(
    pki: &std::path::Path,
    names: &[String],
    certs: &[PathBuf],
    days: u32,
) -> anyhow::Result<()> {
    use rustls_pki_types::pem::PemObject;
    let ca = FleetCa::load(&pki.join("ca.pem"), &pki.join("ca.key"))
        .with_context(|| format!("loading the fleet CA from {}", pki.display()))?;
    let files: Vec<PathBuf> = names
        .iter()
        .map(|n| pki.join(format!("{n}.pem")))
        .chain(certs.iter().cloned())
        .collect();
    let revoked = files
        .iter()
        .map(|file| {
            rustls_pki_types::CertificateDer::from_pem_file(file)
                .with_context(|| format!("reading certificate {}", file.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let list = pki.join("crl.pem");
    let now = ca.revoke(&list, &revoked, days)?;
    for file in &files {
        println!("revoked {}", file.display());
    }
    println!(
        "revocation list number {} ({} revoked in all) written to {}",
        now.number,
        now.serials.len(),
        list.display()
    );
    Ok(())
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Show the most recent events, oldest first; --follow keeps printing.
    Tail {
        /// The sink's local store (<sink data_dir>/store).
        #[arg(
            long,
            env = "STARLING_STORE",
            default_value = "/var/lib/starling/sink/store"
        )]
        store: PathBuf,
        /// How many recent events to show first (at most what the store
        /// keeps; a large number reads the whole store, nothing more).
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep printing new events as they arrive.
        #[arg(short, long)]
        follow: bool,
        /// Only events of this host (read through the store's host index).
        #[arg(long)]
        host: Option<String>,
        /// Only events of this kind.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(starling_proto::EVENT_KINDS))]
        kind: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Key { command } => key_commands::key(command),
        Command::Root { command } => root_commands::root(command),
        Command::Task { command } => task_commands::task(command),
        Command::Rollout { command } => rollout_commands::rollout(command),
        Command::Fleet(args) => fleet_commands::fleet(args),
        Command::Ca {
            command:
                CaCommand::Init {
                    pki,
                    fleet,
                    days,
                    force,
                },
        } => {
            let cert = pki.join("ca.pem");
            if cert.exists() && !force {
                bail!(
                    "{} exists; a new CA would invalidate every issued certificate (use --force to replace it)",
                    cert.display()
                );
            }
            let ca = FleetCa::generate(&fleet, days)?;
            let (c, k) = ca.pem().write(&pki, "ca")?;
            println!(
                "fleet CA created\n  certificate: {}\n  private key: {} (keep it offline)",
                c.display(),
                k.display()
            );
            Ok(())
        }
        Command::Cert {
            command:
                CertCommand::Issue {
                    pki,
                    role,
                    name,
                    dns,
                    ip,
                    days,
                    out,
                    stem,
                },
        } => {
            let ca =
                FleetCa::load(&pki.join("ca.pem"), &pki.join("ca.key")).with_context(|| {
                    format!(
                        "loading the fleet CA from {} (run `starlingctl ca init` first)",
                        pki.display()
                    )
                })?;
            let pair = ca.issue(role, &name, &dns, &ip, days)?;
            let stem = stem.unwrap_or_else(|| name.clone());
            let (c, k) = pair.write(out.as_deref().unwrap_or(&pki), &stem)?;
            println!(
                "issued {role}/{name}\n  certificate: {}\n  private key: {}",
                c.display(),
                k.display()
            );
            Ok(())
        }
        Command::Cert {
            command:
                CertCommand::Revoke {
                    pki,
                    name,
                    cert,
                    days,
                },
        } => revoke(&pki, &name, &cert, days),
        Command::Events {
            command:
                EventsCommand::Tail {
                    store,
                    lines,
                    follow,
                    host,
                    kind,
                    json,
                },
        } => tail(
            &store,
            lines,
            follow,
            host.as_deref(),
            kind.as_deref(),
            json,
        ),
        Command::Mesh {
            command: MeshCommand::Status { node, json, watch },
        } => loop {
            let path = node.data_dir.join(starling_mesh::status::STATUS_FILE);
            let text = std::fs::read(&path).with_context(|| {
                format!(
                    "reading {} (is starling-node running with mesh.enabled, and is --data-dir its data_dir?)",
                    path.display()
                )
            })?;
            let status: starling_mesh::status::MeshStatus = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a mesh status", path.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                if watch {
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", starling_admin::render_mesh_status(&status, now));
            }
            if !watch {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(2));
        },
    }
}

fn tail(
    store: &std::path::Path,
    lines: usize,
    follow: bool,
    host: Option<&str>,
    kind: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let reader = LocalStoreReader::open(store)?;
    let wanted = |e: &starling_proto::v1::Event| {
        host.is_none_or(|h| e.header.as_ref().is_some_and(|x| x.host_id == h))
            && kind.is_none_or(|k| starling_proto::event_kind(e) == k)
    };
    let print = |e: &starling_proto::v1::Event| {
        if json {
            println!("{}", starling_proto::json::event_to_json(e));
        } else {
            println!("{}", event_row(e));
        }
    };
    let kind_matches =
        |e: &starling_proto::v1::Event| kind.is_none_or(|k| starling_proto::event_kind(e) == k);
    let (shown, bad) = reader.tail_where(host, lines, kind_matches)?;
    if !json {
        println!("{}", table_header());
    }
    for (_, e) in &shown {
        print(e);
    }
    if bad > 0 {
        eprintln!("warning: {bad} stored entries could not be decoded and were skipped");
    }
    if !follow {
        return Ok(());
    }
    // Follow from the newest event shown, or the store's newest when none
    // matched (arrival numbers are the store's, whichever host).
    let mut last = match shown.last() {
        Some((a, _)) => *a,
        None => reader.tail(1)?.0.last().map_or(0, |(a, _)| *a),
    };
    loop {
        std::thread::sleep(Duration::from_millis(250));
        reader.refresh()?;
        loop {
            let page = match host {
                Some(h) => reader.after_host(h, last, 1000)?,
                None => reader.after(last, 1000)?,
            };
            if page.undecodable > 0 {
                eprintln!(
                    "warning: {} stored entries could not be decoded and were skipped",
                    page.undecodable
                );
            }
            if page.last_arrival == last {
                break;
            }
            last = page.last_arrival;
            for (_, e) in page.events.iter().filter(|(_, e)| wanted(e)) {
                print(e);
            }
        }
    }
}
