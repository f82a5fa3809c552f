//! mdev types and instances.
//!
//! A parent device (a physical GPU in real life) offers mdev *types*; each instance of a
//! type, created by UUID, consumes some of the parent's resources, so the number of
//! available instances of each type follows from what is left (as the sysfs
//! `available_instances` attribute reports).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use snafu::Snafu;

/// Errors of mdev type and instance management.
#[derive(Debug, Snafu, Clone, PartialEq, Eq)]
#[snafu(visibility(pub))]
pub enum MdevError {
    /// No type has this name.
    #[snafu(display("unknown mdev type '{name}' (known: {known})"))]
    UnknownType {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// The parent lacks the resources for another instance.
    #[snafu(display("no available instances of mdev type '{name}'"))]
    NoInstances {
        /// Type name.
        name: String,
    },
    /// An instance with this UUID exists.
    #[snafu(display("mdev {uuid} already exists"))]
    Exists {
        /// The UUID.
        uuid: Uuid,
    },
    /// No instance with this UUID.
    #[snafu(display("no mdev {uuid}"))]
    NoSuchInstance {
        /// The UUID.
        uuid: Uuid,
    },
    /// A string that is not a UUID.
    #[snafu(display("'{text}' is not a UUID"))]
    BadUuid {
        /// The text.
        text: String,
    },
}

/// A 128-bit UUID, written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(pub u128);

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xffff_ffff_ffff
        )
    }
}

impl FromStr for Uuid {
    type Err = MdevError;

    fn from_str(s: &str) -> Result<Self, MdevError> {
        let bad = || MdevError::BadUuid {
            text: s.to_string(),
        };
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5 || groups.iter().zip(lens).any(|(g, l)| g.len() != l) {
            return Err(bad());
        }
        let hex: String = groups.concat();
        u128::from_str_radix(&hex, 16).map(Uuid).map_err(|_| bad())
    }
}

/// An mdev type, as sysfs `mdev_supported_types/<name>/` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdevType {
    /// Type name (`name`), e.g. `vgpu-64`.
    pub name: String,
    /// Human description (`description`).
    pub description: String,
    /// `device_api`, e.g. `vfio-pci`.
    pub device_api: String,
    /// Parent resource units one instance consumes (for a vGPU: bytes of graphics memory).
    pub cost: u64,
}

/// A parent's mdev types and live instances.
#[derive(Debug, Clone)]
pub struct MdevRegistry {
    capacity: u64,
    types: Vec<MdevType>,
    instances: BTreeMap<Uuid, String>,
}

impl MdevRegistry {
    /// A parent with `capacity` resource units offering `types`.
    pub fn new(capacity: u64, types: Vec<MdevType>) -> Self {
        Self {
            capacity,
            types,
            instances: BTreeMap::new(),
        }
    }

    /// The types offered.
    pub fn types(&self) -> &[MdevType] {
        &self.types
    }

    /// Look a type up by name.
    pub fn find_type(&self, name: &str) -> Result<&MdevType, MdevError> {
        self.types
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| MdevError::UnknownType {
                name: name.to_string(),
                known: self
                    .types
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Resource units used by live instances.
    pub fn used(&self) -> u64 {
        self.instances
            .values()
            .filter_map(|n| self.find_type(n).ok())
            .map(|t| t.cost)
            .sum()
    }

    /// `available_instances` of a type: how many more fit in what is left.
    pub fn available_instances(&self, name: &str) -> Result<u64, MdevError> {
        let t = self.find_type(name)?;
        Ok((self.capacity - self.used()) / t.cost.max(1))
    }

    /// Create an instance (`echo $uuid > create`).
    pub fn create(&mut self, name: &str, uuid: Uuid) -> Result<&MdevType, MdevError> {
        if self.instances.contains_key(&uuid) {
            return Err(MdevError::Exists { uuid });
        }
        if self.available_instances(name)? == 0 {
            return Err(MdevError::NoInstances {
                name: name.to_string(),
            });
        }
        self.instances.insert(uuid, name.to_string());
        self.find_type(name)
    }

    /// Remove an instance (`echo 1 > remove`).
    pub fn remove(&mut self, uuid: Uuid) -> Result<(), MdevError> {
        self.instances
            .remove(&uuid)
            .map(|_| ())
            .ok_or(MdevError::NoSuchInstance { uuid })
    }

    /// Live instances with their type names.
    pub fn instances(&self) -> impl Iterator<Item = (&Uuid, &str)> {
        self.instances.iter().map(|(u, n)| (u, n.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> MdevRegistry {
        let t = |name: &str, cost| MdevType {
            name: name.into(),
            description: String::new(),
            device_api: "vfio-pci".into(),
            cost,
        };
        MdevRegistry::new(1024, vec![t("small", 64), t("big", 512)])
    }

    #[test]
    fn available_instances_follow_resources() {
        let mut r = registry();
        assert_eq!(r.available_instances("small"), Ok(16));
        assert_eq!(r.available_instances("big"), Ok(2));
        r.create("big", Uuid(1)).unwrap();
        assert_eq!(r.available_instances("small"), Ok(8));
        r.create("big", Uuid(2)).unwrap();
        assert_eq!(r.available_instances("big"), Ok(0));
        assert!(matches!(
            r.create("small", Uuid(3)),
            Err(MdevError::NoInstances { .. })
        ));
        r.remove(Uuid(1)).unwrap();
        assert_eq!(r.available_instances("small"), Ok(8));
        assert_eq!(
            r.remove(Uuid(1)),
            Err(MdevError::NoSuchInstance { uuid: Uuid(1) })
        );
        assert!(matches!(
            r.create("big", Uuid(2)),
            Err(MdevError::Exists { .. })
        ));
        assert!(matches!(
            r.create("huge", Uuid(9)),
            Err(MdevError::UnknownType { .. })
        ));
    }

    #[test]
    fn uuid_round_trips() {
        let u: Uuid = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".parse().unwrap();
        assert_eq!(u.to_string(), "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001");
        assert!("83b8f4f2-509f-382f-3c1e".parse::<Uuid>().is_err());
        assert!("83b8f4f2-509f-382f-3c1e-e6bfe0fa100g"
            .parse::<Uuid>()
            .is_err());
    }
}
