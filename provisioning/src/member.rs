//! Member devices from the command line, as a phone would be one: `member-device` makes a key
//! pair, registers its public key at head office and keeps the private key in a file (mode
//! 0600); `member-code` prints the device's current signed code and renders it as a QR code
//! (SVG or PNG), for kiosks, tests and field checks.
//!
//! Key file (JSON): `{"member_id", "alg", "key_id", "pkcs8": "<hex of the PKCS#8 DER>"}`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use instore_protocol::member_code::{Algorithm, DeviceSigner};
use qrcode::{EcLevel, QrCode, Version};
use serde::{Deserialize, Serialize};

use crate::{files, hq};

#[derive(Debug, Serialize, Deserialize)]
struct KeyFile {
    member_id: String,
    alg: Algorithm,
    key_id: String,
    pkcs8: String,
}

/// Pixels per QR module in a PNG, and the quiet zone around it (modules).
const PNG_SCALE: usize = 8;
const QUIET: usize = 4;

/// Makes a device key for `member`, registers it at `hq_url` and writes the key file.
pub fn create_device(
    member: &str,
    alg: Algorithm,
    hq_url: &str,
    admin: &str,
    out: &Path,
    force: bool,
) -> Result<String> {
    if out.exists() && !force {
        bail!("{} exists; pass --force to replace it", out.display());
    }
    let device = DeviceSigner::generate(alg).context("making the device key")?;
    let answer = hq::register_device(hq_url, admin, member, alg, &device.public_key())?;
    let key_id = hex::encode(device.key_id());
    if answer["key_id"].as_str() != Some(key_id.as_str()) {
        bail!("head office answered with another key id: {answer}");
    }
    let file = KeyFile {
        member_id: member.to_string(),
        alg,
        key_id: key_id.clone(),
        pkcs8: hex::encode(device.pkcs8()),
    };
    let json = serde_json::to_vec_pretty(&file).context("writing the key file")?;
    files::write_private(out, &json, force)?;
    Ok(key_id)
}

/// The device in a key file.
pub fn load_device(path: &Path) -> Result<DeviceSigner> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: KeyFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a member key file", path.display()))?;
    let der = hex::decode(&file.pkcs8)
        .with_context(|| format!("{}: pkcs8 is not hex", path.display()))?;
    let device = DeviceSigner::from_pkcs8(file.alg, &der)
        .with_context(|| format!("{}: not a usable {} key", path.display(), file.alg.as_str()))?;
    if hex::encode(device.key_id()) != file.key_id {
        bail!("{}: the key does not match its key_id", path.display());
    }
    Ok(device)
}

/// The QR code of a member code: alphanumeric mode, error correction M, version 5 at most.
pub fn qr(code: &str) -> Result<QrCode> {
    let qr = QrCode::with_error_correction_level(code.as_bytes(), EcLevel::M)
        .context("encoding the QR code")?;
    match qr.version() {
        Version::Normal(v) if v <= 5 => Ok(qr),
        v => bail!("the code needs QR {v:?}, more than version 5"),
    }
}

pub fn svg(qr: &QrCode) -> String {
    qr.render::<qrcode::render::svg::Color<'_>>()
        .quiet_zone(true)
        .min_dimensions(240, 240)
        .build()
}

pub fn png(qr: &QrCode) -> Vec<u8> {
    let modules = qr.width();
    let colors = qr.to_colors();
    let side = (modules + 2 * QUIET) * PNG_SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c == qrcode::Color::Dark {
            let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
            for y in my * PNG_SCALE..(my + 1) * PNG_SCALE {
                pixels[y * side + mx * PNG_SCALE..y * side + (mx + 1) * PNG_SCALE].fill(0);
            }
        }
    }
    crate::png::greyscale(side as u32, side as u32, &pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_fits_version_5_m_and_renders() {
        let d = DeviceSigner::generate(Algorithm::Es256).unwrap();
        let code = d.code_at(1_770_000_000_000).unwrap();
        let q = qr(&code).unwrap();
        assert!(
            matches!(q.version(), Version::Normal(v) if v <= 5),
            "{:?}",
            q.version()
        );
        assert!(svg(&q).starts_with("<?xml"));
        let p = png(&q);
        let side = ((q.width() + 2 * QUIET) * PNG_SCALE) as u32;
        assert_eq!(&p[16..20], &side.to_be_bytes());
    }
}
