//! [`Artifacts`]: the files a job leaves in the data directory: `videos/ID.mp4` and
//! `videos/ID.png` (its thumbnail, the first frame), and uploaded reference images under
//! `uploads/`.

use std::path::{Path, PathBuf};

use himmel_core::Video;

/// What of a finished video a client can download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The MP4.
    Video,
    /// A PNG of the first frame.
    Thumbnail,
}

impl Variant {
    /// The variant a `?variant=` value names.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "video" => Some(Self::Video),
            "thumbnail" => Some(Self::Thumbnail),
            _ => None,
        }
    }

    /// The file's MIME type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Video => "video/mp4",
            Self::Thumbnail => "image/png",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Video => "mp4",
            Self::Thumbnail => "png",
        }
    }
}

/// The artifact files under a data directory.
#[derive(Debug, Clone)]
pub struct Artifacts {
    dir: PathBuf,
    uploads: PathBuf,
}

/// Extensions of the reference images accepted.
pub const UPLOAD_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "gif"];

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

    /// Stores an uploaded reference image with `extension` (one of [`UPLOAD_EXTENSIONS`]) and
    /// returns its name; it must decode as an image, or nothing is kept.
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

    /// Writes the thumbnail of job `id` from `frame` (one frame).
    pub fn write_thumbnail(&self, id: &str, frame: &Video) -> Result<(), String> {
        let rgb = frame.frame_rgb8(0).map_err(|e| e.to_string())?;
        let image = image::RgbImage::from_raw(frame.width() as u32, frame.height() as u32, rgb)
            .ok_or("the thumbnail frame has the wrong size")?;
        let path = self.path(id, Variant::Thumbnail);
        let temp = path.with_extension("png.partial");
        image
            .save_with_format(&temp, image::ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        std::fs::rename(&temp, &path).map_err(|e| e.to_string())
    }

    /// Removes every file of job `id`.
    pub fn remove(&self, id: &str) {
        for variant in [Variant::Video, Variant::Thumbnail] {
            // A file that is not there is already removed.
            let _ = std::fs::remove_file(self.path(id, variant));
        }
    }
}
