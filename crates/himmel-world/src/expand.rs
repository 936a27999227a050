//! Prompt expansion: a short free-form prompt (English or German) becomes a [`SceneSpec`].
//! Colours, shapes, sizes, counts, motions, directions, speeds, backdrops and camera moves are
//! recognised; what the prompt leaves open is sampled from the seed (except the camera, which
//! stays static unless a move is named, as in the training prompts); words it does not
//! understand are reported, never silently dropped.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::Serialize;

use crate::lexicon::*;
use crate::spec::{
    MAX_OBJECTS, ObjectSpec, ObjectTraits, SceneSpec, clashes_with, sample_background_showing,
    sample_walls,
};
use crate::vocab::{Background, CameraMotion, Color, Direction, Motion, Shape, Size};

/// What a prompt was understood as.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expansion {
    /// The scene: what the prompt said, plus sampled choices for what it left open.
    pub spec: SceneSpec,
    /// Words that were not understood, in prompt order.
    pub unknown_words: Vec<String>,
    /// Requests that could not be honoured, in words (e.g. "at most 4 objects").
    pub conflicts: Vec<String>,
}

/// Why a prompt cannot be expanded at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExpandError {
    /// The prompt has no words.
    #[error("the prompt is empty")]
    Empty,
}

/// One word's meaning.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Meaning {
    Color(Color),
    Shape(Shape, bool),
    AnyShape(bool),
    Size(Size),
    Motion(Motion),
    Move,
    Direction(Direction),
    Up,
    Down,
    Count(usize),
    Background(Background),
    Backdrop,
    Camera,
    ZoomIn,
    ZoomOut,
    Still,
    Walls,
    Fast,
    Slow,
    And,
    ClauseEnd,
    Filler,
}

const FILLERS: &[&str] = &[
    "the",
    "on",
    "in",
    "at",
    "of",
    "over",
    "across",
    "under",
    "above",
    "through",
    "into",
    "onto",
    "along",
    "is",
    "are",
    "it",
    "its",
    "with",
    "while",
    "as",
    "from",
    "to",
    "very",
    "there",
    "some",
    "around",
    "by",
    "near",
    "next",
    "front",
    "behind",
    "against",
    "then",
    "and",
    "who",
    "which",
    "that",
    "this",
    "plain",
    "der",
    "die",
    "das",
    "den",
    "dem",
    "des",
    "einem",
    "einer",
    "eines",
    "auf",
    "über",
    "unter",
    "im",
    "am",
    "an",
    "vor",
    "durch",
    "mit",
    "ist",
    "sind",
    "sich",
    "nach",
    "zu",
    "zum",
    "zur",
    "von",
    "bei",
    "sehr",
    "neben",
    "hinter",
    "dann",
    "und",
    "wird",
    "werden",
    "einfarbigen",
    "einfarbig",
    "ground",
    "floor",
    "frame",
    "scene",
    "video",
    "off",
    "ab",
    "ins",
    "between",
    "zwischen",
    "onto",
    "aufs",
    "ins",
    "los",
    "herum",
    "around",
];

