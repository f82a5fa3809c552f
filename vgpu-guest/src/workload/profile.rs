//! Workload profiles: what a frame costs, modelled on the benchmark classes the GVT-g work
//! migrated (lightsmark and 2D desktop loads, 3DMark06, Unigine Heaven).
//!
//! | profile  | default size | triangles / pass | objects | texture uploads / frame | render-to-texture passes | RTT size | graphics memory |
//! |----------|--------------|------------------|---------|-------------------------|--------------------------|----------|-----------------|
//! | `light`  | 1280x720     | 3 000            | 8       | 1 (256 KiB)             | 1                        | 256      | 13 MiB          |
//! | `medium` | 1600x900     | 20 000           | 16      | 6 (1.5 MiB)             | 2                        | 256      | 19 MiB          |
//! | `heavy`  | 1920x1080    | 20 000           | 24      | 1024 (256 MiB)          | 2                        | 512      | 283 MiB (`vgpu-512`) |
//!
//! Every pass draws the whole scene, so a frame submits about `(passes + 1) x triangles`.
//! `heavy` streams textures as a Heaven-class engine does: its uploads alone dirty graphics
//! memory faster than a 10 Gbit/s link carries it.
//!
//! Each upload is a device DMA read of a 256x256 texture from the guest's texture pool into
//! a graphics-memory slot, so a frame dirties its colour buffer, the depth buffer, every
//! render-to-texture target and its depth, and the uploaded slots.

/// A workload profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A light desktop-like load.
    Light,
    /// A mid-range 3D benchmark.
    Medium,
    /// A heavy 3D benchmark: dirties graphics memory faster than 10 Gbit/s carries it.
    Heavy,
}

/// What a profile asks of each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileSpec {
    /// Default render width.
    pub width: u32,
    /// Default render height.
    pub height: u32,
    /// Default triangles per frame (approximate: meshes are tessellated to it).
    pub triangles: u32,
    /// Objects in the scene.
    pub objects: u32,
    /// Textures uploaded from guest RAM per frame.
    pub uploads: u32,
    /// Render-to-texture passes per frame (each shown on a screen in the scene).
    pub passes: u32,
    /// Edge of each render-to-texture target in pixels.
    pub rtt_size: u32,
    /// Textures in the guest's pool (the upload sources).
    pub pool: u32,
    /// Texture slots in graphics memory (the upload destinations).
    pub slots: u32,
}

/// Every profile, in order.
pub const PROFILES: [Profile; 3] = [Profile::Light, Profile::Medium, Profile::Heavy];

impl Profile {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Light => "light",
            Profile::Medium => "medium",
            Profile::Heavy => "heavy",
        }
    }

    /// The profile called `name`.
    pub fn by_name(name: &str) -> Option<Self> {
        PROFILES.into_iter().find(|p| p.name() == name)
    }

    /// Its number in the parameter block.
    pub fn id(self) -> u32 {
        match self {
            Profile::Light => 0,
            Profile::Medium => 1,
            Profile::Heavy => 2,
        }
    }

    /// The profile numbered `id`.
    pub fn from_id(id: u32) -> Option<Self> {
        PROFILES.into_iter().find(|p| p.id() == id)
    }

    /// What it asks of each frame.
    pub fn spec(self) -> ProfileSpec {
        match self {
            Profile::Light => ProfileSpec {
                width: 1280,
                height: 720,
                triangles: 3000,
                objects: 8,
                uploads: 1,
                passes: 1,
                rtt_size: 256,
                pool: 4,
                slots: 4,
            },
            Profile::Medium => ProfileSpec {
                width: 1600,
                height: 900,
                triangles: 20_000,
                objects: 16,
                uploads: 6,
                passes: 2,
                rtt_size: 256,
                pool: 16,
                slots: 8,
            },
            Profile::Heavy => ProfileSpec {
                width: 1920,
                height: 1080,
                triangles: 20_000,
                objects: 24,
                uploads: 1024,
                passes: 2,
                rtt_size: 512,
                pool: 48,
                slots: 1024,
            },
        }
    }
}
