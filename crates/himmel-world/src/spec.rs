//! [`SceneSpec`]: everything that defines a clip of the world (backdrop, camera, objects and
//! what they do), sampled from a seed or written as JSON.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::{Deserialize, Serialize};

use crate::vocab::{Background, CameraMotion, Color, Direction, Motion, Shape, Size};

/// Width of the view at the start of every clip, in world units (metres).
pub const VIEW_WIDTH: f32 = 4.0;
/// Most objects in one scene.
pub const MAX_OBJECTS: usize = 4;

/// A whole scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneSpec {
    /// The backdrop.
    pub background: Background,
    /// How the camera moves.
    #[serde(default = "static_camera")]
    pub camera: CameraMotion,
    /// Whether walls stand at the view's left and right edges (x = 0 and x = 4).
    #[serde(default)]
    pub walls: bool,
    /// One to four objects.
    pub objects: Vec<ObjectSpec>,
}

fn static_camera() -> CameraMotion {
    CameraMotion::Static
}

/// One object and what it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectSpec {
    /// Its shape.
    pub shape: Shape,
    /// Its colour.
    pub color: Color,
    /// Its size class.
    pub size: Size,
    /// What it does.
    pub motion: Motion,
    /// Horizontal direction of travel (orbits: right is clockwise); none for straight
    /// falls, rest and spin in place.
    #[serde(default)]
    pub direction: Option<Direction>,
    /// Start position `[x, y]` in world units: x from the view's left edge (0..4 is in view at
    /// the start), y the height of its centre above the ground. For orbits, the centre.
    pub start: [f32; 2],
    /// Horizontal speed in units per second; for orbits and spins, radians per second.
    #[serde(default)]
    pub speed: f32,
    /// Drawing order: higher is nearer the camera and hides lower ones.
    #[serde(default)]
    pub depth: i32,
}

/// Why a spec is not valid.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// The number of objects is outside 1..=4.
    #[error("a scene needs 1 to {MAX_OBJECTS} objects, got {0}")]
    ObjectCount(usize),
    /// A value is outside its range.
    #[error("object {object}: {field} is {value}, outside {range}")]
    OutOfRange {
        /// Index of the object.
        object: usize,
        /// The field.
        field: &'static str,
        /// The value given.
        value: f32,
        /// The allowed range, in words.
        range: &'static str,
    },
}

impl SceneSpec {
    /// Checks counts and ranges.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.objects.is_empty() || self.objects.len() > MAX_OBJECTS {
            return Err(SpecError::ObjectCount(self.objects.len()));
        }
        for (object, spec) in self.objects.iter().enumerate() {
            let checks = [
                ("start x", spec.start[0], -4.0, 8.0, "-4..=8"),
                ("start y", spec.start[1], 0.0, 4.0, "0..=4"),
                ("speed", spec.speed, 0.0, 12.0, "0..=12"),
            ];
            for (field, value, low, high, range) in checks {
                if !(value.is_finite() && (low..=high).contains(&value)) {
                    return Err(SpecError::OutOfRange {
                        object,
                        field,
                        value,
                        range,
                    });
                }
            }
        }
        Ok(())
    }

    /// A random scene: 1 to 4 objects of distinct colours that stand out from the backdrop.
    pub fn sample(rng: &mut impl Rng) -> Self {
        let background = sample_background(rng);
        let camera = sample_camera(rng, 0.5);
        let count = *[1, 1, 2, 2, 3, 4].choose(rng).expect("non-empty");
        Self::sample_objects(rng, background, camera, count)
    }

    /// A random scene whose object count and camera follow `mix` (checked with
    /// [`SceneMix::check`]); the rest is drawn as [`SceneSpec::sample`] draws it.
    pub fn sample_mixed(rng: &mut impl Rng, mix: &SceneMix) -> Self {
        let background = sample_background(rng);
        let camera = sample_camera(rng, mix.static_camera);
        let count = mix.draw_count(rng);
        Self::sample_objects(rng, background, camera, count)
    }

    /// `count` random objects of distinct colours that stand out from `background`, and walls
    /// a quarter of the time.
    fn sample_objects(
        rng: &mut impl Rng,
        background: Background,
        camera: CameraMotion,
        count: usize,
    ) -> Self {
        let mut colors: Vec<Color> = Color::ALL
            .into_iter()
            .filter(|&c| !clashes_with(c, background))
            .collect();
        colors.shuffle(rng);
        let objects = colors
            .into_iter()
            .take(count)
            .enumerate()
            .map(|(depth, color)| {
                let traits = ObjectTraits {
                    shape: *Shape::ALL.choose(rng).expect("non-empty"),
                    color,
                    size: *Size::ALL.choose(rng).expect("non-empty"),
                    motion: *Motion::ALL.choose(rng).expect("non-empty"),
                    direction: None,
                };
                ObjectSpec::sample(rng, traits, depth as i32)
            })
            .collect();
        Self {
            background,
            camera,
            walls: sample_walls(rng),
            objects,
        }
    }
}

