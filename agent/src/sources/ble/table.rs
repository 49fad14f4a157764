//! The BLE source's device table: what BlueZ told us about each device object, so that a
//! `PropertiesChanged` carrying only a new RSSI still becomes a whole advert (address, type, the
//! last manufacturer and service data).
//!
//! Bounded: entries expire after a quiet while, and a hard cap evicts the least recently heard
//! eighth when a storm of random addresses fills it (counted). When the engine is behind, a device
//! waits in the pending queue at most once: a newer advert replaces the waiting one (latest wins,
//! counted) instead of queueing behind it.

use std::collections::{HashMap, VecDeque};

use super::signals::{DeviceProps, address_from_path};
use crate::sources::{AddressType, Advert};

#[derive(Debug)]
struct Device {
    address: [u8; 6],
    address_type: AddressType,
    rssi: Option<i16>,
    manufacturer_data: Vec<(u16, Vec<u8>)>,
    service_data: Vec<(u16, Vec<u8>)>,
    /// Agent clock, ms, of the last advert (or of creation).
    last_ms: u64,
    pending: bool,
}

/// What [`DeviceTable::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The signal was an advert and the device's advert is complete (address and RSSI known).
    Advert,
    /// Stored, but nothing to send (no RSSI yet, or not an advert).
    Stored,
    /// No address in the signal or the path: ignored.
    Unusable,
}

#[derive(Debug)]
pub struct DeviceTable {
    devices: HashMap<Box<str>, Device>,
    pending: VecDeque<Box<str>>,
    cap: usize,
    ttl_ms: u64,
    /// Devices evicted by the cap since creation.
    pub evicted: u64,
    /// Devices forgotten after `ttl_ms` of silence since creation.
    pub expired: u64,
}