/// The meaning of one lower-case word, if any.
fn meaning(word: &str) -> Option<Meaning> {
    use Meaning::*;
    if let Some(count) = count_word(word) {
        return Some(Count(count));
    }
    let fixed = match word {
        "," | ";" | "." | "!" | "?" => Some(ClauseEnd),
        "and" | "und" | "plus" | "&" => Some(And),
        "thing" | "object" | "something" | "shape" | "ding" | "objekt" | "etwas" | "form" => {
            Some(AnyShape(false))
        }
        "things" | "objects" | "shapes" | "dinge" | "objekte" | "formen" => Some(AnyShape(true)),
        "moves" | "moving" | "move" | "goes" | "travels" | "bewegt" | "läuft" | "fährt" => {
            Some(Move)
        }
        "up" | "upwards" | "oben" | "hoch" => Some(Up),
        "down" | "downwards" | "unten" | "runter" => Some(Down),
        "camera" | "kamera" | "pans" | "pan" | "panning" | "tilts" | "tilt" | "tilting"
        | "schwenkt" | "schwenk" => Some(Camera),
        "zoom" | "zooms" | "zooming" | "zoomt" => Some(ZoomIn),
        "heran" | "hinein" | "rein" => Some(ZoomIn),
        "out" | "heraus" | "raus" => Some(ZoomOut),
        "static" | "still" | "steady" | "fixed" | "statisch" | "statische" | "statischer"
        | "statischen" | "ruhig" | "ruhige" | "ruhiger" | "ruhigen" => Some(Still),
        "wall" | "walls" | "wand" | "wände" | "wänden" => Some(Walls),
        "fast" | "quickly" | "quick" | "rapidly" | "schnell" => Some(Fast),
        "slowly" | "slow" | "gently" | "langsam" | "sanft" => Some(Slow),
        "background" | "backdrop" | "hintergrund" => Some(Backdrop),
        "arc" | "bogen" | "geworfen" | "thrown" | "throw" | "throws" | "tossed" | "toss"
        | "tosses" | "wirft" => Some(Motion(crate::vocab::Motion::Throw)),
        "starry" | "sternen" | "sternenhimmel" | "night" | "nacht" | "nachts" | "dark" => {
            Some(Background(crate::vocab::Background::Night))
        }
        "sky" | "himmel" | "air" => Some(Background(crate::vocab::Background::Sky)),
        "grass" | "meadow" | "lawn" | "field" | "park" | "wiese" | "rasen" | "gras" | "feld" => {
            Some(Background(crate::vocab::Background::Grass))
        }
        "beach" | "sand" | "sandy" | "desert" | "strand" | "sandstrand" | "wüste" => {
            Some(Background(crate::vocab::Background::Sand))
        }
        "water" | "lake" | "sea" | "ocean" | "pond" | "wasser" | "see" | "meer" | "ozean" => {
            Some(Background(crate::vocab::Background::Water))
        }
        "room" | "indoors" | "indoor" | "inside" | "kitchen" | "zimmer" | "raum" | "drinnen"
        | "küche" => Some(Background(crate::vocab::Background::Room)),
        _ => None,
    };
    fixed
        .or_else(|| lookup(word))
        .or_else(|| FILLERS.contains(&word).then_some(Filler))
}

fn count_word(word: &str) -> Option<usize> {
    match word {
        "a" | "an" | "one" | "single" | "ein" | "eine" | "einen" | "eins" | "1" => Some(1),
        "two" | "pair" | "couple" | "zwei" | "2" => Some(2),
        "three" | "drei" | "3" => Some(3),
        "four" | "vier" | "4" => Some(4),
        "five" | "six" | "many" | "several" | "fünf" | "sechs" | "viele" | "mehrere" | "5"
        | "6" => Some(5),
        _ => None,
    }
}

/// German adjective endings after a stem.
const GERMAN_ENDINGS: [&str; 6] = ["", "e", "er", "es", "en", "em"];

