//! Reading and writing secret-bearing files.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use anyhow::{Context, Result, bail};

/// Owner read/write only: these files hold secrets.
const PRIVATE_MODE: u32 = 0o600;

/// Reads head office's gateway secret. Surrounding whitespace (an editor's trailing newline) is
/// not part of the secret; head office's TOML string holds the same characters.
pub fn read_secret(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("reading the gateway secret from {}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        bail!("the gateway secret file {} is empty", path.display());
    }
    Ok(secret.to_string())
}

/// Writes `content` to `path` with mode 0600. Without `force` an existing file is an error and is
/// left untouched (`create_new` makes the check and the creation one step, so there is no race).
/// With `force` the content goes to a temporary file that then replaces `path`, so a crash never
/// leaves a half-written config and a replaced file cannot keep wider permissions than 0600.
pub fn write_private(path: &Path, content: &[u8], force: bool) -> Result<()> {
    if !force {
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_MODE)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "{} already exists; not overwriting it (pass --force to replace it)",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        };
        let result = write_all_synced(&mut file, content, path);
        if result.is_err() {
            // A half-written file would block the retry (no --force), so it goes; best effort.
            let _ = fs::remove_file(path);
        }
        return result;
    }

    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_MODE)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        write_all_synced(&mut file, content, &tmp)?;
        fs::rename(&tmp, path)
            .with_context(|| format!("replacing {} with {}", path.display(), tmp.display()))
    })();
    if result.is_err() {
        // Best effort: the error being returned matters more than a leftover temporary file.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes and flushes to disk: gateways are provisioned and then often powered off abruptly.
fn write_all_synced(file: &mut fs::File, content: &[u8], path: &Path) -> Result<()> {
    file.write_all(content)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
