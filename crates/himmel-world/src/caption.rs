//! Captions from ground truth ("recaptioning"): a detailed English caption naming every
//! object with its colour, size, shape, position, motion and interactions, the backdrop and
//! the camera; and short user-style prompts in English and German with synonyms.

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use crate::camera::View;
use crate::lexicon::*;
use crate::physics::Event;
use crate::render::{Clip, Visibility};
use crate::spec::{ObjectSpec, SceneSpec, VIEW_WIDTH};
use crate::vocab::{Background, Color, Motion};

/// A prompt's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// English.
    En,
    /// German.
    De,
}

/// A short user-style prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    /// Its language.
    pub language: Language,
    /// The words.
    pub text: String,
}

fn pick<'a, T>(rng: &mut impl Rng, options: &'a [T]) -> &'a T {
    options.choose(rng).expect("every lexicon entry has words")
}

fn word(rng: &mut impl Rng, options: &[&'static str]) -> &'static str {
    options
        .choose(rng)
        .copied()
        .expect("every lexicon entry has words")
}

/// "the small red ball"-style name, distinct within a scene (colours are distinct).
fn english_name(object: &ObjectSpec) -> String {
    format!(
        "{} {} {}",
        size_english(object.size)[0],
        color_english(object.color)[0],
        shape_english(object.shape)[0]
    )
}

fn short_name(object: &ObjectSpec) -> String {
    format!(
        "{} {}",
        color_english(object.color)[0],
        shape_english(object.shape)[0]
    )
}

fn with_article(words: &str) -> String {
    let article = if words.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "An"
    } else {
        "A"
    };
    format!("{article} {words}")
}

fn setting_sentence(background: Background) -> String {
    match background {
        Background::Sky => "A pale blue sky over low green hills.".into(),
        Background::Grass => "A green meadow under a pale blue sky.".into(),
        Background::Sand => "A sandy beach under a pale blue sky.".into(),
        Background::Water => "Calm blue water under a pale blue sky.".into(),
        Background::Night => "A dark night sky full of stars over dark ground.".into(),
        Background::Room => {
            "An indoor room with a beige panelled wall and a wooden plank floor.".into()
        }
        Background::Plain(color) => format!("A plain {} background.", color_english(color)[0]),
    }
}

fn camera_sentence(spec: &SceneSpec) -> &'static str {
    use crate::vocab::CameraMotion::*;
    match spec.camera {
        Static => "The camera is static.",
        PanLeft => "The camera pans slowly to the left.",
        PanRight => "The camera pans slowly to the right.",
        PanUp => "The camera tilts slowly upwards.",
        PanDown => "The camera tilts slowly downwards.",
        ZoomIn => "The camera slowly zooms in.",
        ZoomOut => "The camera slowly zooms out.",
    }
}

fn place(object: &ObjectSpec) -> String {
    let [x, y] = object.start;
    let across = if x < 0.0 {
        "outside the frame on the left"
    } else if x > VIEW_WIDTH {
        "outside the frame on the right"
    } else if x < VIEW_WIDTH / 3.0 {
        "on the left"
    } else if x < 2.0 * VIEW_WIDTH / 3.0 {
        "in the middle"
    } else {
        "on the right"
    };
    let height = object.size.radius() * object.shape.support();
    let up = if object.motion == Motion::Orbit || y > 1.0 {
        "high up"
    } else if y > height + 0.05 {
        "low above the ground"
    } else {
        "on the ground"
    };
    format!("{up} {across}")
}

fn times(count: usize) -> String {
    match count {
        1 => "once".into(),
        2 => "twice".into(),
        n => format!("{n} times"),
    }
}