/// Colours, shapes, sizes, motions and directions from the lexicon.
fn lookup(word: &str) -> Option<Meaning> {
    let german_match = |stem: &str| {
        GERMAN_ENDINGS
            .iter()
            .any(|ending| word == format!("{stem}{ending}"))
    };
    for color in Color::ALL {
        if color_english(color).contains(&word)
            || color_german(color).iter().any(|stem| german_match(stem))
        {
            return Some(Meaning::Color(color));
        }
    }
    for shape in Shape::ALL {
        for noun in shape_english(shape) {
            if word == *noun {
                return Some(Meaning::Shape(shape, false));
            }
            if word == english_plural(noun) {
                return Some(Meaning::Shape(shape, true));
            }
        }
        for noun in shape_german(shape) {
            let (singular, plural) = (noun.singular.to_lowercase(), noun.plural.to_lowercase());
            if word == singular || (word == format!("{singular}s") && singular != plural) {
                return Some(Meaning::Shape(shape, false));
            }
            if word == plural || word == format!("{plural}n") {
                return Some(Meaning::Shape(shape, true));
            }
        }
    }
    for size in Size::ALL {
        if size_english(size).contains(&word)
            || size_german(size).iter().any(|stem| german_match(stem))
        {
            return Some(Meaning::Size(size));
        }
    }
    for motion in Motion::ALL {
        let english = motion_english(motion).iter().chain(motion_german(motion));
        for verb in english {
            let first = |phrase: &str| phrase.split(' ').next().unwrap_or("").to_string();
            let forms = [first(verb.singular), first(verb.plural), first(verb.gerund)];
            if forms.iter().any(|form| !form.is_empty() && form == word)
                && !matches!(word, "is" | "are" | "sits" | "sit")
            {
                return Some(Meaning::Motion(motion));
            }
        }
    }
    match word {
        "left" | "leftwards" | "leftward" | "links" | "counterclockwise" | "anticlockwise"
        | "counter-clockwise" => Some(Meaning::Direction(Direction::Left)),
        "right" | "rightwards" | "rightward" | "rechts" | "clockwise" => {
            Some(Meaning::Direction(Direction::Right))
        }
        "sits" | "sit" | "sitting" | "lies" | "lying" | "lie" | "liegt" | "liegen" | "steht"
        | "stehen" => Some(Meaning::Motion(Motion::Rest)),
        "bounced" | "rolled" | "slid" | "fell" | "dropped" | "floated" | "spun" | "turns"
        | "turning" | "dreht" | "drehen" => Some(Meaning::Motion(match word {
            "bounced" => Motion::Bounce,
            "rolled" => Motion::Roll,
            "slid" => Motion::Slide,
            "fell" | "dropped" => Motion::Fall,
            "floated" => Motion::Drift,
            _ => Motion::Spin,
        })),
        "flies" | "fly" | "flying" | "fliegt" | "fliegen" => Some(Meaning::Motion(Motion::Drift)),
        _ => None,
    }
}

/// Splits a prompt into lower-case words, punctuation kept as separate words.
fn words(prompt: &str) -> Vec<String> {
    let mut spaced = String::with_capacity(prompt.len() + 8);
    for character in prompt.chars() {
        if matches!(character, ',' | ';' | '.' | '!' | '?' | ':') {
            spaced.push(' ');
            spaced.push(character);
            spaced.push(' ');
        } else if character.is_alphanumeric() || character == '-' || character == '&' {
            spaced.extend(character.to_lowercase());
        } else {
            spaced.push(' ');
        }
    }
    spaced.split_whitespace().map(str::to_string).collect()
}

/// An object being assembled from the prompt.
#[derive(Debug, Clone, Default)]
struct Mention {
    shape: Option<Shape>,
    color: Option<Color>,
    size: Option<Size>,
    motion: Option<Motion>,
    direction: Option<Direction>,
}

/// Adjectives and a count waiting for their noun.
#[derive(Debug, Default)]
struct Pending {
    count: Option<usize>,
    colors: Vec<Color>,
    size: Option<Size>,
    motion: Option<Motion>,
    direction: Option<Direction>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.colors.is_empty() && self.size.is_none() && self.count.is_none()
    }
}

