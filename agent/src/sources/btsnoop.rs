//! btsnoop captures (`btmon -w`, HCI snoop logs) → adverts. Pure: no I/O and no crate
//! dependencies beyond [`super::Advert`], so `fuzz/fuzz_targets/btsnoop.rs` compiles this file
//! on its own. A capture comes from a store's gateway or a laptop: untrusted bytes; a truncated
//! or inconsistent record is counted in [`Capture::malformed`] and never panics.

use super::{AddressType, Advert};

pub const BTSNOOP_MAGIC: &[u8; 8] = b"btsnoop\0";

/// A capture read into memory: adverts with their recorded time, and what was skipped.
#[derive(Debug, Default, PartialEq)]
pub struct Capture {
    /// (ms since the first record, advert), in file order.
    pub adverts: Vec<(u64, Advert)>,
    pub malformed: u64,
}

/// Parses a btsnoop file. `Err(datalink)` for a datalink this reader does not know.
pub fn parse_btsnoop(b: &[u8]) -> Result<Capture, u32> {
    let mut c = Capture::default();
    if b.len() < 16 {
        c.malformed += 1;
        return Ok(c);
    }
    let datalink = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
    if !matches!(datalink, 1001 | 1002 | 2001) {
        return Err(datalink);
    }
    let mut at = 16;
    let mut t0 = None;
    while at < b.len() {
        let Some(hdr) = b.get(at..at + 24) else {
            c.malformed += 1; // truncated record header
            break;
        };
        let incl = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
        let flags = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        let ts_us = i64::from_be_bytes([
            hdr[16], hdr[17], hdr[18], hdr[19], hdr[20], hdr[21], hdr[22], hdr[23],
        ]);
        let Some(data) = b.get(at + 24..at + 24 + incl) else {
            c.malformed += 1; // truncated packet
            break;
        };
        at += 24 + incl;
        // The HCI event bytes (event code, length, parameters), if this packet is an event.
        let event = match datalink {
            // Monitor format: the opcode is the flags' low 16 bits; 3 = event packet.
            2001 => (flags & 0xffff == 3).then_some(data),
            // H4: a packet type byte first; 0x04 = event.
            1002 => data
                .split_first()
                .and_then(|(t, rest)| (*t == 0x04).then_some(rest)),
            // Unencapsulated: flag bit 1 = command or event, bit 0 = received.
            _ => (flags & 0x03 == 0x03).then_some(data),
        };
        let Some(event) = event else { continue };
        let t_ms = (ts_us / 1000).max(0) as u64;
        let t0 = *t0.get_or_insert(t_ms);
        match le_adverts(event) {
            Ok(adverts) => c
                .adverts
                .extend(adverts.into_iter().map(|a| (t_ms.saturating_sub(t0), a))),
            Err(Malformed) => c.malformed += 1,
        }
    }
    Ok(c)
}

/// A truncated or inconsistent HCI event or AD structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed HCI advertising report")]
pub struct Malformed;

/// Decodes an HCI event: LE Advertising Report (0x3E/0x02) and LE Extended Advertising Report
/// (0x3E/0x0D) yield adverts, any other event none; `Err` for a truncated or inconsistent one.
pub fn le_adverts(ev: &[u8]) -> Result<Vec<Advert>, Malformed> {
    let (&code, rest) = ev.split_first().ok_or(Malformed)?;
    let (&len, params) = rest.split_first().ok_or(Malformed)?;
    if code != 0x3e {
        return Ok(Vec::new());
    }
    let params = params.get(..len as usize).ok_or(Malformed)?;
    let (&sub, params) = params.split_first().ok_or(Malformed)?;
    let (&n, mut p) = params.split_first().ok_or(Malformed)?;
    let mut out = Vec::new();
    match sub {
        0x02 => {
            for _ in 0..n {
                // event type, address type, address (LE), data length, data, rssi
                let fixed = p.get(..9).ok_or(Malformed)?;
                let dlen = fixed[8] as usize;
                let data = p.get(9..9 + dlen).ok_or(Malformed)?;
                let rssi = *p.get(9 + dlen).ok_or(Malformed)? as i8;
                if rssi != 127 {
                    out.push(advert(fixed[1], &fixed[2..8], rssi, data)?);
                }
                p = &p[10 + dlen..];
            }
        }
        0x0d => {
            for _ in 0..n {
                // event type (2), address type, address (6), primary phy, secondary phy, sid,
                // tx power, rssi, periodic interval (2), direct address type, direct address (6),
                // data length, data
                let fixed = p.get(..24).ok_or(Malformed)?;
                let dlen = fixed[23] as usize;
                let data = p.get(24..24 + dlen).ok_or(Malformed)?;
                let rssi = fixed[13] as i8;
                // 0xFF: anonymous advertiser (no address to speak of).
                if rssi != 127 && fixed[2] != 0xff {
                    out.push(advert(fixed[2], &fixed[3..9], rssi, data)?);
                }
                p = &p[24 + dlen..];
            }
        }
        _ => {}
    }
    Ok(out)
}

fn advert(addr_type: u8, addr_le: &[u8], rssi: i8, data: &[u8]) -> Result<Advert, Malformed> {
    let mut address = [0u8; 6];
    for (i, b) in addr_le.iter().rev().enumerate() {
        address[i] = *b;
    }
    let mut a = Advert {
        address,
        // 0 public, 1 random, 2/3 their resolved identity forms.
        address_type: if addr_type & 1 == 1 {
            AddressType::Random
        } else {
            AddressType::Public
        },
        rssi: i16::from(rssi),
        manufacturer_data: Vec::new(),
        service_data: Vec::new(),
    };
    let mut d = data;
    while let Some((&len, rest)) = d.split_first() {
        if len == 0 {
            break; // padding: the rest of the data is zeros
        }
        let field = rest.get(..len as usize).ok_or(Malformed)?;
        d = &rest[len as usize..];
        match field.split_first() {
            Some((0xff, v)) if v.len() >= 2 => a
                .manufacturer_data
                .push((u16::from_le_bytes([v[0], v[1]]), v[2..].to_vec())),
            Some((0x16, v)) if v.len() >= 2 => a
                .service_data
                .push((u16::from_le_bytes([v[0], v[1]]), v[2..].to_vec())),
            _ => {}
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Arbitrary bytes, bare or behind a valid btsnoop header: counted, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = le_adverts(&body);
            let mut file = BTSNOOP_MAGIC.to_vec();
            file.extend(1u32.to_be_bytes());
            file.extend(2001u32.to_be_bytes());
            file.extend(&body);
            let c = parse_btsnoop(&file).map_err(|d| TestCaseError::fail(format!("datalink {d}")))?;
            // A record header cut short is counted, not skipped silently.
            if !body.is_empty() && body.len() < 24 {
                prop_assert_eq!(c.malformed, 1);
                prop_assert!(c.adverts.is_empty());
            }
        }
    }
}
