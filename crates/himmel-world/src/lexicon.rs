//! Words and phrases for every concept, English and German, with synonyms. Captions pick
//! from these; prompt expansion reads them back, so both always agree.

use crate::vocab::{Background, CameraMotion, Color, Direction, Gender, Motion, Shape, Size};

/// A German noun with its plural and gender.
#[derive(Debug, Clone, Copy)]
pub struct GermanNoun {
    /// Singular, capitalised.
    pub singular: &'static str,
    /// Plural, capitalised.
    pub plural: &'static str,
    /// Grammatical gender.
    pub gender: Gender,
}

/// A verb phrase: third person singular and plural, and the English -ing form.
#[derive(Debug, Clone, Copy)]
pub struct Verb {
    /// "bounces" / "springt".
    pub singular: &'static str,
    /// "bounce" / "springen".
    pub plural: &'static str,
    /// "bouncing" (English only; empty in German).
    pub gerund: &'static str,
}

/// English nouns for a shape (singular; the plural adds "s", or "es" after "x").
pub fn shape_english(shape: Shape) -> &'static [&'static str] {
    match shape {
        Shape::Ball => &["ball", "sphere"],
        Shape::Cube => &["cube", "box", "block"],
        Shape::Triangle => &["triangle"],
        Shape::Star => &["star"],
        Shape::Ring => &["ring", "donut", "hoop"],
        Shape::Capsule => &["capsule", "pill"],
    }
}

/// English plural of a noun from [`shape_english`].
pub fn english_plural(noun: &str) -> String {
    if noun.ends_with('x') {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    }
}

/// German nouns for a shape.
pub fn shape_german(shape: Shape) -> &'static [GermanNoun] {
    use Gender::*;
    match shape {
        Shape::Ball => &[
            GermanNoun {
                singular: "Ball",
                plural: "Bälle",
                gender: Masculine,
            },
            GermanNoun {
                singular: "Kugel",
                plural: "Kugeln",
                gender: Feminine,
            },
        ],
        Shape::Cube => &[
            GermanNoun {
                singular: "Würfel",
                plural: "Würfel",
                gender: Masculine,
            },
            GermanNoun {
                singular: "Block",
                plural: "Blöcke",
                gender: Masculine,
            },
        ],
        Shape::Triangle => &[GermanNoun {
            singular: "Dreieck",
            plural: "Dreiecke",
            gender: Neuter,
        }],
        Shape::Star => &[GermanNoun {
            singular: "Stern",
            plural: "Sterne",
            gender: Masculine,
        }],
        Shape::Ring => &[
            GermanNoun {
                singular: "Ring",
                plural: "Ringe",
                gender: Masculine,
            },
            GermanNoun {
                singular: "Reifen",
                plural: "Reifen",
                gender: Masculine,
            },
        ],
        Shape::Capsule => &[
            GermanNoun {
                singular: "Kapsel",
                plural: "Kapseln",
                gender: Feminine,
            },
            GermanNoun {
                singular: "Pille",
                plural: "Pillen",
                gender: Feminine,
            },
        ],
    }
}

/// English words for a colour.
pub fn color_english(color: Color) -> &'static [&'static str] {
    match color {
        Color::Red => &["red"],
        Color::Orange => &["orange"],
        Color::Yellow => &["yellow"],
        Color::Green => &["green"],
        Color::Cyan => &["cyan", "turquoise", "teal"],
        Color::Blue => &["blue"],
        Color::Purple => &["purple", "violet"],
        Color::Pink => &["pink"],
        Color::White => &["white"],
        Color::Gray => &["gray", "grey"],
        Color::Black => &["black"],
        Color::Brown => &["brown"],
    }
}

/// German adjective stems for a colour; `lila`, `rosa` and `orange` take no endings ("eine orange
/// Kapsel", never "orangee").
pub fn color_german(color: Color) -> &'static [&'static str] {
    match color {
        Color::Red => &["rot"],
        Color::Orange => &["orangefarben", "orange"],
        Color::Yellow => &["gelb"],
        Color::Green => &["grün"],
        Color::Cyan => &["türkis", "cyan"],
        Color::Blue => &["blau"],
        Color::Purple => &["lila", "violett"],
        Color::Pink => &["rosa", "pink"],
        Color::White => &["weiß"],
        Color::Gray => &["grau"],
        Color::Black => &["schwarz"],
        Color::Brown => &["braun"],
    }
}

/// Whether a German colour stem never takes endings.
pub fn german_indeclinable(stem: &str) -> bool {
    matches!(stem, "lila" | "rosa" | "pink" | "cyan" | "orange")
}

