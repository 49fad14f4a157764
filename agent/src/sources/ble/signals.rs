//! Decoding BlueZ's D-Bus signals straight from the message bodies, without a round trip.
//!
//! In: `InterfacesAdded` / `InterfacesRemoved` (ObjectManager at `/`), `PropertiesChanged` on
//! `org.bluez.Device1` and `org.bluez.Adapter1`, `NameOwnerChanged` for `org.bluez`, and the reply
//! to `GetManagedObjects`. Out: [`Signal`]s carrying only the device properties an advert needs.
//! Anything malformed decodes to `None` (the caller counts it): a misbehaving daemon must not crash
//! the agent.

use dbus::{
    Message,
    arg::{ArgType, Iter, ReadAll, TypeMismatchError},
};

use crate::sources::AddressType;

pub const DEVICE_IFACE: &str = "org.bluez.Device1";
pub const ADAPTER_IFACE: &str = "org.bluez.Adapter1";
const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// The advert-relevant properties one signal carried (`None`: not in this signal).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceProps {
    pub address: Option<[u8; 6]>,
    pub address_type: Option<AddressType>,
    pub rssi: Option<i16>,
    pub manufacturer_data: Option<Vec<(u16, Vec<u8>)>>,
    pub service_data: Option<Vec<(u16, Vec<u8>)>>,
    /// BlueZ invalidated `RSSI`: the device is no longer in range (not an advert).
    pub rssi_invalidated: bool,
}

impl DeviceProps {
    /// Whether this signal reports a received advertisement (RSSI or advertised data).
    pub fn is_advert(&self) -> bool {
        self.rssi.is_some() || self.manufacturer_data.is_some() || self.service_data.is_some()
    }
}

/// A signal that matters to the BLE source.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// A device object appeared (its first advert, with all its properties).
    DeviceAdded {
        path: String,
        props: DeviceProps,
    },
    DeviceChanged {
        path: String,
        props: DeviceProps,
    },
    DeviceRemoved {
        path: String,
    },
    /// The adapter object itself was removed (unplugged, bluetoothd stopped).
    AdapterRemoved {
        path: String,
    },
    /// The adapter object appeared (plugged in, bluetoothd started).
    AdapterAdded {
        path: String,
    },
    /// `Discovering` / `Powered` changed on an adapter.
    AdapterChanged {
        path: String,
        discovering: Option<bool>,
        powered: Option<bool>,
    },
    /// `org.bluez` got a new owner (bluetoothd restarted) or lost it (`has_owner` false).
    BluezOwner {
        has_owner: bool,
    },
}

/// Classifies and decodes one signal message; `Ok(None)` for signals the source ignores,
/// `Err` for a malformed body.
pub fn decode(msg: &Message) -> Result<Option<Signal>, DecodeError> {
    let (Some(iface), Some(member)) = (msg.interface(), msg.member()) else {
        return Ok(None);
    };
    let mut it = msg.iter_init();
    match (&*iface, &*member) {
        (PROPERTIES, "PropertiesChanged") => {
            let Some(path) = msg.path() else {
                return Ok(None);
            };
            let target: &str = it.read()?;
            match target {
                DEVICE_IFACE => {
                    let mut props = read_props(&mut it)?;
                    it.next();
                    props.rssi_invalidated = invalidated_rssi(&mut it);
                    Ok(Some(Signal::DeviceChanged {
                        path: path.to_string(),
                        props,
                    }))
                }
                ADAPTER_IFACE => {
                    let (discovering, powered) = read_adapter_props(&mut it)?;
                    Ok(Some(Signal::AdapterChanged {
                        path: path.to_string(),
                        discovering,
                        powered,
                    }))
                }
                _ => Ok(None),
            }
        }
        (OBJECT_MANAGER, "InterfacesAdded") => {
            let path: dbus::Path = it.read()?;
            let mut ifaces = it.recurse(ArgType::Array).ok_or(DecodeError::Shape)?;
            while ifaces.arg_type() == ArgType::DictEntry {
                let mut entry = ifaces
                    .recurse(ArgType::DictEntry)
                    .ok_or(DecodeError::Shape)?;
                let name: &str = entry.read()?;
                match name {
                    DEVICE_IFACE => {
                        let props = read_props(&mut entry)?;
                        return Ok(Some(Signal::DeviceAdded {
                            path: path.to_string(),
                            props,
                        }));
                    }
                    ADAPTER_IFACE => {
                        return Ok(Some(Signal::AdapterAdded {
                            path: path.to_string(),
                        }));
                    }
                    _ => {}
                }
                ifaces.next();
            }
            Ok(None)
        }
        (OBJECT_MANAGER, "InterfacesRemoved") => {
            let path: dbus::Path = it.read()?;
            let names: Vec<&str> = it.read()?;
            let path = path.to_string();
            if names.contains(&ADAPTER_IFACE) {
                Ok(Some(Signal::AdapterRemoved { path }))
            } else if names.contains(&DEVICE_IFACE) {
                Ok(Some(Signal::DeviceRemoved { path }))
            } else {
                Ok(None)
            }
        }
        ("org.freedesktop.DBus", "NameOwnerChanged") => {
            let name: &str = it.read()?;
            let _old: &str = it.read()?;
            let new: &str = it.read()?;
            if name == "org.bluez" {
                Ok(Some(Signal::BluezOwner {
                    has_owner: !new.is_empty(),
                }))
            } else {
                Ok(None)
            }
        }
        _ => Ok(None),
    }
}