/// What random scenes hold: how many objects and how often the camera stands still. The
/// world's own draw ([`SceneSpec::sample`]) has a third of its scenes with one object and a
/// little over half with a static camera; prompts people write mostly ask for one object before
/// a still camera, and a recipe can train nearer to that.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneMix {
    /// Relative weights of scenes with 1, 2, 3 and 4 objects.
    pub objects: [f64; MAX_OBJECTS],
    /// The chance that the camera is static; otherwise any camera motion is drawn alike
    /// (static among them).
    pub static_camera: f64,
}

impl SceneMix {
    /// Whether the weights can be drawn from: none negative, some positive, their sum finite,
    /// and `static_camera` a chance (0 to 1).
    pub fn check(&self) -> Result<(), String> {
        let total: f64 = self.objects.iter().sum();
        if self.objects.iter().any(|w| *w < 0.0) || !(total > 0.0 && total.is_finite()) {
            return Err(format!(
                "objects {:?}: the weights must be finite, none negative and some positive",
                self.objects
            ));
        }
        if !(0.0..=1.0).contains(&self.static_camera) {
            return Err(format!(
                "static_camera {}: must be a chance from 0 to 1",
                self.static_camera
            ));
        }
        Ok(())
    }

    /// An object count (1 to 4) drawn by the weights.
    fn draw_count(&self, rng: &mut impl Rng) -> usize {
        let mut pick = rng.random_range(0.0..self.objects.iter().sum::<f64>());
        for (index, weight) in self.objects.iter().enumerate() {
            if pick < *weight {
                return index + 1;
            }
            pick -= weight;
        }
        MAX_OBJECTS
    }
}

/// What an object is and does, before its start and speed are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObjectTraits {
    /// Its shape.
    pub shape: Shape,
    /// Its colour.
    pub color: Color,
    /// Its size class.
    pub size: Size,
    /// What it does.
    pub motion: Motion,
    /// Its direction; sampled when `None` and the motion has one.
    pub direction: Option<Direction>,
}

impl ObjectSpec {
    /// An object with `traits` from a typical random start; rolling needs a round shape, so a
    /// cube asked to roll slides.
    pub fn sample(rng: &mut impl Rng, traits: ObjectTraits, depth: i32) -> Self {
        let ObjectTraits {
            shape,
            color,
            size,
            motion,
            direction,
        } = traits;
        let motion = if motion == Motion::Roll && !shape.is_round() {
            Motion::Slide
        } else {
            motion
        };
        let radius = size.radius() * shape.support();
        let direction = direction.unwrap_or(if rng.random_bool(0.5) {
            Direction::Left
        } else {
            Direction::Right
        });
        // x measured from the side the object starts on.
        let from_side = |rng: &mut dyn rand::RngCore, near: f32, far: f32| {
            let offset = rng.random_range(near..far);
            if direction == Direction::Right {
                offset
            } else {
                VIEW_WIDTH - offset
            }
        };
        let (start, speed, direction) = match motion {
            Motion::Rest => ([rng.random_range(0.6..3.4), radius], 0.0, None),
            Motion::Spin => (
                [rng.random_range(0.6..3.4), radius],
                rng.random_range(1.5..4.0),
                Some(direction),
            ),
            Motion::Fall => (
                [rng.random_range(0.6..3.4), rng.random_range(1.3..1.8)],
                0.0,
                None,
            ),
            Motion::Bounce => (
                [from_side(rng, 0.5, 1.5), rng.random_range(1.2..1.8)],
                rng.random_range(0.3..1.0),
                Some(direction),
            ),
            Motion::Roll | Motion::Slide => (
                [from_side(rng, 0.3, 0.9), radius],
                rng.random_range(1.2..2.5),
                Some(direction),
            ),
            Motion::Throw => (
                [from_side(rng, 0.3, 0.8), radius],
                rng.random_range(1.0..1.8),
                Some(direction),
            ),
            Motion::Drift => (
                [from_side(rng, -0.6, 0.4), rng.random_range(0.8..1.6)],
                rng.random_range(0.7..1.4),
                Some(direction),
            ),
            Motion::Orbit => (
                [rng.random_range(1.3..2.7), rng.random_range(1.1..1.4)],
                rng.random_range(1.5..3.0),
                Some(direction),
            ),
        };
        Self {
            shape,
            color,
            size,
            motion,
            direction,
            start,
            speed,
            depth,
        }
    }
}

/// A camera move: static with the chance `still`, else any motion (static among them).
pub fn sample_camera(rng: &mut impl Rng, still: f64) -> CameraMotion {
    if rng.random_bool(still) {
        CameraMotion::Static
    } else {
        *CameraMotion::ALL.choose(rng).expect("non-empty")
    }
}