/// One sentence per object: what it is, where it starts, what it does and what happens to it.
fn object_sentence(spec: &SceneSpec, clip: &Clip, index: usize) -> String {
    let object = &spec.objects[index];
    let name = english_name(object);
    let direction = object.direction.filter(|_| object.motion.has_direction());
    let heading = direction
        .map(|d| format!(" {}", direction_english(d)[0]))
        .unwrap_or_default();
    let action = match object.motion {
        Motion::Rest => "rests there".to_string(),
        Motion::Spin => format!(
            "spins in place{}",
            direction.map_or("", |d| if d.sign() > 0.0 {
                " clockwise"
            } else {
                " counter-clockwise"
            })
        ),
        Motion::Fall => "falls straight down".to_string(),
        Motion::Bounce => format!("bounces{heading}"),
        Motion::Roll => format!("rolls{heading} along the ground"),
        Motion::Slide => format!("slides{heading} along the ground"),
        Motion::Throw => format!("is thrown{heading} in a high arc"),
        Motion::Orbit => format!(
            "circles {} in the air",
            if direction.is_some_and(|d| d.sign() > 0.0) {
                "clockwise"
            } else {
                "counter-clockwise"
            }
        ),
        Motion::Drift => format!("floats{heading} through the air"),
    };
    let mut sentence = format!(
        "{} starts {} and {action}",
        with_article(&name),
        place(object)
    );

    let events = &clip.trajectory.events;
    let bounces = events
        .iter()
        .filter(|e| matches!(e, Event::Bounce { object, .. } if *object == index))
        .count();
    if bounces > 0 {
        sentence += &format!(", hitting the ground {}", times(bounces));
    }
    if events
        .iter()
        .any(|e| matches!(e, Event::WallHit { object, .. } if *object == index))
    {
        sentence += ", rebounds off the wall";
    }
    let mut partners: Vec<usize> = events
        .iter()
        .filter_map(|e| match *e {
            Event::Collision { a, b, .. } if a == index => Some(b),
            Event::Collision { a, b, .. } if b == index => Some(a),
            _ => None,
        })
        .collect();
    partners.dedup();
    for partner in partners {
        sentence += &format!(", collides with the {}", short_name(&spec.objects[partner]));
    }
    if events
        .iter()
        .any(|e| matches!(e, Event::Stopped { object, .. } if *object == index))
    {
        sentence += " and comes to rest";
    }
    let seen: Vec<Visibility> = clip.visibility.iter().map(|frame| frame[index]).collect();
    if let Some(by) = seen.iter().find_map(|v| match v {
        Visibility::Hidden { by } => Some(*by),
        _ => None,
    }) {
        sentence += &format!(", passing behind the {}", short_name(&spec.objects[by]));
    }
    let first_in = seen.iter().position(|v| *v != Visibility::OutOfView);
    match first_in {
        None => sentence += ", staying outside the frame",
        Some(first) => {
            if first > 0 {
                sentence += ", entering the frame";
            }
            if seen.last() == Some(&Visibility::OutOfView) {
                sentence += &format!(" and leaves the frame {}", exit_side(spec, clip, index));
            }
        }
    }
    sentence + "."
}

/// Which edge of the last frame object `index` has left by.
fn exit_side(spec: &SceneSpec, clip: &Clip, index: usize) -> &'static str {
    let Some(states) = clip.trajectory.frames.last() else {
        return "";
    };
    let duration = (clip.video.num_frames() - 1) as f64 / clip.video.fps();
    let (width, height) = (clip.video.width(), clip.video.height());
    let view = View::at(spec.camera, duration as f32, width, height);
    let (column, row) = view.to_pixel(states[index].x, states[index].y);
    let (dx, dy) = (column / width as f32 - 0.5, row / height as f32 - 0.5);
    if dx.abs() >= dy.abs() {
        if dx < 0.0 {
            "on the left"
        } else {
            "on the right"
        }
    } else if dy < 0.0 {
        "at the top"
    } else {
        "at the bottom"
    }
}

/// The detailed caption of a rendered clip.
pub fn detailed_caption(spec: &SceneSpec, clip: &Clip) -> String {
    let mut sentences = vec![setting_sentence(spec.background)];
    if spec.walls {
        sentences.push("Invisible walls stand at the left and right edges of the frame.".into());
    }
    sentences.extend((0..spec.objects.len()).map(|index| object_sentence(spec, clip, index)));
    sentences.push(camera_sentence(spec).into());
    sentences.join(" ")
}

fn fill_color(phrase: &str, color: Option<Color>, german: bool) -> String {
    let Some(color) = color else {
        return phrase.to_string();
    };
    let word = if german {
        let stem = color_german(color)[0];
        if german_indeclinable(stem) {
            stem.to_string()
        } else {
            format!("{stem}em")
        }
    } else {
        color_english(color)[0].to_string()
    };
    phrase.replace("{c}", &word)
}

fn plain_color(background: Background) -> Option<Color> {
    match background {
        Background::Plain(color) => Some(color),
        _ => None,
    }
}

/// Groups objects that share shape and motion, in first-appearance order.
fn groups(spec: &SceneSpec) -> Vec<Vec<&ObjectSpec>> {
    let mut groups: Vec<Vec<&ObjectSpec>> = Vec::new();
    for object in &spec.objects {
        match groups
            .iter_mut()
            .find(|g| g[0].shape == object.shape && g[0].motion == object.motion)
        {
            Some(group) => group.push(object),
            None => groups.push(vec![object]),
        }
    }
    groups
}