/// A signal body that does not have the shape BlueZ documents.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Type(#[from] TypeMismatchError),
    #[error("expected a container in the signal body")]
    Shape,
}

/// Walks an `a{sv}` property dictionary, handing each (name, variant) to `f`; entries that are
/// not string-keyed variants are skipped, a body that is not a dictionary is a shape error.
fn each_prop<'a>(
    it: &mut Iter<'a>,
    mut f: impl FnMut(&str, &mut Iter<'a>),
) -> Result<(), DecodeError> {
    let Some(mut dict) = it.recurse(ArgType::Array) else {
        return Err(DecodeError::Shape);
    };
    while dict.arg_type() == ArgType::DictEntry {
        if let Some(mut entry) = dict.recurse(ArgType::DictEntry) {
            let key: &str = entry.read()?;
            if let Some(mut var) = entry.recurse(ArgType::Variant) {
                f(key, &mut var);
            }
        }
        dict.next();
    }
    Ok(())
}

/// Reads an `a{sv}` of Device1 properties, keeping only what an advert needs.
fn read_props(it: &mut Iter) -> Result<DeviceProps, DecodeError> {
    let mut props = DeviceProps::default();
    each_prop(it, |key, var| match key {
        "Address" => props.address = var.get::<&str>().and_then(parse_address),
        "AddressType" => {
            props.address_type = match var.get::<&str>() {
                Some("random") => Some(AddressType::Random),
                Some("public") => Some(AddressType::Public),
                _ => None,
            }
        }
        "RSSI" => props.rssi = var.get::<i16>(),
        "ManufacturerData" => props.manufacturer_data = read_data_dict(var, key_u16),
        "ServiceData" => props.service_data = read_data_dict(var, key_uuid16),
        _ => {}
    })?;
    Ok(props)
}

fn read_adapter_props(it: &mut Iter) -> Result<(Option<bool>, Option<bool>), DecodeError> {
    let (mut discovering, mut powered) = (None, None);
    each_prop(it, |key, var| match key {
        "Discovering" => discovering = var.get::<bool>(),
        "Powered" => powered = var.get::<bool>(),
        _ => {}
    })?;
    Ok((discovering, powered))
}

fn invalidated_rssi(it: &mut Iter) -> bool {
    it.get::<Vec<&str>>()
        .is_some_and(|names| names.contains(&"RSSI"))
}

fn key_u16(it: &mut Iter) -> Option<u16> {
    it.get::<u16>()
}

/// A 128-bit UUID string on the Bluetooth base UUID → its 16-bit short form. Other UUIDs are not
/// representable in an [`Advert`](crate::sources::Advert) and are skipped.
fn key_uuid16(it: &mut Iter) -> Option<u16> {
    uuid16(it.get::<&str>()?)
}

pub fn uuid16(s: &str) -> Option<u16> {
    let s = s.as_bytes();
    if s.len() != 36 || !s[0..4].eq_ignore_ascii_case(b"0000") {
        return None;
    }
    if !s[8..].eq_ignore_ascii_case(b"-0000-1000-8000-00805f9b34fb") {
        return None;
    }
    u16::from_str_radix(std::str::from_utf8(&s[4..8]).ok()?, 16).ok()
}