/// English words for a size.
pub fn size_english(size: Size) -> &'static [&'static str] {
    match size {
        Size::Small => &["small", "little", "tiny"],
        Size::Medium => &["medium-sized", "medium"],
        Size::Large => &["large", "big", "huge"],
    }
}

/// German adjective stems for a size.
pub fn size_german(size: Size) -> &'static [&'static str] {
    match size {
        Size::Small => &["klein", "winzig"],
        Size::Medium => &["mittelgroß"],
        Size::Large => &["groß", "riesig"],
    }
}

/// English verbs for a motion.
pub fn motion_english(motion: Motion) -> &'static [Verb] {
    match motion {
        Motion::Rest => &[
            Verb {
                singular: "rests",
                plural: "rest",
                gerund: "resting",
            },
            Verb {
                singular: "sits still",
                plural: "sit still",
                gerund: "sitting still",
            },
        ],
        Motion::Bounce => &[
            Verb {
                singular: "bounces",
                plural: "bounce",
                gerund: "bouncing",
            },
            Verb {
                singular: "hops",
                plural: "hop",
                gerund: "hopping",
            },
        ],
        Motion::Roll => &[Verb {
            singular: "rolls",
            plural: "roll",
            gerund: "rolling",
        }],
        Motion::Slide => &[
            Verb {
                singular: "slides",
                plural: "slide",
                gerund: "sliding",
            },
            Verb {
                singular: "glides",
                plural: "glide",
                gerund: "gliding",
            },
        ],
        Motion::Throw => &[
            Verb {
                singular: "is thrown",
                plural: "are thrown",
                gerund: "thrown",
            },
            Verb {
                singular: "flies in an arc",
                plural: "fly in an arc",
                gerund: "flying in an arc",
            },
            Verb {
                singular: "is tossed",
                plural: "are tossed",
                gerund: "tossed",
            },
        ],
        Motion::Fall => &[
            Verb {
                singular: "falls",
                plural: "fall",
                gerund: "falling",
            },
            Verb {
                singular: "drops",
                plural: "drop",
                gerund: "dropping",
            },
        ],
        Motion::Orbit => &[
            Verb {
                singular: "circles",
                plural: "circle",
                gerund: "circling",
            },
            Verb {
                singular: "orbits",
                plural: "orbit",
                gerund: "orbiting",
            },
        ],
        Motion::Drift => &[
            Verb {
                singular: "floats",
                plural: "float",
                gerund: "floating",
            },
            Verb {
                singular: "drifts",
                plural: "drift",
                gerund: "drifting",
            },
        ],
        Motion::Spin => &[
            Verb {
                singular: "spins",
                plural: "spin",
                gerund: "spinning",
            },
            Verb {
                singular: "rotates",
                plural: "rotate",
                gerund: "rotating",
            },
        ],
    }
}

/// German verbs for a motion.
pub fn motion_german(motion: Motion) -> &'static [Verb] {
    match motion {
        Motion::Rest => &[
            Verb {
                singular: "liegt still",
                plural: "liegen still",
                gerund: "",
            },
            Verb {
                singular: "ruht",
                plural: "ruhen",
                gerund: "",
            },
        ],
        Motion::Bounce => &[
            Verb {
                singular: "springt",
                plural: "springen",
                gerund: "",
            },
            Verb {
                singular: "hüpft",
                plural: "hüpfen",
                gerund: "",
            },
        ],
        Motion::Roll => &[Verb {
            singular: "rollt",
            plural: "rollen",
            gerund: "",
        }],
        Motion::Slide => &[
            Verb {
                singular: "gleitet",
                plural: "gleiten",
                gerund: "",
            },
            Verb {
                singular: "rutscht",
                plural: "rutschen",
                gerund: "",
            },
        ],
        Motion::Throw => &[
            Verb {
                singular: "fliegt im Bogen",
                plural: "fliegen im Bogen",
                gerund: "",
            },
            Verb {
                singular: "wird geworfen",
                plural: "werden geworfen",
                gerund: "",
            },
        ],
        Motion::Fall => &[Verb {
            singular: "fällt",
            plural: "fallen",
            gerund: "",
        }],
        Motion::Orbit => &[Verb {
            singular: "kreist",
            plural: "kreisen",
            gerund: "",
        }],
        Motion::Drift => &[
            Verb {
                singular: "schwebt",
                plural: "schweben",
                gerund: "",
            },
            Verb {
                singular: "treibt",
                plural: "treiben",
                gerund: "",
            },
        ],
        Motion::Spin => &[
            Verb {
                singular: "dreht sich",
                plural: "drehen sich",
                gerund: "",
            },
            Verb {
                singular: "rotiert",
                plural: "rotieren",
                gerund: "",
            },
        ],
    }
}