/// Understands `prompt`, sampling everything it leaves open from `rng`.
pub fn expand(prompt: &str, rng: &mut impl Rng) -> Result<Expansion, ExpandError> {
    let words = words(prompt);
    if words
        .iter()
        .all(|w| matches!(w.as_str(), "," | ";" | "." | "!" | "?" | ":"))
    {
        return Err(ExpandError::Empty);
    }
    let mut mentions: Vec<Mention> = Vec::new();
    let mut clause_start = 0;
    let mut pending = Pending::default();
    let mut background = None;
    let mut camera = None;
    let mut camera_context = false;
    let mut walls = None;
    let mut speed_factor = 1.0f32;
    let mut unknown = Vec::new();
    let mut conflicts = Vec::new();

    for (position, word) in words.iter().enumerate() {
        let next = words.get(position + 1).and_then(|w| meaning(w));
        let under_the =
            position >= 2 && words[position - 1] == "the" && words[position - 2] == "under";
        let sense = if word == "stars" && under_the {
            Some(Meaning::Background(Background::Night))
        } else {
            meaning(word)
        };
        let Some(sense) = sense else {
            unknown.push(word.clone());
            continue;
        };
        match sense {
            Meaning::Color(color) if next == Some(Meaning::Backdrop) => {
                background = Some(Background::Plain(color))
            }
            // "blue sky", "blauem Himmel": the colour describes the backdrop.
            Meaning::Color(_) if matches!(next, Some(Meaning::Background(_))) => {}
            Meaning::Color(color) => pending.colors.push(color),
            Meaning::Size(size) => pending.size = Some(size),
            Meaning::Count(count) => pending.count = Some(count),
            Meaning::Shape(shape, plural) => {
                add_mentions(
                    &mut mentions,
                    &mut pending,
                    Some(shape),
                    plural,
                    &mut conflicts,
                );
            }
            Meaning::AnyShape(plural) => {
                add_mentions(&mut mentions, &mut pending, None, plural, &mut conflicts)
            }
            Meaning::Motion(motion) => {
                camera_context = false;
                let open: Vec<&mut Mention> = mentions[clause_start..]
                    .iter_mut()
                    .filter(|m| m.motion.is_none())
                    .collect();
                if open.is_empty() {
                    pending.motion = Some(motion);
                } else {
                    open.into_iter().for_each(|m| m.motion = Some(motion));
                }
            }
            Meaning::Move => {
                if let Some(last) = mentions[clause_start..]
                    .iter_mut()
                    .rev()
                    .find(|m| m.motion.is_none())
                {
                    let rolls = last.shape.is_none_or(Shape::is_round);
                    last.motion = Some(if rolls { Motion::Roll } else { Motion::Slide });
                }
            }
            Meaning::Direction(direction) if camera_context => {
                camera = Some(match direction {
                    Direction::Left => CameraMotion::PanLeft,
                    Direction::Right => CameraMotion::PanRight,
                });
            }
            Meaning::Direction(direction) => {
                let open: Vec<&mut Mention> = mentions[clause_start..]
                    .iter_mut()
                    .filter(|m| m.direction.is_none())
                    .collect();
                if open.is_empty() {
                    pending.direction = Some(direction);
                } else {
                    open.into_iter().for_each(|m| m.direction = Some(direction));
                }
            }
            Meaning::Up if camera_context => camera = Some(CameraMotion::PanUp),
            Meaning::Down if camera_context => camera = Some(CameraMotion::PanDown),
            Meaning::Up | Meaning::Down => {}
            Meaning::Camera => camera_context = true,
            Meaning::ZoomIn => {
                camera_context = true;
                camera = Some(CameraMotion::ZoomIn);
            }
            Meaning::ZoomOut if camera_context || camera == Some(CameraMotion::ZoomIn) => {
                camera = Some(CameraMotion::ZoomOut);
            }
            Meaning::ZoomOut => {}
            Meaning::Still if camera_context || next == Some(Meaning::Camera) => {
                camera = Some(CameraMotion::Static)
            }
            Meaning::Still => {
                if let Some(last) = mentions[clause_start..]
                    .iter_mut()
                    .rev()
                    .find(|m| m.motion.is_none())
                {
                    last.motion = Some(Motion::Rest);
                }
            }
            // "night sky" stays night.
            Meaning::Background(Background::Sky) if background == Some(Background::Night) => {}
            Meaning::Background(kind) => background = Some(kind),
            Meaning::Backdrop => {}
            Meaning::Walls => walls = Some(true),
            Meaning::Fast => speed_factor = 1.5,
            Meaning::Slow if camera_context => {}
            Meaning::Slow => speed_factor = 0.6,
            Meaning::And | Meaning::Filler => {}
            Meaning::ClauseEnd => {
                flush_adjectives(&mut mentions, clause_start, &mut pending, &mut conflicts);
                // A clause of objects without a verb is part of a list ("a cube, a ring and a
                // star rest"): its objects wait for the next clause's verb.
                if mentions[clause_start..].iter().all(|m| m.motion.is_some()) {
                    clause_start = mentions.len();
                }
                camera_context = false;
            }
        }
    }
    flush_adjectives(&mut mentions, clause_start, &mut pending, &mut conflicts);
    if mentions.len() > MAX_OBJECTS {
        conflicts.push(format!(
            "asked for {} objects; a scene holds at most {MAX_OBJECTS}",
            mentions.len()
        ));
        mentions.truncate(MAX_OBJECTS);
    }
    if mentions.is_empty() {
        mentions.push(Mention {
            motion: pending.motion,
            direction: pending.direction,
            ..Mention::default()
        });
    }

    let background = background.unwrap_or_else(|| {
        let named: Vec<Color> = mentions.iter().filter_map(|m| m.color).collect();
        sample_background_showing(&named, rng)
    });
    let spec = SceneSpec {
        background,
        // Training prompts name every camera move, so a prompt that names none means a static one.
        camera: camera.unwrap_or(CameraMotion::Static),
        walls: walls.unwrap_or_else(|| sample_walls(rng)),
        objects: build_objects(&mentions, background, speed_factor, rng),
    };
    Ok(Expansion {
        spec,
        unknown_words: unknown,
        conflicts,
    })
}

