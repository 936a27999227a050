//! [`Artifacts`]: the files a job leaves in the data directory: `videos/ID.mp4` and
//! `videos/ID.png` (its thumbnail, the first frame), and uploaded reference images under
//! `uploads/`.

use std::path::{Path, PathBuf};

use himmel_core::Video;

/// What of a video a client can download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The MP4.
    Video,
    /// A PNG of the first frame.
    Thumbnail,
    /// A JPEG grid of up to 16 frames spread over the video.
    Spritesheet,
    /// While it is made: a PNG strip of the newest preview (one picture per latent frame).
    Preview,
}

impl Variant {
    /// The variant a `?variant=` value names.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "video" => Some(Self::Video),
            "thumbnail" => Some(Self::Thumbnail),
            "spritesheet" => Some(Self::Spritesheet),
            "preview" => Some(Self::Preview),
            _ => None,
        }
    }

    /// The file's MIME type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Video => "video/mp4",
            Self::Thumbnail | Self::Preview => "image/png",
            Self::Spritesheet => "image/jpeg",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Video => "mp4",
            Self::Thumbnail => "png",
            Self::Spritesheet => "jpg",
            Self::Preview => "preview.png",
        }
    }
}

/// The artifact files under a data directory.
#[derive(Debug, Clone)]
pub struct Artifacts {
    dir: PathBuf,
    uploads: PathBuf,
}

/// Extensions of the reference images and clips accepted.
pub const UPLOAD_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "webp", "gif", "mp4", "mov"];

impl Artifacts {
    /// Artifacts under `data/videos` and `data/uploads`, created if missing.
    pub fn new(data: &Path) -> std::io::Result<Self> {
        let dir = data.join("videos");
        let uploads = data.join("uploads");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&uploads)?;
        Ok(Self { dir, uploads })
    }

    /// Where the upload `name` is (names are made by [`Artifacts::save_upload`]).
    pub fn upload_path(&self, name: &str) -> PathBuf {
        self.uploads.join(name)
    }

    /// Stores an uploaded reference image or clip with `extension` (one of
    /// [`UPLOAD_EXTENSIONS`]) and returns its name; it must decode, or nothing is kept.
    pub fn save_upload(&self, bytes: &[u8], extension: &str) -> Result<String, String> {
        let name = format!("{}.{extension}", crate::job::new_id());
        let path = self.upload_path(&name);
        std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
        let readable = himmel_media::read_video(
            &path,
            &himmel_media::ReadOptions::default(),
            &himmel_core::Silent,
        );
        match readable {
            Ok(_) => Ok(name),
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                Err(error.to_string())
            }
        }
    }

    /// Where the `variant` of job `id` is (callers pass validated ids only).
    pub fn path(&self, id: &str, variant: Variant) -> PathBuf {
        self.dir.join(format!("{id}.{}", variant.extension()))
    }

    /// Writes the thumbnail (the first of `samples`) and the spritesheet (a grid of all of
    /// them) of job `id`.
    pub fn write_stills(&self, id: &str, samples: &Video) -> Result<(), String> {
        let frame = |index: usize| -> Result<image::RgbImage, String> {
            let rgb = samples.frame_rgb8(index).map_err(|e| e.to_string())?;
            image::RgbImage::from_raw(samples.width() as u32, samples.height() as u32, rgb)
                .ok_or_else(|| "a sample frame has the wrong size".to_string())
        };
        self.write_image(id, Variant::Thumbnail, &frame(0)?)?;
        let columns = (samples.num_frames() as f64).sqrt().ceil() as u32;
        let rows = (samples.num_frames() as u32).div_ceil(columns);
        let (width, height) = (samples.width() as u32, samples.height() as u32);
        let mut sheet = image::RgbImage::new(columns * width, rows * height);
        for index in 0..samples.num_frames() {
            let (column, row) = (index as u32 % columns, index as u32 / columns);
            image::imageops::replace(
                &mut sheet,
                &frame(index)?,
                i64::from(column * width),
                i64::from(row * height),
            );
        }
        self.write_image(id, Variant::Spritesheet, &sheet)
    }

    /// Writes the preview strip of job `id`: the frames of `preview` side by side.
    pub fn write_preview(&self, id: &str, preview: &Video) -> Result<(), String> {
        let (width, height) = (preview.width() as u32, preview.height() as u32);
        let mut strip = image::RgbImage::new(width * preview.num_frames() as u32, height);
        for index in 0..preview.num_frames() {
            let rgb = preview.frame_rgb8(index).map_err(|e| e.to_string())?;
            let frame = image::RgbImage::from_raw(width, height, rgb)
                .ok_or("a preview frame has the wrong size")?;
            image::imageops::replace(&mut strip, &frame, i64::from(index as u32 * width), 0);
        }
        self.write_image(id, Variant::Preview, &strip)
    }

    /// Writes `image` as the `variant` of job `id`, replacing the old file at once.
    fn write_image(
        &self,
        id: &str,
        variant: Variant,
        image: &image::RgbImage,
    ) -> Result<(), String> {
        let path = self.path(id, variant);
        let temp = path.with_extension("partial");
        let format = match variant {
            Variant::Spritesheet => image::ImageFormat::Jpeg,
            _ => image::ImageFormat::Png,
        };
        image
            .save_with_format(&temp, format)
            .map_err(|e| e.to_string())?;
        std::fs::rename(&temp, &path).map_err(|e| e.to_string())
    }

    /// Removes every file of job `id`.
    pub fn remove(&self, id: &str) {
        for variant in [
            Variant::Video,
            Variant::Thumbnail,
            Variant::Spritesheet,
            Variant::Preview,
        ] {
            // A file that is not there is already removed.
            let _ = std::fs::remove_file(self.path(id, variant));
        }
    }
}