/// Reads a variant holding `a{qv}` or `a{sv}` whose values are `ay`. A variant of another type
/// (python-dbusmock's empty default is `aa{qv}`) reads as empty.
fn read_data_dict(
    var: &mut Iter,
    key: fn(&mut Iter) -> Option<u16>,
) -> Option<Vec<(u16, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut arr = var.recurse(ArgType::Array)?;
    while arr.arg_type() == ArgType::DictEntry {
        if let Some(mut entry) = arr.recurse(ArgType::DictEntry)
            && let Some(k) = key(&mut entry)
        {
            entry.next();
            if let Some(mut v) = entry.recurse(ArgType::Variant)
                && let Some(bytes) = v.get::<&[u8]>()
            {
                out.push((k, bytes.to_vec()));
            }
        }
        arr.next();
    }
    Some(out)
}

pub use crate::sources::parse_address;

/// The address BlueZ encodes in a device object path (`.../dev_AA_BB_CC_DD_EE_FF`), for a device
/// whose `Address` property was never seen (it existed before the source started, or was evicted).
pub fn address_from_path(path: &str) -> Option<[u8; 6]> {
    let tail = path.rsplit('/').next()?.strip_prefix("dev_")?;
    parse_address(&tail.replace('_', ":"))
}

/// The reply to `GetManagedObjects`: every device object under every adapter, with its props.
#[derive(Debug, Default)]
pub struct ManagedDevices(pub Vec<(String, DeviceProps)>);

impl ReadAll for ManagedDevices {
    fn read(it: &mut Iter) -> Result<Self, TypeMismatchError> {
        let mut out = Vec::new();
        let Some(mut objects) = it.recurse(ArgType::Array) else {
            // Not an array: let the library describe the mismatch.
            it.read::<Vec<u8>>()?;
            return Ok(ManagedDevices::default());
        };
        while objects.arg_type() == ArgType::DictEntry {
            if let Some(mut obj) = objects.recurse(ArgType::DictEntry) {
                let path: dbus::Path = obj.read()?;
                if let Some(mut ifaces) = obj.recurse(ArgType::Array) {
                    while ifaces.arg_type() == ArgType::DictEntry {
                        if let Some(mut entry) = ifaces.recurse(ArgType::DictEntry) {
                            let name: &str = entry.read()?;
                            if name == DEVICE_IFACE {
                                // One malformed device must not hide the others.
                                if let Ok(p) = read_props(&mut entry) {
                                    out.push((path.to_string(), p));
                                }
                            }
                        }
                        ifaces.next();
                    }
                }
            }
            objects.next();
        }
        Ok(ManagedDevices(out))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use dbus::arg::{PropMap, RefArg, Variant};

    use super::*;

    fn v<T: RefArg + 'static>(x: T) -> Variant<Box<dyn RefArg>> {
        Variant(Box::new(x))
    }

    fn device_props() -> PropMap {
        let mut mfr: HashMap<u16, Variant<Box<dyn RefArg>>> = HashMap::new();
        mfr.insert(0x004c, v(vec![0x02u8, 0x15, 1, 2, 3]));
        let mut svc: HashMap<String, Variant<Box<dyn RefArg>>> = HashMap::new();
        svc.insert(
            "0000feaa-0000-1000-8000-00805f9b34fb".into(),
            v(vec![0x00u8, 0xee]),
        );
        svc.insert(
            "12345678-1234-1234-1234-123456789abc".into(),
            v(vec![0x01u8]),
        );
        let mut p = PropMap::new();
        p.insert("Address".into(), v("C0:11:22:33:44:55".to_string()));
        p.insert("AddressType".into(), v("random".to_string()));
        p.insert("RSSI".into(), v(-61i16));
        p.insert("Name".into(), v("phone".to_string()));
        p.insert("ManufacturerData".into(), v(mfr));
        p.insert("ServiceData".into(), v(svc));
        p
    }

    #[test]
    fn interfaces_added_carries_the_first_advert() {
        let mut ifaces: HashMap<String, PropMap> = HashMap::new();
        ifaces.insert(DEVICE_IFACE.into(), device_props());
        let msg = Message::new_signal("/", OBJECT_MANAGER, "InterfacesAdded")
            .unwrap()
            .append2(
                dbus::Path::new("/org/bluez/hci0/dev_C0_11_22_33_44_55").unwrap(),
                ifaces,
            );
        let Some(Signal::DeviceAdded { path, props }) = decode(&msg).unwrap() else {
            panic!("not a device");
        };
        assert_eq!(path, "/org/bluez/hci0/dev_C0_11_22_33_44_55");
        assert_eq!(props.address, Some([0xc0, 0x11, 0x22, 0x33, 0x44, 0x55]));
        assert_eq!(props.address_type, Some(AddressType::Random));
        assert_eq!(props.rssi, Some(-61));
        assert_eq!(
            props.manufacturer_data,
            Some(vec![(0x004c, vec![0x02, 0x15, 1, 2, 3])])
        );
        // The 128-bit vendor UUID cannot be carried as a 16-bit one: skipped, not mangled.
        assert_eq!(props.service_data, Some(vec![(0xfeaa, vec![0x00, 0xee])]));
        assert!(props.is_advert());
    }