/// English phrases for a direction.
pub fn direction_english(direction: Direction) -> &'static [&'static str] {
    match direction {
        Direction::Left => &["to the left", "leftwards"],
        Direction::Right => &["to the right", "rightwards"],
    }
}

/// German phrases for a direction.
pub fn direction_german(direction: Direction) -> &'static [&'static str] {
    match direction {
        Direction::Left => &["nach links"],
        Direction::Right => &["nach rechts"],
    }
}

/// English phrases placing the scene; `{c}` stands for a plain background's colour.
pub fn background_english(background: Background) -> &'static [&'static str] {
    match background {
        Background::Sky => &["against the sky", "under a blue sky"],
        Background::Grass => &[
            "on the grass",
            "across the meadow",
            "on a lawn",
            "in a field",
        ],
        Background::Sand => &["on the beach", "on the sand"],
        Background::Water => &["over the water", "above a lake", "over the sea"],
        Background::Night => &["at night", "under the stars", "in the night"],
        Background::Room => &["in a room", "indoors", "on the floor of a room"],
        Background::Plain(_) => &["on a plain {c} background", "against a {c} backdrop"],
    }
}

/// German phrases placing the scene; `{c}` stands for the colour stem with a dative ending.
pub fn background_german(background: Background) -> &'static [&'static str] {
    match background {
        Background::Sky => &["vor blauem Himmel", "am Himmel"],
        Background::Grass => &["über die Wiese", "auf dem Rasen", "auf der Wiese"],
        Background::Sand => &["am Strand", "im Sand"],
        Background::Water => &["über dem Wasser", "über einem See"],
        Background::Night => &["in der Nacht", "unter den Sternen"],
        Background::Room => &["in einem Zimmer", "drinnen"],
        Background::Plain(_) => &["vor {c} Hintergrund"],
    }
}

/// English phrases for a camera move (empty for a static camera).
pub fn camera_english(camera: CameraMotion) -> &'static [&'static str] {
    match camera {
        CameraMotion::Static => &[],
        CameraMotion::PanLeft => &["as the camera pans left", "camera panning left"],
        CameraMotion::PanRight => &["as the camera pans right", "camera panning right"],
        CameraMotion::PanUp => &["as the camera tilts up", "camera panning up"],
        CameraMotion::PanDown => &["as the camera tilts down", "camera panning down"],
        CameraMotion::ZoomIn => &["as the camera zooms in", "zooming in"],
        CameraMotion::ZoomOut => &["as the camera zooms out", "zooming out"],
    }
}

/// German phrases for a camera move (empty for a static camera).
pub fn camera_german(camera: CameraMotion) -> &'static [&'static str] {
    match camera {
        CameraMotion::Static => &[],
        CameraMotion::PanLeft => &["die Kamera schwenkt nach links"],
        CameraMotion::PanRight => &["die Kamera schwenkt nach rechts"],
        CameraMotion::PanUp => &["die Kamera schwenkt nach oben"],
        CameraMotion::PanDown => &["die Kamera schwenkt nach unten"],
        CameraMotion::ZoomIn => &["die Kamera zoomt heran"],
        CameraMotion::ZoomOut => &["die Kamera zoomt heraus"],
    }
}

/// English number words, index = count.
pub const NUMBERS_ENGLISH: [&str; 5] = ["no", "one", "two", "three", "four"];
/// German number words, index = count.
pub const NUMBERS_GERMAN: [&str; 5] = ["kein", "ein", "zwei", "drei", "vier"];

/// German adjective with the ending after an indefinite article in the nominative.
pub fn german_adjective(stem: &str, gender: Gender) -> String {
    if german_indeclinable(stem) {
        return stem.to_string();
    }
    let ending = match gender {
        Gender::Masculine => "er",
        Gender::Feminine => "e",
        Gender::Neuter => "es",
    };
    format!("{stem}{ending}")
}

/// German indefinite article in the nominative.
pub fn german_article(gender: Gender) -> &'static str {
    match gender {
        Gender::Feminine => "eine",
        _ => "ein",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn german_colours_take_endings_unless_indeclinable() {
        assert_eq!(german_adjective("rot", Gender::Feminine), "rote");
        assert_eq!(
            german_adjective("orangefarben", Gender::Feminine),
            "orangefarbene"
        );
        assert_eq!(german_adjective("orange", Gender::Feminine), "orange");
        assert_eq!(german_adjective("lila", Gender::Masculine), "lila");
    }
}
