//! `starlingctl key`: operator signing keys (ed25519), written as PEM files
//! that OpenSSL reads, the private ones 0600.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use starling_task::keys::{public_key_from_pem, public_key_pem, OperatorKeyPair};

use crate::files::write_new;

/// Where operator keys live unless `--dir` says otherwise.
const KEY_DIR_ENV: &str = "STARLING_KEYS";

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an operator signing key: DIR/NAME.key (private, 0600) and
    /// DIR/NAME.pub (public, to list in the trust root).
    New {
        /// A name for the key (a person or a role).
        name: String,
        #[arg(long, env = KEY_DIR_ENV, default_value = ".")]
        dir: PathBuf,
        /// Replace an existing key of that name.
        #[arg(long)]
        force: bool,
    },
    /// The operator keys in a directory, with their ids.
    List {
        #[arg(long, env = KEY_DIR_ENV, default_value = ".")]
        dir: PathBuf,
        /// One JSON object per key.
        #[arg(long)]
        json: bool,
    },
}

/// `starlingctl key ...`
pub fn key(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::New { name, dir, force } => {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                bail!("{name:?}: a key name is a plain file name");
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = OperatorKeyPair::generate()?;
            let private = dir.join(format!("{name}.key"));
            let public = dir.join(format!("{name}.pub"));
            key.write(&private, force)?;
            write_new(&public, public_key_pem(&key.public_key()).as_bytes(), force)?;
            println!(
                "operator key {name}\n  id:          {}\n  private key: {} (keep it to yourself)\n  public key:  {} (list it in the trust root)",
                key.id(),
                private.display(),
                public.display()
            );
            Ok(())
        }
        KeyCommand::List { dir, json } => {
            let mut rows = Vec::new();
            let entries =
                std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
            for entry in entries {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "key" || e == "pub") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    match public_key_from_pem(&text, &path) {
                        Ok(k) => rows.push((
                            path.file_stem()
                                .map(|s| s.to_string_lossy().into_owned())
                                .unwrap_or_default(),
                            starling_task::KeyId::of(&k),
                            path.extension().is_some_and(|e| e == "key"),
                            path,
                        )),
                        Err(e) => eprintln!("skipped: {e}"),
                    }
                }
            }
            rows.sort_by(|a, b| (&a.0, !a.2).cmp(&(&b.0, !b.2)));
            // One row per key: the private file wins over the public one.
            rows.dedup_by(|later, earlier| later.0 == earlier.0 && later.1 == earlier.1);
            if json {
                for (name, id, private, path) in rows {
                    println!(
                        "{}",
                        serde_json::json!({"name": name, "key_id": id.0, "private": private, "file": path})
                    );
                }
                return Ok(());
            }
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED)
                .set_header(["NAME", "KEY ID", "HOLDS", "FILE"]);
            for (name, id, private, path) in rows {
                t.add_row([
                    starling_admin::sanitize(&name),
                    id.0,
                    if private { "private key" } else { "public key" }.into(),
                    path.display().to_string(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
    }
}