    #[test]
    fn properties_changed_with_rssi_only_is_an_advert_and_invalidation_is_not() {
        let mut p = PropMap::new();
        p.insert("RSSI".into(), v(-70i16));
        let msg = Message::new_signal(
            "/org/bluez/hci0/dev_C0_11_22_33_44_55",
            PROPERTIES,
            "PropertiesChanged",
        )
        .unwrap()
        .append3(DEVICE_IFACE, p, Vec::<String>::new());
        let Some(Signal::DeviceChanged { props, .. }) = decode(&msg).unwrap() else {
            panic!("not a change");
        };
        assert_eq!(props.rssi, Some(-70));
        assert!(props.is_advert() && !props.rssi_invalidated);

        let msg = Message::new_signal("/org/bluez/hci0/dev_1", PROPERTIES, "PropertiesChanged")
            .unwrap()
            .append3(DEVICE_IFACE, PropMap::new(), vec!["RSSI".to_string()]);
        let Some(Signal::DeviceChanged { props, .. }) = decode(&msg).unwrap() else {
            panic!("not a change");
        };
        assert!(!props.is_advert() && props.rssi_invalidated);
    }

    #[test]
    fn wrongly_typed_values_are_ignored_not_fatal() {
        let mut p = PropMap::new();
        p.insert("RSSI".into(), v("loud".to_string()));
        // python-dbusmock's default: an array of a{qv} rather than an a{qv}.
        p.insert(
            "ManufacturerData".into(),
            v(Vec::<HashMap<u16, Variant<Box<dyn RefArg>>>>::new()),
        );
        p.insert("Address".into(), v("not an address".to_string()));
        let msg = Message::new_signal("/org/bluez/hci0/dev_1", PROPERTIES, "PropertiesChanged")
            .unwrap()
            .append3(DEVICE_IFACE, p, Vec::<String>::new());
        let Some(Signal::DeviceChanged { props, .. }) = decode(&msg).unwrap() else {
            panic!("not a change");
        };
        assert_eq!(props.rssi, None);
        assert_eq!(props.address, None);
        assert_eq!(props.manufacturer_data.as_deref(), Some(&[][..]));
    }

    #[test]
    fn a_body_of_the_wrong_shape_is_an_error() {
        let msg = Message::new_signal("/", OBJECT_MANAGER, "InterfacesAdded")
            .unwrap()
            .append1(7u32);
        assert!(decode(&msg).is_err());
        let msg = Message::new_signal("/x", PROPERTIES, "PropertiesChanged")
            .unwrap()
            .append2(DEVICE_IFACE, 7u32);
        assert!(decode(&msg).is_err());
    }

    #[test]
    fn owner_changes_and_removals_are_classified() {
        let msg = Message::new_signal(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameOwnerChanged",
        )
        .unwrap()
        .append3("org.bluez", ":1.5", "");
        assert_eq!(
            decode(&msg).unwrap(),
            Some(Signal::BluezOwner { has_owner: false })
        );
        let msg = Message::new_signal("/", OBJECT_MANAGER, "InterfacesRemoved")
            .unwrap()
            .append2(
                dbus::Path::new("/org/bluez/hci0").unwrap(),
                vec![ADAPTER_IFACE.to_string()],
            );
        assert_eq!(
            decode(&msg).unwrap(),
            Some(Signal::AdapterRemoved {
                path: "/org/bluez/hci0".into()
            })
        );
    }

    #[test]
    fn addresses_parse_from_properties_and_paths() {
        assert_eq!(
            address_from_path("/org/bluez/hci1/dev_0A_0B_0C_0D_0E_FF"),
            Some([0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0xff])
        );
        assert_eq!(address_from_path("/org/bluez/hci1"), None);
        assert_eq!(parse_address("0A-0B-0C-0D-0E-FF"), None);
        assert_eq!(uuid16("0000FEAA-0000-1000-8000-00805F9B34FB"), Some(0xfeaa));
    }
}
