//! The VMM's view of the device's PCI face, kept through the VFIO contract alone.
//!
//! As QEMU's vfio-pci does, the VMM learns the device's BARs and MSI-X layout by probing
//! its config region (firmware-style BAR sizing), derives the BAR map from the BARs the
//! guest programs and the interrupt routes from the MSI-X table the guest writes — both
//! read back through the config region and BAR0 — and replays a saved config through the
//! config region in a safe order on a migration target. The device owns its config space
//! (as a vfio-user server does); the VMM never calls into it except through regions.

use mdev_core::uapi::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX};
use mdev_core::{DeviceError, VfioDevice};
use pci_config_replay::bar::bar_sizes;
use pci_config_replay::regs::CONFIG_SPACE_SIZE;
use pci_config_replay::{
    BarMapping, ConfigParams, ConfigPort, ConfigSpace, ConfigSpaceState, HostResources,
    InterruptRoute, PortError, ReplayWrite,
};
use snafu::{ResultExt, Snafu};

/// Bytes of the standard (non-extended) config header, where the BARs and the message
/// capabilities live.
const STANDARD_CONFIG_LEN: usize = 256;

/// Errors of the VMM's PCI face.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum PciError {
    /// The device's config region does not look like a function this VMM can drive.
    #[snafu(display("probing the device's config space: {source}"))]
    Probe {
        /// The cause.
        source: pci_config_replay::ProbeError,
    },
    /// A region access failed.
    #[snafu(display("{doing}: {source}"))]
    Region {
        /// What the VMM was doing.
        doing: &'static str,
        /// The device's answer.
        source: DeviceError,
    },
    /// A saved config does not fit this device, or did not replay to the same bytes.
    #[snafu(display("{source}"))]
    Replay {
        /// The cause.
        source: pci_config_replay::ReplayError,
    },
}

/// `Result` with a [`PciError`].
pub type Result<T, E = PciError> = std::result::Result<T, E>;

/// The device's config region as a [`ConfigPort`].
#[derive(Debug)]
pub struct RegionPort<'a> {
    /// The device.
    pub dev: &'a mut dyn VfioDevice,
}

impl ConfigPort for RegionPort<'_> {
    fn read(&mut self, offset: u64, data: &mut [u8]) -> std::result::Result<(), PortError> {
        self.dev
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, offset, data)
            .map_err(|e| PortError::from_source("config region read", e))
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> std::result::Result<(), PortError> {
        self.dev
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, offset, data)
            .map_err(|e| PortError::from_source("config region write", e))
    }
}

/// The VMM's view of one function: its shape (from the probe), this host's resources, and
/// the BAR map and interrupt routes as the guest last programmed them.
#[derive(Debug, Clone)]
pub struct PciFace {
    params: ConfigParams,
    /// A fresh config model of this shape: its masks decide what is compatible and in
    /// which order a replay writes.
    model: ConfigSpace,
    host: HostResources,
    bars: Vec<BarMapping>,
    routes: Vec<InterruptRoute>,
    /// Bumped whenever `routes` changes, so that a follower (the irqfds' GSI routes) can
    /// tell without comparing them.
    routes_generation: u64,
}

impl PciFace {
    /// Probe `dev` through its config region and build the view on `host`'s resources.
    pub fn attach(dev: &mut dyn VfioDevice, host: HostResources) -> Result<Self> {
        let params = pci_config_replay::probe(&mut RegionPort { dev }).context(ProbeSnafu)?;
        let model = ConfigSpace::new(params).map_err(|e| PciError::Replay {
            source: pci_config_replay::ReplayError::Params { source: e },
        })?;
        let mut face = Self {
            params,
            model,
            host,
            bars: Vec::new(),
            routes: Vec::new(),
            routes_generation: 0,
        };
        face.refresh(dev)?;
        Ok(face)
    }

    /// The function's shape as probed.
    pub fn params(&self) -> &ConfigParams {
        &self.params
    }

    /// This host's resources (region per BAR, sink per vector).
    pub fn host(&self) -> &HostResources {
        &self.host
    }

    /// The BARs that decode now.
    pub fn bars(&self) -> &[BarMapping] {
        &self.bars
    }

    /// The enabled message vectors.
    pub fn routes(&self) -> &[InterruptRoute] {
        &self.routes
    }

    /// How many times the routes have changed (a refresh that derives the same routes
    /// does not count).
    pub fn routes_generation(&self) -> u64 {
        self.routes_generation
    }

    /// Whether a write at `offset` of BAR0's region lands in the MSI-X table or PBA (the
    /// VMM then re-reads the routes).
    pub fn is_msix(&self, region: u32, offset: u64) -> bool {
        region == VFIO_PCI_BAR0_REGION_INDEX
            && offset >= self.params.msix_table_offset
            && offset < self.params.msix_table_offset + self.params.msix_table_len()
    }

