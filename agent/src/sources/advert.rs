//! The advert as every source hands it on. Plain data with no dependencies, so the fuzz targets
//! can compile the parsers that produce it on their own (`fuzz/fuzz_targets/btsnoop.rs`).

/// How a BLE address is to be read (Bluetooth Core, Vol 6, Part B, 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    Public,
    Random,
}

/// One advertisement as a scanner reported it. Byte fields are exactly as on air.
#[derive(Debug, Clone, PartialEq)]
pub struct Advert {
    /// Most significant byte first, as written `C0:11:22:33:44:55`.
    pub address: [u8; 6],
    pub address_type: AddressType,
    pub rssi: i16,
    /// (company id, data after the company id).
    pub manufacturer_data: Vec<(u16, Vec<u8>)>,
    /// (16-bit service UUID, data).
    pub service_data: Vec<(u16, Vec<u8>)>,
}

/// `AA:BB:CC:DD:EE:FF` (either case) → bytes, most significant first.
pub fn parse_address(s: &str) -> Option<[u8; 6]> {
    let b = s.as_bytes();
    if b.len() != 17 {
        return None;
    }
    let mut out = [0u8; 6];
    for (i, o) in out.iter_mut().enumerate() {
        if i > 0 && b[i * 3 - 1] != b':' {
            return None;
        }
        *o = u8::from_str_radix(std::str::from_utf8(&b[i * 3..i * 3 + 2]).ok()?, 16).ok()?;
    }
    Some(out)
}
