//! What the guest's configuration means for the host: which host region backs each
//! decoding BAR, and which host interrupt sink each enabled vector goes to.
//!
//! [`HostResources`] is a constructor argument, never state: the source and the target of
//! a migration each have their own, and a replay resolves the guest's view against the
//! target's.

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
};

use crate::config::ConfigSpace;
use crate::error::ResourceError;
use crate::regs::BAR_COUNT;

/// A host-side region that backs a BAR: an opaque region id and an offset inside it (for
/// a VFIO device: the region index and `vfio_region_info.offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostRegion {
    /// Region id.
    pub id: u32,
    /// Offset of the BAR's first byte inside the region.
    pub offset: u64,
}

impl HostRegion {
    /// The VFIO region of BAR `bar` (`VFIO_PCI_BARn_REGION_INDEX`) at `offset`.
    pub fn vfio_bar(bar: u8, offset: u64) -> Self {
        Self {
            id: VFIO_PCI_BAR0_REGION_INDEX + u32::from(bar),
            offset,
        }
    }
}

/// The host resources of one device instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostResources {
    /// The region backing each BAR, indexed by BAR number; `None` for BARs without one.
    pub bar_regions: [Option<HostRegion>; BAR_COUNT],
    /// The interrupt sink (e.g. an irqfd or GSI id) of each vector, indexed by vector.
    /// MSI uses entry 0.
    pub interrupt_sinks: Vec<u32>,
}

/// A BAR the guest has placed and enabled, and what backs it on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMapping {
    /// BAR number.
    pub bar: u8,
    /// Guest physical address the BAR decodes at.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host region backing it.
    pub region: HostRegion,
    /// Whether it is prefetchable.
    pub prefetchable: bool,
}

/// Which message interrupt mechanism a route belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterruptKind {
    /// MSI.
    Msi,
    /// MSI-X.
    Msix,
}

impl InterruptKind {
    /// The VFIO interrupt index (`VFIO_PCI_MSI_IRQ_INDEX` or `VFIO_PCI_MSIX_IRQ_INDEX`).
    pub fn vfio_irq_index(self) -> u32 {
        match self {
            Self::Msi => VFIO_PCI_MSI_IRQ_INDEX,
            Self::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
        }
    }
}

/// One enabled interrupt vector and where the host delivers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptRoute {
    /// MSI or MSI-X.
    pub kind: InterruptKind,
    /// Vector number.
    pub vector: u16,
    /// Message address programmed by the guest.
    pub address: u64,
    /// Message data programmed by the guest.
    pub data: u32,
    /// Whether the vector is masked (per-vector mask or MSI-X function mask).
    pub masked: bool,
    /// Host interrupt sink from [`HostResources::interrupt_sinks`].
    pub sink: u32,
}

impl ConfigSpace {
    /// The BARs that decode now (memory decode on, address programmed), with the host
    /// region behind each. One implementation serves both: this is the view of
    /// [`crate::ConfigSpaceState::bar_map`] over this space's state.
    pub fn bar_map(&self, host: &HostResources) -> Result<Vec<BarMapping>, ResourceError> {
        self.state().bar_map(host)
    }

    /// The message interrupt vectors enabled now: every MSI-X table entry when MSI-X is
    /// enabled, else MSI vector 0 when MSI is enabled, else none (INTx has no route). See
    /// [`crate::ConfigSpaceState::interrupt_routes`].
    pub fn interrupt_routes(
        &self,
        host: &HostResources,
    ) -> Result<Vec<InterruptRoute>, ResourceError> {
        self.state().interrupt_routes(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConfigParams;

    fn host() -> HostResources {
        HostResources {
            bar_regions: [
                Some(HostRegion::vfio_bar(0, 0x1000)),
                None,
                Some(HostRegion::vfio_bar(2, 0x2000_0000)),
                None,
                None,
                None,
            ],
            interrupt_sinks: (100..108).collect(),
        }
    }

    fn device() -> ConfigSpace {
        match ConfigSpace::new(ConfigParams::default()) {
            Ok(d) => d,
            Err(e) => panic!("default params: {e}"),
        }
    }

    #[test]
    fn bar_map_lists_only_decoding_bars() {
        let mut d = device();
        assert_eq!(d.bar_map(&host()), Ok(vec![]));
        d.write_u32(0x10, 0xde00_0000);
        d.write_u32(0x14, 0);
        assert_eq!(d.bar_map(&host()), Ok(vec![]), "decode off");
        d.write_u16(0x04, 0x0002);
        assert_eq!(
            d.bar_map(&host()),
            Ok(vec![BarMapping {
                bar: 0,
                guest_addr: 0xde00_0000,
                size: 16 << 20,
                region: HostRegion {
                    id: 0,
                    offset: 0x1000
                },
                prefetchable: false,
            }])
        );
        d.write_u32(0x18, 0xc000_0000);
        let map = d.bar_map(&host()).unwrap_or_default();
        assert_eq!(map.len(), 2);
        assert_eq!(
            map[1].region,
            HostRegion {
                id: 2,
                offset: 0x2000_0000
            }
        );
        assert!(map[1].prefetchable);
        let mut no_regions = host();
        no_regions.bar_regions[2] = None;
        assert_eq!(
            d.bar_map(&no_regions),
            Err(ResourceError::MissingBarRegion { bar: 2 })
        );
    }

    #[test]
    fn routes_follow_the_enabled_mode() {
        let mut d = device();
        assert_eq!(d.interrupt_routes(&host()), Ok(vec![]));
        d.write_u32(0x54, 0xfee0_0000);
        d.write_u16(0x5c, 0x41);
        d.write_u16(0x52, 1);
        let routes = d.interrupt_routes(&host()).unwrap_or_default();
        assert_eq!(
            routes,
            vec![InterruptRoute {
                kind: InterruptKind::Msi,
                vector: 0,
                address: 0xfee0_0000,
                data: 0x41,
                masked: false,
                sink: 100,
            }]
        );
        d.write_u16(0x72, 0xc000);
        let routes = d.interrupt_routes(&host()).unwrap_or_default();
        assert_eq!(routes.len(), 8);
        assert!(routes
            .iter()
            .all(|r| r.masked && r.kind == InterruptKind::Msix));
        assert_eq!(routes[7].sink, 107);
        let short = HostResources {
            interrupt_sinks: vec![1, 2],
            ..host()
        };
        assert_eq!(
            d.interrupt_routes(&short),
            Err(ResourceError::MissingInterruptSink { vector: 2 })
        );
    }

    #[test]
    fn vfio_indices() {
        assert_eq!(HostRegion::vfio_bar(2, 0).id, 2);
        assert_eq!(InterruptKind::Msi.vfio_irq_index(), 1);
        assert_eq!(InterruptKind::Msix.vfio_irq_index(), 2);
    }
}
