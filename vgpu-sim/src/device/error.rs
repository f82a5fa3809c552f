//! Errors of building a vGPU.

use snafu::Snafu;

/// Why a [`Vgpu`](super::Vgpu) could not be built.
#[derive(Debug, Snafu, Clone, PartialEq, Eq)]
#[snafu(visibility(pub(crate)))]
pub enum VgpuError {
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
