//! QR codes for tokens: terminal, SVG and PNG renderings.

use std::io::Write;

use qrcode::render::{svg, unicode};
use qrcode::{EcLevel, QrCode};

/// A QR code at error-correction level M (15% of the code can be damaged
/// and it still scans: the level phone camera apps expect).
pub struct TokenQr {
    code: QrCode,
}

impl TokenQr {
    /// Encodes `data` (byte mode). Fails only if it exceeds version 40.
    pub fn new(data: &str) -> Result<Self, qrcode::types::QrError> {
        QrCode::with_error_correction_level(data, EcLevel::M).map(|code| Self { code })
    }

    /// QR version (1–40).
    pub fn version(&self) -> i16 {
        match self.code.version() {
            qrcode::Version::Normal(v) | qrcode::Version::Micro(v) => v,
        }
    }

    /// Modules per side, without the quiet zone.
    pub fn width(&self) -> usize {
        self.code.width()
    }

    /// Half-block rendering for a terminal (two module rows per text line),
    /// light on dark so it scans from a dark terminal too.
    pub fn to_terminal(&self) -> String {
        self.code
            .render::<unicode::Dense1x2>()
            .dark_color(unicode::Dense1x2::Light)
            .light_color(unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build()
    }

    /// An SVG document.
    pub fn to_svg(&self) -> String {
        self.code.render::<svg::Color<'_>>().min_dimensions(256, 256).quiet_zone(true).build()
    }

    /// A grayscale PNG, `scale` pixels per module, with the 4-module quiet
    /// zone the QR standard asks for.
    pub fn to_png(&self, scale: usize) -> Vec<u8> {
        let scale = scale.max(1);
        let modules = self.code.to_colors();
        let w = self.code.width();
        let side = (w + 8) * scale;
        let mut raw = Vec::with_capacity(side * (side + 1));
        for y in 0..side {
            raw.push(0); // filter: none
            let my = (y / scale).checked_sub(4).filter(|m| *m < w);
            for x in 0..side {
                let mx = (x / scale).checked_sub(4).filter(|m| *m < w);
                let dark = matches!((mx, my), (Some(mx), Some(my)) if modules[my * w + mx] == qrcode::Color::Dark);
                raw.push(if dark { 0 } else { 255 });
            }
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw).expect("writing to a Vec cannot fail");
        let idat = z.finish().expect("writing to a Vec cannot fail");
        let side32 = u32::try_from(side).unwrap_or(u32::MAX);
        let mut ihdr = Vec::with_capacity(13);
        ihdr.extend_from_slice(&side32.to_be_bytes());
        ihdr.extend_from_slice(&side32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grayscale, no interlace
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [(*b"IHDR", &ihdr[..]), (*b"IDAT", &idat[..]), (*b"IEND", &[][..])] {
            png.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
            let start = png.len();
            png.extend_from_slice(&kind);
            png.extend_from_slice(data);
            let crc = crc32fast::hash(&png[start..]);
            png.extend_from_slice(&crc.to_be_bytes());
        }
        png
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_has_valid_structure_and_size() {
        let qr = TokenQr::new("scpc:hello").expect("fits");
        let png = qr.to_png(3);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        let side = u32::from_be_bytes(png[16..20].try_into().expect("4 bytes")) as usize;
        assert_eq!(side, (qr.width() + 8) * 3);
        // IHDR CRC covers type and data.
        let crc = u32::from_be_bytes(png[29..33].try_into().expect("4 bytes"));
        assert_eq!(crc, crc32fast::hash(&png[12..29]));
        assert!(png.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]));
    }

    #[test]
    fn version_grows_with_payload() {
        let small = TokenQr::new(&"a".repeat(20)).expect("fits").version();
        let large = TokenQr::new(&"a".repeat(600)).expect("fits").version();
        assert!(small < large, "{small} vs {large}");
    }
}
