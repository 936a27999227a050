//! The denoising loop every model and task shares: the first sample (noise, or a source clip
//! partly noised for video to video), the solver's steps, and the known latents re-imposed
//! after each step.

use candle_core::{DType, Device, Tensor};
use himmel_core::{Progress, ProgressEvent};
use himmel_models::wan::WanVae;
use himmel_sample::{Solver, noised_at};

use crate::PipelineError;
use crate::conditioning::{KnownLatents, encode_start};
use crate::preview::LatentPreview;
use crate::request::GenerationRequest;
use crate::wan::seeded_noise;

/// What sampling starts from.
pub(crate) struct Inputs {
    /// Standard normal noise shaped like the latents; also noises the known latents.
    noise: Tensor,
    /// Normalised latents of a clip to re-style, and the strength of the change.
    source: Option<(Tensor, f64)>,
    /// Latents known at the ends of the output.
    known: Option<KnownLatents>,
}

impl Inputs {
    /// The noise (given or seeded), the encoded source clip and the known latents `request`
    /// asks for, for latents of `shape`, encoded with `vae`.
    pub(crate) fn prepare(
        vae: &WanVae,
        request: &GenerationRequest,
        shape: &[usize],
        device: &Device,
        progress: &dyn Progress,
    ) -> Result<Self, PipelineError> {
        let noise = match &request.initial_latents {
            Some(latents) => latents.to_device(device)?.to_dtype(DType::F32)?,
            None => seeded_noise(shape, request.seed, device)?,
        };
        let conditioned = request.source.is_some() || !request.known.is_empty();
        if conditioned {
            progress.event(ProgressEvent::StageStarted {
                stage: "encode clips",
                total: 0,
            });
        }
        let size = (request.width, request.height);
        let source = match &request.source {
            Some(source) => Some((
                encode_start(vae, &source.video, shape[2], size, device)?,
                source.strength,
            )),
            None => None,
        };
        let known = KnownLatents::encode(vae, &request.known, shape, device)?;
        if conditioned {
            progress.event(ProgressEvent::StageFinished);
        }
        Ok(Self {
            noise,
            source,
            known,
        })
    }

    /// The known latents, if any.
    pub(crate) fn known(&self) -> Option<&KnownLatents> {
        self.known.as_ref()
    }
}

/// The step video to video starts at: diffusers' `get_timesteps`, which runs the last
/// `trunc(steps * strength)` steps.
pub(crate) fn first_step(steps: usize, strength: f64) -> usize {
    steps - ((steps as f64 * strength) as usize).min(steps)
}

/// Runs `solver` from `inputs` to clean latents; `predict(sample, timestep)` is the model's
/// (guided) flow prediction. With `preview` (the projection and the video's rate), every step
/// also sends a preview of its estimate of the clean latents.
pub(crate) fn denoise(
    solver: &mut dyn Solver,
    inputs: &Inputs,
    preview: Option<(&LatentPreview, f64)>,
    progress: &dyn Progress,
    mut predict: impl FnMut(&Tensor, f64) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let timesteps = solver.timesteps().to_vec();
    let sigmas = solver.sigmas().to_vec();
    let noise = &inputs.noise;
    let known = inputs.known();
    let first = match &inputs.source {
        Some((_, strength)) => first_step(timesteps.len(), *strength),
        None => 0,
    };
    let mut sample = match &inputs.source {
        Some((source, _)) => noised_at(source, noise, sigmas[first])?,
        None => noise.clone(),
    };
    solver.start_at(first);
    if let Some(known) = known {
        sample = known.impose(&sample, noise, sigmas[first])?;
    }
    progress.event(ProgressEvent::StageStarted {
        stage: "denoise",
        total: (timesteps.len() - first) as u64,
    });
    for (index, &timestep) in timesteps.iter().enumerate().skip(first) {
        let prediction = predict(&sample, timestep)?;
        if let Some((projection, fps)) = preview.filter(|_| progress.wants_previews()) {
            let clean = (&sample - (prediction.to_dtype(DType::F32)? * sigmas[index])?)?;
            let frames = projection
                .render(&clean, fps)
                .map_err(|error| candle_core::Error::msg(error.to_string()))?;
            progress.event(ProgressEvent::Preview { frames: &frames });
        }
        sample = solver.step(&prediction, &sample)?;
        if let Some(known) = known {
            sample = known.impose(&sample, noise, sigmas[index + 1])?;
        }
        progress.event(ProgressEvent::Step {
            done: (index - first) as u64 + 1,
        });
    }
    progress.event(ProgressEvent::StageFinished);
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strength_picks_the_steps_to_run() {
        assert_eq!(first_step(5, 0.6), 2);
        assert_eq!(first_step(4, 0.5), 2);
        assert_eq!(first_step(10, 0.0), 10);
        assert_eq!(first_step(10, 1.0), 0);
        assert_eq!(first_step(3, 0.99), 1);
    }
}
