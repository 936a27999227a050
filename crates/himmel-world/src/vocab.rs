//! The world's vocabulary: colours, shapes, sizes, backgrounds, motions, directions and camera
//! moves, with their physical properties. Their words live in [`crate::lexicon`].

use serde::{Deserialize, Serialize};

/// German grammatical gender, for adjective endings ("ein roter Ball", "eine rote Kapsel").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gender {
    /// der
    Masculine,
    /// die
    Feminine,
    /// das
    Neuter,
}

/// A named object colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Color {
    /// Red.
    Red,
    /// Orange.
    Orange,
    /// Yellow.
    Yellow,
    /// Green.
    Green,
    /// Cyan (turquoise).
    Cyan,
    /// Blue.
    Blue,
    /// Purple.
    Purple,
    /// Pink.
    Pink,
    /// White.
    White,
    /// Gray.
    Gray,
    /// Black.
    Black,
    /// Brown.
    Brown,
}

impl Color {
    /// Every colour.
    pub const ALL: [Self; 12] = [
        Self::Red,
        Self::Orange,
        Self::Yellow,
        Self::Green,
        Self::Cyan,
        Self::Blue,
        Self::Purple,
        Self::Pink,
        Self::White,
        Self::Gray,
        Self::Black,
        Self::Brown,
    ];

    /// The colour's sRGB value in 0..=1.
    pub fn rgb(self) -> [f32; 3] {
        match self {
            Self::Red => [0.86, 0.10, 0.10],
            Self::Orange => [0.98, 0.50, 0.05],
            Self::Yellow => [0.97, 0.88, 0.10],
            Self::Green => [0.10, 0.70, 0.20],
            Self::Cyan => [0.05, 0.80, 0.85],
            Self::Blue => [0.12, 0.25, 0.90],
            Self::Purple => [0.55, 0.15, 0.75],
            Self::Pink => [0.98, 0.45, 0.72],
            Self::White => [0.96, 0.96, 0.96],
            Self::Gray => [0.50, 0.50, 0.50],
            Self::Black => [0.07, 0.07, 0.07],
            Self::Brown => [0.50, 0.30, 0.12],
        }
    }
}

/// An object's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// A disc, drawn shaded as a sphere.
    Ball,
    /// A square, drawn as the face of a cube.
    Cube,
    /// An equilateral triangle.
    Triangle,
    /// A five-pointed star.
    Star,
    /// An annulus.
    Ring,
    /// A stadium (a rectangle with round ends).
    Capsule,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Self; 6] = [
        Self::Ball,
        Self::Cube,
        Self::Triangle,
        Self::Star,
        Self::Ring,
        Self::Capsule,
    ];

    /// Distance from the centre to the lowest point when upright, as a fraction of the size's
    /// radius: how high the centre rests above the ground.
    pub fn support(self) -> f32 {
        match self {
            Self::Ball | Self::Ring => 1.0,
            Self::Cube => 0.8,
            Self::Triangle => 0.5,
            Self::Star => 0.809,
            Self::Capsule => 0.45,
        }
    }

    /// The turn (radians) after which the outline looks the same; `None` for round shapes.
    pub fn symmetry(self) -> Option<f32> {
        use std::f32::consts::PI;
        match self {
            Self::Ball | Self::Ring => None,
            Self::Cube => Some(PI / 2.0),
            Self::Triangle => Some(2.0 * PI / 3.0),
            Self::Star => Some(2.0 * PI / 5.0),
            Self::Capsule => Some(PI),
        }
    }

    /// Whether it rolls (round outline) rather than tumbles.
    pub fn is_round(self) -> bool {
        matches!(self, Self::Ball | Self::Ring)
    }
}

/// An object's size class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    /// Radius 0.22 world units.
    Small,
    /// Radius 0.32 world units.
    Medium,
    /// Radius 0.45 world units.
    Large,
}

impl Size {
    /// Every size.
    pub const ALL: [Self; 3] = [Self::Small, Self::Medium, Self::Large];

    /// Collision radius in world units (the view is 4 units wide).
    pub fn radius(self) -> f32 {
        match self {
            Self::Small => 0.22,
            Self::Medium => 0.32,
            Self::Large => 0.45,
        }
    }
}

/// The scene's backdrop; all but `Plain`, `Sky` and `Night` show a ground.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Background {
    /// A blue sky gradient over a distant horizon.
    Sky,
    /// A green meadow under a sky.
    Grass,
    /// A sandy beach under a sky.
    Sand,
    /// Water under a sky.
    Water,
    /// A dark night sky with stars over dark ground.
    Night,
    /// An indoor room: a wall and a wooden floor.
    Room,
    /// One flat colour.
    Plain(Color),
}

impl Background {
    /// Every background kind (plain with a representative colour).
    pub const KINDS: [Self; 7] = [
        Self::Sky,
        Self::Grass,
        Self::Sand,
        Self::Water,
        Self::Night,
        Self::Room,
        Self::Plain(Color::White),
    ];
}

/// What an object does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Motion {
    /// Lies still on the ground.
    Rest,
    /// Dropped from a height, bouncing with restitution, drifting sideways.
    Bounce,
    /// Rolls along the ground, slowed by rolling resistance.
    Roll,
    /// Slides along the ground without turning, slowed by friction.
    Slide,
    /// Thrown in a ballistic arc, then bounces and settles.
    Throw,
    /// Falls straight down and lands.
    Fall,
    /// Circles a centre point without gravity.
    Orbit,
    /// Floats across the view at constant velocity, without gravity.
    Drift,
    /// Turns on the spot, resting on the ground.
    Spin,
}

impl Motion {
    /// Every motion.
    pub const ALL: [Self; 9] = [
        Self::Rest,
        Self::Bounce,
        Self::Roll,
        Self::Slide,
        Self::Throw,
        Self::Fall,
        Self::Orbit,
        Self::Drift,
        Self::Spin,
    ];

    /// Whether gravity and collisions act on it (orbit and drift are kinematic).
    pub fn is_dynamic(self) -> bool {
        !matches!(self, Self::Orbit | Self::Drift)
    }

    /// Whether the motion has a horizontal direction worth naming.
    pub fn has_direction(self) -> bool {
        matches!(
            self,
            Self::Bounce | Self::Roll | Self::Slide | Self::Throw | Self::Drift | Self::Orbit
        )
    }
}

/// A direction of travel (for orbits: left is counter-clockwise, right clockwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Towards negative x.
    Left,
    /// Towards positive x.
    Right,
}

impl Direction {
    /// -1 for left, +1 for right.
    pub fn sign(self) -> f32 {
        match self {
            Self::Left => -1.0,
            Self::Right => 1.0,
        }
    }
}

/// How the camera moves over the clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraMotion {
    /// Does not move.
    Static,
    /// Pans towards negative x (the scene moves right in the frame).
    PanLeft,
    /// Pans towards positive x.
    PanRight,
    /// Tilts upwards.
    PanUp,
    /// Tilts downwards.
    PanDown,
    /// Zooms in towards the centre.
    ZoomIn,
    /// Zooms out from the centre.
    ZoomOut,
}

impl CameraMotion {
    /// Every camera motion.
    pub const ALL: [Self; 7] = [
        Self::Static,
        Self::PanLeft,
        Self::PanRight,
        Self::PanUp,
        Self::PanDown,
        Self::ZoomIn,
        Self::ZoomOut,
    ];
}