/// Turns pending adjectives plus a noun into one or more mentions.
fn add_mentions(
    mentions: &mut Vec<Mention>,
    pending: &mut Pending,
    shape: Option<Shape>,
    plural: bool,
    conflicts: &mut Vec<String>,
) {
    let taken = std::mem::take(pending);
    let count = taken
        .count
        .unwrap_or(if plural { taken.colors.len().max(2) } else { 1 });
    // "zwei Würfel": the noun's plural looks like its singular, the count tells.
    let plural = plural || count > 1;
    if !plural && taken.colors.len() > 1 {
        let names: Vec<&str> = taken.colors.iter().map(|c| color_english(*c)[0]).collect();
        conflicts.push(format!(
            "one object cannot be {}; using {}",
            names.join(" and "),
            names[0]
        ));
    }
    for index in 0..count.min(MAX_OBJECTS + 1) {
        let color = if plural {
            taken.colors.get(index).or(taken.colors.last()).copied()
        } else {
            taken.colors.first().copied()
        };
        mentions.push(Mention {
            shape,
            color,
            size: taken.size,
            motion: taken.motion,
            direction: taken.direction,
        });
    }
    if count > MAX_OBJECTS {
        conflicts.push(format!(
            "asked for {count} objects; a scene holds at most {MAX_OBJECTS}"
        ));
    }
}

/// Adjectives left without a noun at a clause's end describe the clause's last object if it
/// has no colour and no shape ("something red", "etwas Rotes"), or else a new object of open
/// shape.
fn flush_adjectives(
    mentions: &mut Vec<Mention>,
    clause_start: usize,
    pending: &mut Pending,
    conflicts: &mut Vec<String>,
) {
    if pending.is_empty()
        || (pending.colors.is_empty() && pending.size.is_none() && pending.count == Some(1))
    {
        *pending = Pending::default();
        return;
    }
    let vague = mentions[clause_start..]
        .last_mut()
        .filter(|m| m.shape.is_none() && m.color.is_none());
    if let (Some(mention), None, [color]) = (vague, pending.count, pending.colors.as_slice()) {
        mention.color = Some(*color);
        mention.size = mention.size.or(pending.size);
        *pending = Pending::default();
        return;
    }
    let plural = pending.count.is_some_and(|c| c > 1);
    add_mentions(mentions, pending, None, plural, conflicts);
}

