//! [`MarkedWriter`]: a video output that carries Himmel's marks: the invisible watermark in
//! every frame (MP4, GIF and PNG outputs; raw safetensors frames stay exact for comparisons)
//! and, for MP4, a signed C2PA manifest.

use std::path::{Path, PathBuf};

use himmel_core::{Progress, Video};
use himmel_media::{Format, MediaError, VideoWriter, WriteOptions};

use crate::provenance::{self, Claim, Credentials, ProvenanceError};
use crate::watermark::{Payload, Watermarker};

/// What marks an output gets.
pub struct Marks {
    /// The generation's id, carried by the watermark (and recorded in the manifest).
    pub generation: u32,
    /// The manifest to sign into MP4 outputs, and the credentials to sign it with; `None`
    /// writes no manifest.
    pub provenance: Option<(Claim, Credentials)>,
}

/// Why a marked output could not be finished.
#[derive(Debug, thiserror::Error)]
pub enum MarkedError {
    /// Writing the video failed.
    #[error(transparent)]
    Media(#[from] MediaError),
    /// Signing its manifest failed.
    #[error(transparent)]
    Provenance(#[from] ProvenanceError),
}

/// Writes a video as its parts arrive (see [`VideoWriter`]), watermarking each frame, and
/// signs the finished MP4.
pub struct MarkedWriter {
    writer: VideoWriter,
    path: PathBuf,
    watermark: Option<Watermarker>,
    /// The manifest to sign, its credentials, and the unsigned file beside the output (removed
    /// when dropped).
    provenance: Option<(Claim, Credentials, tempfile::TempPath)>,
}

impl MarkedWriter {
    /// A writer for `path` (the format its extension names); fails at once if the format or
    /// the folder is wrong.
    pub fn create(path: &Path, options: &WriteOptions, marks: Marks) -> Result<Self, MediaError> {
        let format = Format::of_output(path)?;
        himmel_media::check_output_path(path)?;
        let provenance = match marks.provenance.filter(|_| format == Format::Mp4) {
            Some((claim, credentials)) => {
                let folder = provenance::folder_of(path);
                let unsigned = tempfile::Builder::new()
                    .prefix(".himmel-")
                    .suffix(".unsigned.mp4")
                    .tempfile_in(folder)
                    .map_err(|e| MediaError::io(folder, e))?
                    .into_temp_path();
                Some((claim, credentials, unsigned))
            }
            None => None,
        };
        let written = match &provenance {
            Some((_, _, unsigned)) => unsigned.to_path_buf(),
            None => path.to_path_buf(),
        };
        let payload = Payload {
            generation: marks.generation,
        };
        Ok(Self {
            writer: VideoWriter::create(&written, options)?,
            path: path.to_path_buf(),
            watermark: (format != Format::Safetensors).then(|| Watermarker::new(payload)),
            provenance,
        })
    }

    /// Whether frames get the watermark (not raw safetensors outputs).
    pub fn watermarks(&self) -> bool {
        self.watermark.is_some()
    }

    /// Whether the output gets a signed manifest (MP4 outputs, unless turned off).
    pub fn signs(&self) -> bool {
        self.provenance.is_some()
    }

    /// Frames written so far.
    pub fn frames(&self) -> usize {
        self.writer.frames()
    }

    /// Appends the frames of `part` (watermarked), which must have the size and rate of the
    /// first part.
    pub fn push(&mut self, part: &Video) -> Result<(), MediaError> {
        match &mut self.watermark {
            Some(watermark) => {
                let marked = watermark.mark(part).map_err(|error| match error {
                    crate::watermark::WatermarkError::Video(e) => MediaError::from(e),
                    crate::watermark::WatermarkError::Tensor(e) => MediaError::from(e),
                })?;
                self.writer.push(&marked)
            }
            None => self.writer.push(part),
        }
    }

    /// Completes the file and signs it. Nothing appears at the path unless both succeed.
    pub fn finish(self, progress: &dyn Progress) -> Result<(), MarkedError> {
        self.writer.finish(progress)?;
        if let Some((claim, credentials, unsigned)) = &self.provenance {
            provenance::sign(unsigned, &self.path, claim, credentials)?;
        }
        Ok(())
    }
}
