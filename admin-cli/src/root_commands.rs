//! `starlingctl root`: the fleet's trust root, which operator keys may sign
//! which tasks and how many signatures each needs, created, signed and
//! shown as a file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use starling_admin::tasks::{render_root, root_json};
use starling_task::keys::{public_key_from_pem, OperatorKeyPair};
use starling_task::sign::{sign_root, unsigned_root};
use starling_task::TrustedRoot;

use crate::files::{now, read, replace, unix_secs, write_new};

#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// Write a new, unsigned trust root listing the given keys; then each
    /// operator signs it with `root sign`.
    Init {
        /// The fleet's name; tasks must name it.
        #[arg(long)]
        fleet: String,
        /// Public (or private) key files of the operators; repeatable.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Signatures needed for most kinds of task.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// Signatures needed to change the root or revoke an operator key
        /// (default: 2, or 1 with a single key).
        #[arg(long)]
        root_threshold: Option<u32>,
        /// The root's version: 1 for a new fleet, the current one + 1 to
        /// rotate (then publish it with `task create root`).
        #[arg(long, default_value_t = 1)]
        version: u64,
        /// Days until it expires.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Where to write it.
        #[arg(long, short)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Add your signature to a root file.
    Sign {
        #[arg(long)]
        key: PathBuf,
        root: PathBuf,
    },
    /// Show a root: keys, what each kind needs, who signed, whether hosts
    /// can install it.
    Show {
        root: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// `starlingctl root ...`
pub fn root(cmd: RootCommand) -> anyhow::Result<()> {
    match cmd {
        RootCommand::Init {
            fleet,
            keys,
            threshold,
            root_threshold,
            version,
            days,
            out,
            force,
        } => {
            let mut listed = Vec::new();
            for path in &keys {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                listed.push((public_key_from_pem(&text, path)?, name));
            }
            let root_threshold = root_threshold.unwrap_or(if listed.len() > 1 { 2 } else { 1 });
            let expires = unix_secs(now() + Duration::from_secs(days.saturating_mul(86_400)));
            let root = starling_task::root::new_root(
                &fleet,
                version,
                expires,
                &listed,
                threshold,
                root_threshold,
            )
            .map_err(anyhow::Error::msg)?;
            write_new(&out, &unsigned_root(&root), force)?;
            println!(
                "trust root version {version} of fleet {fleet} written to {} (unsigned): each operator now runs `starlingctl root sign --key NAME.key {}`",
                out.display(),
                out.display()
            );
            Ok(())
        }
        RootCommand::Sign { key, root } => {
            let k = OperatorKeyPair::load(&key)?;
            let signed = sign_root(&read(&root)?, &k)?;
            replace(&root, &signed)?;
            print!("{}", render_root(&signed, unix_secs(now()))?);
            Ok(())
        }
        RootCommand::Show { root, json } => {
            let bytes = read(&root)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&root_json(&bytes, unix_secs(now()))?)?
                );
            } else {
                print!("{}", render_root(&bytes, unix_secs(now()))?);
            }
            Ok(())
        }
    }
}

/// The trust root at `path`, as hosts would take it.
pub(crate) fn load_root(path: &Path) -> anyhow::Result<TrustedRoot> {
    TrustedRoot::install(&read(path)?, unix_secs(now()))
        .with_context(|| format!("{} is not a valid trust root", path.display()))
}