    /// The guest-visible config state, read through the config region and BAR0 (the MSI-X
    /// table and PBA).
    pub fn read_state(&self, dev: &mut dyn VfioDevice) -> Result<ConfigSpaceState> {
        self.read_state_upto(dev, CONFIG_SPACE_SIZE)
    }

    /// [`Self::read_state`] with only the first `config_len` bytes of config space read
    /// (the rest reads as zero).
    fn read_state_upto(
        &self,
        dev: &mut dyn VfioDevice,
        config_len: usize,
    ) -> Result<ConfigSpaceState> {
        // Config space is read a dword at a time, the widest access PCI config takes.
        let mut config = Box::new([0u8; CONFIG_SPACE_SIZE]);
        let len = config_len.min(CONFIG_SPACE_SIZE);
        for (i, dword) in config[..len].chunks_exact_mut(4).enumerate() {
            dev.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 4 * i as u64, dword)
                .context(RegionSnafu {
                    doing: "reading the config region",
                })?;
        }
        let mut msix_table = vec![0u8; self.params.msix_table_len() as usize];
        for (i, dword) in msix_table.chunks_exact_mut(4).enumerate() {
            dev.region_read(
                VFIO_PCI_BAR0_REGION_INDEX,
                self.params.msix_table_offset + 4 * i as u64,
                dword,
            )
            .context(RegionSnafu {
                doing: "reading the MSI-X table",
            })?;
        }
        let words = usize::from(self.params.msix_table_size).div_ceil(64);
        let mut msix_pba = Vec::with_capacity(words);
        for i in 0..words {
            let mut w = [0u8; 8];
            for (j, half) in w.chunks_exact_mut(4).enumerate() {
                dev.region_read(
                    VFIO_PCI_BAR0_REGION_INDEX,
                    self.params.msix_pba_offset + 8 * i as u64 + 4 * j as u64,
                    half,
                )
                .context(RegionSnafu {
                    doing: "reading the MSI-X PBA",
                })?;
            }
            msix_pba.push(u64::from_le_bytes(w));
        }
        Ok(ConfigSpaceState {
            config,
            bar_sizes: bar_sizes(&self.params),
            msix_table,
            msix_pba,
        })
    }

    /// Re-derive the BAR map and routes from what the guest programmed. A map that does not
    /// fit this host's resources keeps the last good one.
    ///
    /// Only the standard 256-byte header is read: BARs, COMMAND and the MSI and MSI-X
    /// capabilities all live there, and this runs after every guest config write.
    pub fn refresh(&mut self, dev: &mut dyn VfioDevice) -> Result<()> {
        let state = self.read_state_upto(dev, STANDARD_CONFIG_LEN)?;
        self.install(&state);
        Ok(())
    }

    fn install(&mut self, state: &ConfigSpaceState) {
        if let Ok(b) = state.bar_map(&self.host) {
            self.bars = b;
        }
        if let Ok(r) = state.interrupt_routes(&self.host) {
            if r != self.routes {
                self.routes = r;
                self.routes_generation += 1;
            }
        }
    }

    /// Refuse a saved config that this function could not have produced (read-only bits,
    /// BAR sizes, MSI-X table size), before anything is applied.
    pub fn check_compatible(&self, saved: &ConfigSpaceState) -> Result<()> {
        pci_config_replay::check_compatible(&self.model, saved).context(ReplaySnafu)
    }

    /// Replay `saved` onto the device through its config region and BAR0, in the safe
    /// order (decode off, BARs, COMMAND, MSI, MSI-X table, MSI-X enable, PM, the rest), read
    /// it back, check it equals `saved`, and rebuild the BAR map and routes on this host.
    /// Vectors that were pending and are deliverable fire from the device itself as the
    /// replay unmasks them.
    pub fn replay(&mut self, dev: &mut dyn VfioDevice, saved: &ConfigSpaceState) -> Result<()> {
        let plan = pci_config_replay::replay_plan(&self.model, saved).context(ReplaySnafu)?;
        for w in &plan {
            match w {
                ReplayWrite::Config { offset, data } => dev
                    .region_write(VFIO_PCI_CONFIG_REGION_INDEX, *offset, data)
                    .context(RegionSnafu {
                        doing: "replaying config",
                    })?,
                ReplayWrite::MsixTable { offset, data } => dev
                    .region_write(
                        VFIO_PCI_BAR0_REGION_INDEX,
                        self.params.msix_table_offset + offset,
                        data,
                    )
                    .context(RegionSnafu {
                        doing: "replaying the MSI-X table",
                    })?,
            }
        }
        let now = self.read_state(dev)?;
        pci_config_replay::verify_replayed(saved, &now).context(ReplaySnafu)?;
        self.install(&now);
        Ok(())
    }
}
