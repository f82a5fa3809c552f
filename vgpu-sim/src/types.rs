//! The mdev types a vGPU parent offers, and the parent's resource accounting.
//!
//! | type       | graphics memory | aperture (BAR2) |
//! |------------|-----------------|-----------------|
//! | `vgpu-64`  | 64 MiB          | 64 MiB          |
//! | `vgpu-512` | 512 MiB         | 512 MiB         |
//!
//! An instance costs its graphics memory; a [`VgpuParent`] (2 GiB by default) offers as many
//! instances as fit in what is left, through [`mdev_core::MdevRegistry`].

use mdev_core::{MdevError, MdevRegistry, MdevType, Uuid};
use pci_config_replay::ConfigParams;

use crate::regs::{BAR0_SIZE, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, MSIX_VECTORS};

/// PCI vendor ID of every vGPU (Intel, as GVT-g's vGPUs report).
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device ID of every vGPU.
pub const DEVICE_ID: u16 = 0x1912;
/// PCI revision of every vGPU.
pub const REVISION: u8 = 0x06;
/// Default graphics memory of a parent: 2 GiB.
pub const DEFAULT_PARENT_GMEM: u64 = 2 << 30;

/// One vGPU type: its name, description and graphics memory size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VgpuType {
    /// mdev type name (`mdev_supported_types/<name>`).
    pub name: &'static str,
    /// Human description.
    pub description: &'static str,
    /// Graphics memory bytes (a power of two, also the aperture size).
    pub gmem_size: u64,
    /// PCI subsystem ID, distinct per type.
    pub subsystem_id: u16,
}

/// `vgpu-64`: 64 MiB of graphics memory.
pub const VGPU_64: VgpuType = VgpuType {
    name: "vgpu-64",
    description: "simulated vGPU, 64 MiB graphics memory, 1 render engine, 1 display plane",
    gmem_size: 64 << 20,
    subsystem_id: 0x0064,
};

/// `vgpu-512`: 512 MiB of graphics memory.
pub const VGPU_512: VgpuType = VgpuType {
    name: "vgpu-512",
    description: "simulated vGPU, 512 MiB graphics memory, 1 render engine, 1 display plane",
    gmem_size: 512 << 20,
    subsystem_id: 0x0512,
};

/// Every type, in the order a parent lists them.
pub const VGPU_TYPES: [VgpuType; 2] = [VGPU_64, VGPU_512];

impl VgpuType {
    /// Look a type up by name; the error lists the known names.
    pub fn by_name(name: &str) -> Result<VgpuType, MdevError> {
        VGPU_TYPES
            .iter()
            .copied()
            .find(|t| t.name == name)
            .ok_or_else(|| MdevError::UnknownType {
                name: name.to_string(),
                known: VGPU_TYPES.map(|t| t.name).join(", "),
            })
    }

    /// Number of 4 KiB pages of graphics memory.
    pub fn gmem_pages(&self) -> u64 {
        self.gmem_size / crate::regs::PAGE_SIZE
    }

    /// The type as mdev-core describes it (cost = graphics memory bytes).
    pub fn mdev_type(&self) -> MdevType {
        MdevType {
            name: self.name.to_string(),
            description: self.description.to_string(),
            device_api: "vfio-pci".to_string(),
            cost: self.gmem_size,
        }
    }

    /// The configuration-space parameters of an instance: BAR0 of `regs::BAR0_SIZE`, BAR2
    /// the size of graphics memory, MSI-X table and PBA where `regs` puts them.
    pub fn config_params(&self) -> ConfigParams {
        ConfigParams {
            vendor_id: VENDOR_ID,
            device_id: DEVICE_ID,
            subsystem_vendor_id: VENDOR_ID,
            subsystem_id: self.subsystem_id,
            revision: REVISION,
            bar0_size: BAR0_SIZE,
            bar2_size: self.gmem_size,
            msix_table_size: MSIX_VECTORS,
            msix_table_offset: MSIX_TABLE_OFFSET,
            msix_pba_offset: MSIX_PBA_OFFSET,
        }
    }
}

/// A parent device: a pool of graphics memory shared by its vGPU instances.
#[derive(Debug, Clone)]
pub struct VgpuParent {
    registry: MdevRegistry,
}

impl Default for VgpuParent {
    fn default() -> Self {
        Self::new(DEFAULT_PARENT_GMEM)
    }
}

impl VgpuParent {
    /// A parent with `total_gmem` bytes of graphics memory offering every [`VGPU_TYPES`].
    pub fn new(total_gmem: u64) -> Self {
        Self {
            registry: MdevRegistry::new(
                total_gmem,
                VGPU_TYPES.iter().map(VgpuType::mdev_type).collect(),
            ),
        }
    }

    /// The registry of types and live instances.
    pub fn registry(&self) -> &MdevRegistry {
        &self.registry
    }

    /// `available_instances` of type `name`.
    pub fn available_instances(&self, name: &str) -> Result<u64, MdevError> {
        self.registry.available_instances(name)
    }

    /// Create an instance of type `name` with `uuid`; returns its type.
    pub fn create(&mut self, name: &str, uuid: Uuid) -> Result<VgpuType, MdevError> {
        let ty = VgpuType::by_name(name)?;
        self.registry.create(name, uuid)?;
        Ok(ty)
    }

    /// Remove instance `uuid`.
    pub fn remove(&mut self, uuid: Uuid) -> Result<(), MdevError> {
        self.registry.remove(uuid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_types_up_by_name() {
        assert_eq!(VgpuType::by_name("vgpu-64"), Ok(VGPU_64));
        assert_eq!(VgpuType::by_name("vgpu-512").unwrap().gmem_pages(), 131072);
        let err = VgpuType::by_name("vgpu-2048").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown mdev type 'vgpu-2048' (known: vgpu-64, vgpu-512)"
        );
    }

    #[test]
    fn parent_counts_instances_by_graphics_memory() {
        let mut p = VgpuParent::default();
        assert_eq!(p.available_instances("vgpu-64"), Ok(32));
        assert_eq!(p.available_instances("vgpu-512"), Ok(4));
        assert_eq!(p.create("vgpu-512", Uuid(1)), Ok(VGPU_512));
        assert_eq!(p.available_instances("vgpu-64"), Ok(24));
        for u in 2..5 {
            p.create("vgpu-512", Uuid(u)).unwrap();
        }
        assert!(matches!(
            p.create("vgpu-64", Uuid(9)),
            Err(MdevError::NoInstances { .. })
        ));
        p.remove(Uuid(1)).unwrap();
        assert_eq!(p.available_instances("vgpu-512"), Ok(1));
        assert!(p.create("nope", Uuid(7)).is_err());
        assert_eq!(p.registry().instances().count(), 3);
    }

    #[test]
    fn config_params_are_valid() {
        for t in VGPU_TYPES {
            let p = t.config_params();
            assert_eq!(p.validate(), Ok(()), "{}", t.name);
            assert_eq!(p.bar2_size, t.gmem_size);
        }
    }
}
