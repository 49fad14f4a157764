//! The pairing URL as a QR code a tablet's camera can read off a terminal.

use qrcode::{EcLevel, QrCode, render::unicode::Dense1x2};

/// Renders `data` with Unicode half blocks (two modules per character cell), light on dark so
/// that it scans on the usual dark terminal, with the quiet zone the standard asks for.
pub fn render(data: &str) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::with_error_correction_level(data, EcLevel::M)?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pairing_url_renders_as_block_characters() {
        let qr = super::render("http://192.168.1.20:8080/pair?code=ABCDEFGH").unwrap();
        assert!(qr.lines().count() > 10);
        assert!(qr.chars().all(|c| " ▀▄█\n".contains(c)));
    }
}
