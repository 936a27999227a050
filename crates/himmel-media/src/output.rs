//! Writing outputs so that a failure leaves nothing behind: everything is written to a
//! temporary file or folder beside the target, which replaces the target only on success.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::MediaError;

/// The folder `path` will be written in; an error if it does not exist.
fn existing_parent(path: &Path) -> Result<PathBuf, MediaError> {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if folder.is_dir() {
        Ok(folder)
    } else {
        Err(MediaError::MissingOutputFolder {
            path: path.into(),
            folder,
        })
    }
}

/// Checks that `path` can be written (its folder exists) before any expensive work starts.
pub fn check_output_path(path: &Path) -> Result<(), MediaError> {
    existing_parent(path).map(|_| ())
}

/// A temporary-file builder beside the target, with the permissions an ordinary new file or
/// folder gets (`0o644`/`0o755` on Unix) rather than the private ones temporary files get.
fn temp_builder(mode: u32) -> tempfile::Builder<'static, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".himmel-").suffix(".partial");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    builder
}

/// A temporary file beside `path` that can replace it with [`tempfile::NamedTempFile::persist`];
/// dropped, it is removed.
pub(crate) fn temp_file_for(path: &Path) -> Result<tempfile::NamedTempFile, MediaError> {
    let folder = existing_parent(path)?;
    temp_builder(0o644)
        .tempfile_in(&folder)
        .map_err(|e| MediaError::io(&folder, e))
}

/// Writes the file `path` through `write`; on error no file is left (an older file stays).
pub(crate) fn write_file<F>(path: &Path, write: F) -> Result<(), MediaError>
where
    F: FnOnce(&mut BufWriter<&fs::File>) -> Result<(), MediaError>,
{
    let temp = temp_file_for(path)?;
    {
        let mut writer = BufWriter::new(temp.as_file());
        write(&mut writer)?;
        writer.flush().map_err(|e| MediaError::io(path, e))?;
    }
    temp.persist(path)
        .map_err(|e| MediaError::io(path, e.error))?;
    Ok(())
}

/// Writes the folder `path` through `write`, which fills the (temporary) folder it is given;
/// on success it replaces any older folder at `path`, on error nothing is left.
pub(crate) fn write_folder<F>(path: &Path, write: F) -> Result<(), MediaError>
where
    F: FnOnce(&Path) -> Result<(), MediaError>,
{
    let folder = existing_parent(path)?;
    if path.exists() && !path.is_dir() {
        return Err(MediaError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a folder",
            ),
        ));
    }
    let temp = temp_builder(0o755)
        .tempdir_in(&folder)
        .map_err(|e| MediaError::io(&folder, e))?;
    write(temp.path())?;
    let finished = temp.keep();
    if path.exists() {
        fs::remove_dir_all(path).map_err(|e| MediaError::io(path, e))?;
    }
    fs::rename(&finished, path).map_err(|e| MediaError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.bin");
        let failed = write_file(&file, |_| Err(MediaError::EmptyFile("x".into())));
        assert!(failed.is_err());
        let folder = dir.path().join("frames");
        let failed = write_folder(&folder, |_| Err(MediaError::EmptyFile("x".into())));
        assert!(failed.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn missing_folder_is_named() {
        let err = check_output_path(Path::new("/no/such/dir/out.mp4")).unwrap_err();
        assert!(
            err.to_string().contains("/no/such/dir does not exist"),
            "{err}"
        );
    }
}
