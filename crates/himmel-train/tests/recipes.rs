//! Every recipe under `configs/` still reads as the stage it names: the recipes record how the
//! shipped weights were made, so a setting renamed in the code must not strand them.

use std::path::PathBuf;

use himmel_train::config::{AutoencoderRecipe, DenoiserRecipe, read_recipe};

#[test]
fn every_recipe_in_configs_reads() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut recipes: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("configs/")
        .map(|entry| entry.expect("a configs/ entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    recipes.sort();
    assert!(recipes.len() > 10, "{} recipes", recipes.len());
    for path in recipes {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with("-denoiser.toml") {
            let recipe: DenoiserRecipe =
                read_recipe(&path).unwrap_or_else(|error| panic!("{error}"));
            recipe
                .clip_source()
                .unwrap_or_else(|error| panic!("{name}: {error}"));
        } else {
            read_recipe::<AutoencoderRecipe>(&path).unwrap_or_else(|error| panic!("{error}"));
        }
    }
}