/// Fills in what the mentions leave open and places the objects.
fn build_objects(
    mentions: &[Mention],
    background: Background,
    speed_factor: f32,
    rng: &mut impl Rng,
) -> Vec<ObjectSpec> {
    let mut free_colors: Vec<Color> = Color::ALL
        .into_iter()
        .filter(|c| !clashes_with(*c, background) && !mentions.iter().any(|m| m.color == Some(*c)))
        .collect();
    free_colors.shuffle(rng);
    mentions
        .iter()
        .enumerate()
        .map(|(depth, mention)| {
            let traits = ObjectTraits {
                shape: mention
                    .shape
                    .unwrap_or_else(|| *Shape::ALL.choose(rng).expect("non-empty")),
                color: mention
                    .color
                    .or_else(|| free_colors.pop())
                    .unwrap_or(Color::Red),
                size: mention
                    .size
                    .unwrap_or_else(|| *Size::ALL.choose(rng).expect("non-empty")),
                motion: mention
                    .motion
                    .unwrap_or_else(|| *Motion::ALL.choose(rng).expect("non-empty")),
                direction: mention.direction,
            };
            let mut object = ObjectSpec::sample(rng, traits, depth as i32);
            object.speed = (object.speed * speed_factor).min(12.0);
            object
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn expand_seeded(prompt: &str) -> Expansion {
        expand(prompt, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1)).unwrap()
    }

    #[test]
    fn understands_the_canonical_prompts() {
        let english = expand_seeded("a red ball bounces on the grass");
        let german = expand_seeded("ein roter Ball springt über die Wiese");
        for expansion in [english, german] {
            assert!(
                expansion.unknown_words.is_empty(),
                "{:?}",
                expansion.unknown_words
            );
            assert_eq!(expansion.spec.background, Background::Grass);
            let [object] = &expansion.spec.objects[..] else {
                panic!("one object")
            };
            assert_eq!(
                (object.color, object.shape, object.motion),
                (Color::Red, Shape::Ball, Motion::Bounce)
            );
        }
    }

    #[test]
    fn reports_unknown_words_and_conflicts() {
        let expansion = expand_seeded("a red ball bounces on the zorblax near a flibber");
        assert_eq!(expansion.unknown_words, ["zorblax", "flibber"]);
        let crowded = expand_seeded("six balls");
        assert_eq!(crowded.spec.objects.len(), MAX_OBJECTS);
        assert!(!crowded.conflicts.is_empty());
        assert_eq!(
            expand("  , . ", &mut rand_chacha::ChaCha8Rng::seed_from_u64(0)),
            Err(ExpandError::Empty)
        );
    }

    #[test]
    fn counts_colours_cameras_and_backdrops() {
        let expansion = expand_seeded(
            "two red and blue cubes slide to the left on a plain white background, camera pans right",
        );
        let spec = &expansion.spec;
        assert!(
            expansion.unknown_words.is_empty(),
            "{:?}",
            expansion.unknown_words
        );
        assert_eq!(spec.background, Background::Plain(Color::White));
        assert_eq!(spec.camera, CameraMotion::PanRight);
        let colors: Vec<Color> = spec.objects.iter().map(|o| o.color).collect();
        assert_eq!(colors, [Color::Red, Color::Blue]);
        assert!(
            spec.objects
                .iter()
                .all(|o| o.shape == Shape::Cube && o.motion == Motion::Slide)
        );
        assert!(
            spec.objects
                .iter()
                .all(|o| o.direction == Some(Direction::Left))
        );
    }
}