/// Whether a scene has walls: a quarter of the time.
pub fn sample_walls(rng: &mut impl Rng) -> bool {
    rng.random_bool(0.25)
}

/// A backdrop (plain ones in a light colour).
pub fn sample_background(rng: &mut impl Rng) -> Background {
    match *Background::KINDS.choose(rng).expect("non-empty") {
        Background::Plain(_) => {
            let light = [
                Color::White,
                Color::Gray,
                Color::Yellow,
                Color::Cyan,
                Color::Pink,
            ];
            Background::Plain(*light.choose(rng).expect("non-empty"))
        }
        kind => kind,
    }
}

/// A random backdrop on which none of `colors` is hard to see, drawn as [`sample_background`]
/// draws (the last draw when a few dozen all clash).
pub fn sample_background_showing(colors: &[Color], rng: &mut impl Rng) -> Background {
    let mut background = sample_background(rng);
    for _ in 0..32 {
        if !colors.iter().any(|&c| clashes_with(c, background)) {
            break;
        }
        background = sample_background(rng);
    }
    background
}

/// Whether an object of `color` would be hard to see on `background`.
pub fn clashes_with(color: Color, background: Background) -> bool {
    use Color::*;
    match background {
        // The sky is blue and its hills green; meadows, beaches and water sit under that sky.
        Background::Sky => matches!(color, Blue | Cyan | Green),
        Background::Grass => matches!(color, Green | Blue | Cyan),
        Background::Sand => matches!(color, Yellow | Orange | Brown | Blue | Cyan),
        Background::Water => matches!(color, Blue | Cyan),
        Background::Night => matches!(color, Black | Blue),
        Background::Room => matches!(color, Brown | Orange | White),
        Background::Plain(plain) => {
            color == plain || matches!((plain, color), (White, Gray) | (Gray, White))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn samples_are_valid_and_repeatable() {
        for seed in 0..200 {
            let spec = SceneSpec::sample(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            spec.validate().unwrap();
            let again = SceneSpec::sample(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            assert_eq!(spec, again);
            assert!(
                spec.objects
                    .iter()
                    .all(|o| !clashes_with(o.color, spec.background))
            );
        }
    }

    #[test]
    fn mixed_scenes_follow_their_weights() {
        let draw = |mix: &SceneMix| -> Vec<SceneSpec> {
            (0..300)
                .map(|seed| {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    let spec = SceneSpec::sample_mixed(&mut rng, mix);
                    spec.validate().unwrap();
                    spec
                })
                .collect()
        };
        let lone = SceneMix {
            objects: [1.0, 0.0, 0.0, 0.0],
            static_camera: 1.0,
        };
        let scenes = draw(&lone);
        assert!(scenes.iter().all(|s| s.objects.len() == 1));
        assert!(scenes.iter().all(|s| s.camera == CameraMotion::Static));
        let crowded = SceneMix {
            objects: [0.0, 0.0, 1.0, 3.0],
            static_camera: 0.0,
        };
        let scenes = draw(&crowded);
        let fours = scenes.iter().filter(|s| s.objects.len() == 4).count();
        assert!(scenes.iter().all(|s| s.objects.len() >= 3));
        assert!(
            (200..250).contains(&fours),
            "{fours} of 300 scenes with four objects"
        );
        let still = scenes
            .iter()
            .filter(|s| s.camera == CameraMotion::Static)
            .count();
        let share = 1.0 / CameraMotion::ALL.len() as f64;
        assert!(
            (still as f64 / 300.0 - share).abs() < 0.07,
            "{still} still cameras"
        );
    }

    #[test]
    fn scene_mixes_are_checked() {
        let fine = SceneMix {
            objects: [6.0, 2.0, 1.0, 1.0],
            static_camera: 0.8,
        };
        assert!(fine.check().is_ok());
        for bad in [
            SceneMix {
                objects: [0.0; 4],
                ..fine
            },
            SceneMix {
                objects: [1.0, -1.0, 1.0, 1.0],
                ..fine
            },
            SceneMix {
                objects: [f64::NAN, 1.0, 1.0, 1.0],
                ..fine
            },
            SceneMix {
                objects: [f64::MAX, f64::MAX, 1.0, 1.0],
                ..fine
            },
            SceneMix {
                static_camera: 1.5,
                ..fine
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_round_trip_and_errors() {
        let spec = SceneSpec::sample(&mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<SceneSpec>(&json).unwrap(), spec);
        let mut bad = spec.clone();
        bad.objects[0].speed = -1.0;
        assert!(matches!(
            bad.validate(),
            Err(SpecError::OutOfRange { field: "speed", .. })
        ));
        bad.objects.clear();
        assert_eq!(bad.validate(), Err(SpecError::ObjectCount(0)));
        let unknown = r#"{"background":"grass","objects":[],"colour":"red"}"#;
        assert!(serde_json::from_str::<SceneSpec>(unknown).is_err());
    }
}
