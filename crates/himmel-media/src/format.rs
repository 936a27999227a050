//! [`Format`]: which file format a path means, from its extension (and, for inputs, whether
//! it is a folder).

use std::path::Path;

use crate::MediaError;

/// A video or image file format Himmel reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// MP4 or MOV with H.264 video.
    Mp4,
    /// Animated GIF.
    Gif,
    /// A folder of PNG frames (`000000.png`, `000001.png`, ...).
    PngFolder,
    /// Raw frames: a safetensors file with the f32 tensor `video` `[F, H, W, 3]` in 0..=1.
    Safetensors,
    /// A still image (PNG, JPEG, WebP), read as a one-frame video.
    Still,
}

const INPUTS: &str =
    ".mp4, .mov, .m4v, .gif, .safetensors, .png, .jpg, .jpeg, .webp, or a folder of PNG frames";
const OUTPUTS: &str = ".mp4, .gif, .safetensors, or .png (a folder of PNG frames)";

impl Format {
    /// The format to read `path` as; the path must exist.
    pub fn of_input(path: &Path) -> Result<Self, MediaError> {
        if path.is_dir() {
            return Ok(Self::PngFolder);
        }
        let format = match extension(path).as_deref() {
            Some("mp4" | "mov" | "m4v") => Self::Mp4,
            Some("gif") => Self::Gif,
            Some("safetensors") => Self::Safetensors,
            Some("png" | "jpg" | "jpeg" | "webp") => Self::Still,
            _ => {
                return Err(MediaError::UnknownFormat {
                    path: path.into(),
                    direction: "input",
                    supported: INPUTS,
                });
            }
        };
        Ok(format)
    }

    /// The format to write `path` as: by extension, and a path without one is a PNG folder.
    pub fn of_output(path: &Path) -> Result<Self, MediaError> {
        let format = match extension(path).as_deref() {
            Some("mp4") => Self::Mp4,
            Some("gif") => Self::Gif,
            Some("safetensors") => Self::Safetensors,
            Some("png") | None => Self::PngFolder,
            _ => {
                return Err(MediaError::UnknownFormat {
                    path: path.into(),
                    direction: "output",
                    supported: OUTPUTS,
                });
            }
        };
        Ok(format)
    }

    /// A short human name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mp4 => "MP4",
            Self::Gif => "GIF",
            Self::PngFolder => "PNG folder",
            Self::Safetensors => "safetensors",
            Self::Still => "image",
        }
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|ext| ext.to_string_lossy().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_by_extension() {
        assert_eq!(Format::of_output(Path::new("a.MP4")).unwrap(), Format::Mp4);
        assert_eq!(Format::of_output(Path::new("a.gif")).unwrap(), Format::Gif);
        assert_eq!(
            Format::of_output(Path::new("frames.png")).unwrap(),
            Format::PngFolder
        );
        assert_eq!(
            Format::of_output(Path::new("frames")).unwrap(),
            Format::PngFolder
        );
        assert_eq!(
            Format::of_output(Path::new("v.safetensors")).unwrap(),
            Format::Safetensors
        );
        let err = Format::of_output(Path::new("v.avi"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("v.avi") && err.contains(".mp4"), "{err}");
    }

    #[test]
    fn inputs_by_extension() {
        assert_eq!(Format::of_input(Path::new("a.mov")).unwrap(), Format::Mp4);
        assert_eq!(
            Format::of_input(Path::new("a.jpeg")).unwrap(),
            Format::Still
        );
        assert!(Format::of_input(Path::new("a.txt")).is_err());
    }
}