fn english_clause(rng: &mut impl Rng, group: &[&ObjectSpec], with_size: bool) -> String {
    let first = group[0];
    let noun = word(rng, shape_english(first.shape));
    let verb = pick(rng, motion_english(first.motion));
    let direction = first
        .direction
        .filter(|_| {
            first.motion.has_direction() && first.motion != Motion::Orbit && rng.random_bool(0.6)
        })
        .map(|d| format!(" {}", word(rng, direction_english(d))))
        .unwrap_or_default();
    if group.len() == 1 {
        let size = if with_size {
            format!("{} ", word(rng, size_english(first.size)))
        } else {
            String::new()
        };
        let words = format!("{size}{} {noun}", word(rng, color_english(first.color)));
        format!(
            "{} {}{direction}",
            with_article(&words).to_lowercase(),
            verb.singular
        )
    } else {
        let colors: Vec<&str> = group
            .iter()
            .map(|o| word(rng, color_english(o.color)))
            .collect();
        let count = NUMBERS_ENGLISH[group.len()];
        format!(
            "{count} {} {} {}{direction}",
            join_and(&colors, "and"),
            english_plural(noun),
            verb.plural
        )
    }
}

fn german_clause(rng: &mut impl Rng, group: &[&ObjectSpec], with_size: bool) -> String {
    let first = group[0];
    let noun = pick(rng, shape_german(first.shape));
    let verb = pick(rng, motion_german(first.motion));
    let direction = first
        .direction
        .filter(|_| {
            first.motion.has_direction() && first.motion != Motion::Orbit && rng.random_bool(0.6)
        })
        .map(|d| format!(" {}", word(rng, direction_german(d))))
        .unwrap_or_default();
    if group.len() == 1 {
        let size = if with_size {
            format!(
                "{} ",
                german_adjective(word(rng, size_german(first.size)), noun.gender)
            )
        } else {
            String::new()
        };
        let color = german_adjective(word(rng, color_german(first.color)), noun.gender);
        format!(
            "{} {size}{color} {} {}{direction}",
            german_article(noun.gender),
            noun.singular,
            verb.singular
        )
    } else {
        let colors: Vec<String> = group
            .iter()
            .map(|o| {
                let stem = word(rng, color_german(o.color));
                if german_indeclinable(stem) {
                    stem.to_string()
                } else {
                    format!("{stem}e")
                }
            })
            .collect();
        let colors: Vec<&str> = colors.iter().map(String::as_str).collect();
        format!(
            "{} {} {} {}{direction}",
            NUMBERS_GERMAN[group.len()],
            join_and(&colors, "und"),
            noun.plural,
            verb.plural
        )
    }
}

fn join_and(words: &[&str], and: &str) -> String {
    match words {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} {and} {last}", rest.join(", ")),
    }
}

/// Short prompts in several phrasings: `english` in English and `german` in German.
pub fn short_prompts(
    spec: &SceneSpec,
    rng: &mut impl Rng,
    english: usize,
    german: usize,
) -> Vec<Prompt> {
    let languages =
        std::iter::repeat_n(Language::En, english).chain(std::iter::repeat_n(Language::De, german));
    languages
        .map(|language| short_prompt(spec, rng, language))
        .collect()
}

/// One short prompt: a clause per group of alike objects, the backdrop, the camera move.
fn short_prompt(spec: &SceneSpec, rng: &mut impl Rng, language: Language) -> Prompt {
    let with_size = rng.random_bool(0.4);
    let german = language == Language::De;
    let clauses: Vec<String> = groups(spec)
        .iter()
        .map(|group| {
            if german {
                german_clause(rng, group, with_size)
            } else {
                english_clause(rng, group, with_size)
            }
        })
        .collect();
    let (backdrops, cameras) = if german {
        (
            background_german(spec.background),
            camera_german(spec.camera),
        )
    } else {
        (
            background_english(spec.background),
            camera_english(spec.camera),
        )
    };
    let backdrop = fill_color(word(rng, backdrops), plain_color(spec.background), german);
    let mut text = format!("{} {backdrop}", clauses.join(", "));
    if let Some(camera) = cameras.choose(rng) {
        text += &format!(", {camera}");
    }
    Prompt { language, text }
}