impl DeviceTable {
    pub fn new(cap: usize, ttl_ms: u64) -> Self {
        Self {
            devices: HashMap::new(),
            pending: VecDeque::new(),
            cap: cap.max(8),
            ttl_ms,
            evicted: 0,
            expired: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Merges one signal's properties into the device at `path`.
    pub fn apply(&mut self, path: &str, props: DeviceProps, now_ms: u64) -> Applied {
        let is_advert = props.is_advert();
        if !self.devices.contains_key(path) {
            let Some(address) = props.address.or_else(|| address_from_path(path)) else {
                return Applied::Unusable;
            };
            if self.devices.len() >= self.cap {
                self.evict();
            }
            self.devices.insert(
                path.into(),
                Device {
                    address,
                    // BlueZ names the type in every InterfacesAdded; a device first met through a
                    // PropertiesChanged (it predates us and was evicted) is assumed public.
                    address_type: props.address_type.unwrap_or(AddressType::Public),
                    rssi: None,
                    manufacturer_data: Vec::new(),
                    service_data: Vec::new(),
                    last_ms: now_ms,
                    pending: false,
                },
            );
        }
        let Some(d) = self.devices.get_mut(path) else {
            return Applied::Unusable;
        };
        if let Some(a) = props.address {
            d.address = a;
        }
        if let Some(t) = props.address_type {
            d.address_type = t;
        }
        if let Some(r) = props.rssi {
            d.rssi = Some(r);
        }
        if props.rssi_invalidated {
            d.rssi = None;
        }
        if let Some(m) = props.manufacturer_data {
            d.manufacturer_data = m;
        }
        if let Some(s) = props.service_data {
            d.service_data = s;
        }
        if is_advert {
            d.last_ms = now_ms;
        }
        if is_advert && d.rssi.is_some() {
            Applied::Advert
        } else {
            Applied::Stored
        }
    }

    /// Records what BlueZ already knew at startup, without treating it as fresh adverts.
    pub fn seed(&mut self, path: &str, mut props: DeviceProps, now_ms: u64) {
        // A cached RSSI may be minutes old: only a new advert may set it.
        props.rssi = None;
        self.apply(path, props, now_ms);
    }

    /// The device's current advert, `rssi_offset` applied.
    pub fn advert(&self, path: &str, rssi_offset: i16) -> Option<(Advert, u64)> {
        let d = self.devices.get(path)?;
        let rssi = d.rssi?;
        Some((
            Advert {
                address: d.address,
                address_type: d.address_type,
                rssi: rssi.saturating_add(rssi_offset),
                manufacturer_data: d.manufacturer_data.clone(),
                service_data: d.service_data.clone(),
            },
            d.last_ms,
        ))
    }

    pub fn remove(&mut self, path: &str) {
        self.devices.remove(path);
    }

    /// Forgets every device (the adapter or bluetoothd went away: its object paths are gone).
    pub fn clear(&mut self) {
        self.devices.clear();
        self.pending.clear();
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Queues the device's advert for when the engine has room. Returns false when one was
    /// already waiting (the newer one replaces it: latest wins).
    pub fn mark_pending(&mut self, path: &str) -> bool {
        let Some(d) = self.devices.get_mut(path) else {
            return true;
        };
        if d.pending {
            return false;
        }
        d.pending = true;
        self.pending.push_back(path.into());
        if self.pending.len() > 2 * self.cap {
            // Stale entries of evicted devices: drop them so the queue stays bounded.
            let devices = &self.devices;
            self.pending
                .retain(|p| devices.get(p).is_some_and(|d| d.pending));
        }
        true
    }

    /// The oldest waiting device's path, if any, without removing it.
    pub fn front_pending(&mut self) -> Option<&str> {
        while let Some(p) = self.pending.front() {
            if self.devices.get(p).is_some_and(|d| d.pending) {
                return self.pending.front().map(|p| &**p);
            }
            self.pending.pop_front();
        }
        None
    }

    /// Removes the front of the pending queue (after it was delivered).
    pub fn pop_pending(&mut self) {
        if let Some(p) = self.pending.pop_front()
            && let Some(d) = self.devices.get_mut(&p)
        {
            d.pending = false;
        }
    }

    /// Forgets devices silent for longer than the ttl. Returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let ttl = self.ttl_ms;
        let before = self.devices.len();
        self.devices
            .retain(|_, d| d.pending || now_ms.saturating_sub(d.last_ms) <= ttl);
        let n = before - self.devices.len();
        self.expired += n as u64;
        n
    }

    /// Evicts the least recently heard eighth: amortised O(log n) per insert under a storm,
    /// instead of a scan per new address.
    fn evict(&mut self) {
        let mut ages: Vec<(u64, Box<str>)> = self
            .devices
            .iter()
            .map(|(k, d)| (d.last_ms, k.clone()))
            .collect();
        let n = (self.cap / 8).max(1).min(ages.len());
        if n == 0 {
            return;
        }
        ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
        for (_, k) in ages.into_iter().take(n) {
            self.devices.remove(&k);
        }
        self.evicted += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(addr: u8, rssi: Option<i16>) -> DeviceProps {
        DeviceProps {
            address: Some([0xc0, 0, 0, 0, 0, addr]),
            address_type: Some(AddressType::Random),
            rssi,
            manufacturer_data: Some(vec![(0x004c, vec![addr])]),
            ..DeviceProps::default()
        }
    }

    #[test]
    fn an_rssi_only_update_becomes_a_whole_advert_with_the_offset() {
        let mut t = DeviceTable::new(100, 60_000);
        assert_eq!(t.apply("/d/1", props(1, Some(-60)), 0), Applied::Advert);
        let update = DeviceProps {
            rssi: Some(-70),
            ..DeviceProps::default()
        };
        assert_eq!(t.apply("/d/1", update, 10), Applied::Advert);
        let (a, at) = t.advert("/d/1", 5).unwrap();
        assert_eq!((a.rssi, at), (-65, 10));
        assert_eq!(a.manufacturer_data, vec![(0x004c, vec![1])]);
        assert_eq!(a.address_type, AddressType::Random);
    }

    #[test]
    fn seeded_devices_send_nothing_until_heard() {
        let mut t = DeviceTable::new(100, 60_000);
        t.seed("/d/1", props(1, Some(-40)), 0);
        assert!(t.advert("/d/1", 0).is_none());
        let name_only = DeviceProps::default();
        assert_eq!(t.apply("/d/1", name_only, 5), Applied::Stored);
    }

    #[test]
    fn a_storm_of_random_addresses_stays_under_the_cap_and_counts_evictions() {
        let mut t = DeviceTable::new(1000, 3_600_000);
        for i in 0..100_000u32 {
            let b = i.to_be_bytes();
            let p = DeviceProps {
                address: Some([0x40, 0, b[0], b[1], b[2], b[3]]),
                rssi: Some(-80),
                ..DeviceProps::default()
            };
            t.apply(&format!("/d/{i}"), p, u64::from(i));
        }
        assert!(t.len() <= 1000, "{}", t.len());
        assert!(t.evicted >= 99_000, "{}", t.evicted);
        // The newest survive.
        assert!(t.advert("/d/99999", 0).is_some());
        assert!(t.advert("/d/0", 0).is_none());
    }

    #[test]
    fn quiet_devices_expire() {
        let mut t = DeviceTable::new(100, 1_000);
        t.apply("/d/1", props(1, Some(-60)), 0);
        t.apply("/d/2", props(2, Some(-60)), 900);
        assert_eq!(t.expire(1_500), 1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.expired, 1);
    }

    #[test]
    fn a_waiting_device_waits_once_and_its_latest_advert_wins() {
        let mut t = DeviceTable::new(100, 60_000);
        t.apply("/d/1", props(1, Some(-60)), 0);
        t.apply("/d/2", props(2, Some(-60)), 0);
        assert!(t.mark_pending("/d/1"));
        assert!(t.mark_pending("/d/2"));
        t.apply("/d/1", props(1, Some(-50)), 5);
        assert!(!t.mark_pending("/d/1"), "second advert coalesces");
        let p = t.front_pending().unwrap().to_string();
        assert_eq!(p, "/d/1");
        assert_eq!(t.advert(&p, 0).unwrap().0.rssi, -50);
        t.pop_pending();
        assert_eq!(t.front_pending(), Some("/d/2"));
        t.pop_pending();
        assert!(!t.has_pending());
        // Delivered: it may wait again.
        assert!(t.mark_pending("/d/1"));
    }

    #[test]
    fn a_device_without_an_address_anywhere_is_unusable() {
        let mut t = DeviceTable::new(100, 60_000);
        let p = DeviceProps {
            rssi: Some(-50),
            ..DeviceProps::default()
        };
        assert_eq!(
            t.apply("/org/bluez/hci0/weird", p.clone(), 0),
            Applied::Unusable
        );
        assert_eq!(
            t.apply("/org/bluez/hci0/dev_11_22_33_44_55_66", p, 0),
            Applied::Advert
        );
    }
}
