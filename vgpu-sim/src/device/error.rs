//! Errors of building a vGPU.

use snafu::Snafu;

/// Why a [`Vgpu`](super::Vgpu) could not be built.
#[derive(Debug, Snafu, Clone, PartialEq, Eq)]
#[snafu(visibility(pub(crate)))]
pub enum VgpuError {
    /// A migration feature set without STOP_COPY, or with bits the vGPU does not know.
    #[snafu(display(
        "migration features {features:#x} are not a valid set (STOP_COPY is mandatory; P2P and PRE_COPY optional)"
    ))]
    MigrationFeatures {
        /// The `VFIO_MIGRATION_*` bits asked for.
        features: u32,
    },
    /// The type's configuration-space parameters were refused.
    #[snafu(display("configuration space parameters refused: {reason}"))]
    ConfigParams {
        /// What pci-config-replay said.
        reason: String,
    },
    /// The shadow GTT could not be built.
    #[snafu(display("shadow GTT could not be built: {reason}"))]
    Gtt {
        /// What shadow-pt said.
        reason: String,
    },
}

/// `Result` with a [`VgpuError`].
pub type Result<T, E = VgpuError> = std::result::Result<T, E>;
