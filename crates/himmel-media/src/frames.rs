//! Folders of PNG frames (`000000.png`, `000001.png`, ...) and still images (PNG, JPEG,
//! WebP) read as one-frame videos. Neither carries a frame rate: the caller supplies one.

use std::fs;
use std::path::{Path, PathBuf};

use himmel_core::{Progress, ProgressEvent, Video};
use image::{ExtendedColorType, ImageFormat};

use crate::MediaError;
use crate::output::write_folder;

/// Reads a still image as a one-frame video at `fps`.
pub(crate) fn read_still(path: &Path, fps: f64) -> Result<Video, MediaError> {
    let image = image::ImageReader::open(path)
        .map_err(|e| MediaError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| MediaError::io(path, e))?
        .decode()
        .map_err(|e| MediaError::malformed(path, "image", e))?
        .into_rgb8();
    let size = (image.width() as usize, image.height() as usize);
    Ok(Video::from_rgb8(image.into_raw(), 1, size, fps)?)
}

/// Reads every `*.png` in `folder`, in name order, as frames at `fps`.
pub(crate) fn read_folder(
    folder: &Path,
    fps: f64,
    progress: &dyn Progress,
) -> Result<Video, MediaError> {
    let mut paths: Vec<PathBuf> = fs::read_dir(folder)
        .map_err(|e| MediaError::io(folder, e))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("png"))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(MediaError::malformed(
            folder,
            "PNG folder",
            "it contains no .png files",
        ));
    }
    progress.event(ProgressEvent::StageStarted {
        stage: "read png",
        total: paths.len() as u64,
    });
    let mut rgb = Vec::new();
    let mut size = (0, 0);
    for (index, path) in paths.iter().enumerate() {
        let frame = read_still(path, fps)?;
        let frame_size = (frame.width(), frame.height());
        if index > 0 && frame_size != size {
            return Err(MediaError::malformed(
                path,
                "PNG folder",
                format!(
                    "its size {}x{} differs from the first frame's {}x{}",
                    frame_size.0, frame_size.1, size.0, size.1
                ),
            ));
        }
        size = frame_size;
        rgb.extend(frame.to_rgb8()?);
        progress.event(ProgressEvent::Step {
            done: index as u64 + 1,
        });
    }
    progress.event(ProgressEvent::StageFinished);
    Ok(Video::from_rgb8(rgb, paths.len(), size, fps)?)
}

/// Writes every frame as `folder/NNNNNN.png`, replacing any older folder at that path.
pub(crate) fn write_folder_of_pngs(
    video: &Video,
    folder: &Path,
    progress: &dyn Progress,
) -> Result<(), MediaError> {
    write_folder(folder, |temp| {
        progress.event(ProgressEvent::StageStarted {
            stage: "write png",
            total: video.num_frames() as u64,
        });
        for index in 0..video.num_frames() {
            let frame_path = temp.join(format!("{index:06}.png"));
            image::save_buffer_with_format(
                &frame_path,
                &video.frame_rgb8(index)?,
                video.width() as u32,
                video.height() as u32,
                ExtendedColorType::Rgb8,
                ImageFormat::Png,
            )
            .map_err(|e| MediaError::Encode {
                format: "PNG",
                reason: e.to_string(),
            })?;
            progress.event(ProgressEvent::Step {
                done: index as u64 + 1,
            });
        }
        progress.event(ProgressEvent::StageFinished);
        Ok(())
    })
}
