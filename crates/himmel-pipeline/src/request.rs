//! [`GenerationRequest`] and its validation into a [`ValidRequest`].

use candle_core::Tensor;
use himmel_models::mini::SkipGuidance;

use crate::conditioning::{Anchor, KnownClip, SourceClip};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// What the video should show.
    pub prompt: String,
    /// What it should not show (used for classifier-free guidance).
    pub negative_prompt: String,
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Number of frames.
    pub frames: usize,
    /// Frames per second of the output.
    pub fps: f64,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale (1 or less turns guidance off).
    pub guidance: f64,
    /// Flow shift overriding the model's scheduler configuration.
    pub shift: Option<f64>,
    /// Step caching threshold (see `himmel_models::wan::StepCache`); `None` computes every
    /// step in full.
    pub step_cache: Option<f64>,
    /// Noise level (0 to 1) from which the model's high-noise expert denoises, overriding the
    /// model's; only for models with one.
    pub boundary: Option<f64>,
    /// Classifier-free guidance scale of the high-noise expert's steps (as Wan 2.2 guides its
    /// two experts apart); `None` guides them by `guidance`. Only for models with an expert.
    pub expert_guidance: Option<f64>,
    /// Skip guidance of the model's own denoiser, overriding the model's
    /// `sampling.skip_guidance` (a scale of 0 turns it off); only for himmel-mini models.
    pub skip_guidance: Option<SkipGuidance>,
    /// Seed of the initial noise.
    pub seed: u64,
    /// Initial noise to use instead of seeded noise, `[1, C, F', H', W']`.
    pub initial_latents: Option<Tensor>,
    /// Frames known at the start or end of the output (image to video, extension, connection).
    pub known: Vec<KnownClip>,
    /// A clip to re-style (video to video).
    pub source: Option<SourceClip>,
}

impl GenerationRequest {
    /// Text to video of `prompt` with these settings and nothing known.
    pub fn new(prompt: &str, (width, height, frames): (usize, usize, usize), fps: f64) -> Self {
        Self {
            prompt: prompt.to_owned(),
            negative_prompt: String::new(),
            width,
            height,
            frames,
            fps,
            steps: 50,
            guidance: 5.0,
            shift: None,
            step_cache: None,
            boundary: None,
            expert_guidance: None,
            skip_guidance: None,
            seed: 0,
            initial_latents: None,
            known: Vec::new(),
            source: None,
        }
    }
}

/// Why a request cannot run; each names the field, the rule and the value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValidationError {
    /// Frame counts must be `1 + tk` for the model's temporal factor `t`.
    #[error(
        "frames must be 1 + {factor}k for this model; got {given}, nearest valid: {lower} or {upper}"
    )]
    Frames {
        /// The model's temporal factor.
        factor: usize,
        /// The value given.
        given: usize,
        /// The nearest valid value below.
        lower: usize,
        /// The nearest valid value above.
        upper: usize,
    },
    /// Width and height must be positive multiples of the model's factor.
    #[error(
        "{field} must be a positive multiple of {multiple}; got {given}, nearest valid: {suggestion}"
    )]
    Size {
        /// "width" or "height".
        field: &'static str,
        /// The value given.
        given: usize,
        /// The required multiple.
        multiple: usize,
        /// The nearest valid value.
        suggestion: usize,
    },
    /// A number is outside its range.
    #[error("{field} must be {rule}; got {given}")]
    Range {
        /// The field.
        field: &'static str,
        /// The rule, in words.
        rule: String,
        /// The value given.
        given: String,
    },
    /// Given initial latents do not have the shape the request needs.
    #[error("initial latents must have shape {expected:?} for this request; got {given:?}")]
    LatentShape {
        /// The shape needed.
        expected: Vec<usize>,
        /// The shape given.
        given: Vec<usize>,
    },
    /// Skip guidance names a scale or block the model cannot take.
    #[error("{reason}")]
    SkipGuidance {
        /// What is out of range, in words.
        reason: String,
    },
    /// A clip has fewer frames than the request needs.
    #[error("{what} has {given} frames; this request needs at least {needed}")]
    ClipTooShort {
        /// The clip, in words.
        what: &'static str,
        /// Its frames.
        given: usize,
        /// The frames needed.
        needed: usize,
    },
    /// A known clip cannot be placed where it was asked to be.
    #[error(
        "a known clip of {frames} frames cannot be placed at {anchor} of a {total}-frame output: {reason}"
    )]
    KnownPlacement {
        /// The clip's frames.
        frames: usize,
        /// Where it was asked to be, in words.
        anchor: String,
        /// The output's frames.
        total: usize,
        /// Why not.
        reason: String,
    },
    /// The known clips leave nothing to generate.
    #[error(
        "the known clips fill {known} of the output's {total} latent frames; \
         ask for more frames or give shorter clips"
    )]
    KnownCoversOutput {
        /// Latent frames the clips fill.
        known: usize,
        /// Latent frames of the output.
        total: usize,
    },
}

/// Frames of `seconds` at `fps`, rounded up to a count a model of `temporal_factor` takes,
/// `1 + tk`.
pub fn frames_for_seconds(seconds: f64, fps: f64, temporal_factor: usize) -> usize {
    let wanted = (seconds * fps).ceil().max(1.0) as usize;
    (wanted - 1).div_ceil(temporal_factor) * temporal_factor + 1
}

/// A request that passed validation for a model.
#[derive(Debug, Clone)]
pub struct ValidRequest(GenerationRequest);

impl ValidRequest {
    /// The request.
    pub fn get(&self) -> &GenerationRequest {
        &self.0
    }
}

/// The limits a model puts on requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelLimits {
    /// Frames must be 1 + `temporal_factor` * k.
    pub temporal_factor: usize,
    /// Width and height must be multiples of this.
    pub size_multiple: usize,
    /// Latent channels.
    pub latent_channels: usize,
    /// Pixels per latent cell.
    pub spatial_factor: usize,
    /// Largest side in pixels accepted.
    pub max_side: usize,
    /// Most frames accepted.
    pub max_frames: usize,
    /// Whether a high-noise expert takes the steps above a boundary.
    pub high_noise_expert: bool,
    /// Blocks of the denoiser that skip guidance may skip; `None` where the model does not
    /// take skip guidance.
    pub skip_guidance_layers: Option<usize>,
}

impl ModelLimits {
    /// Latent shape `[1, C, F', H', W']` for a request of this size.
    pub fn latent_shape(&self, request: &GenerationRequest) -> Vec<usize> {
        vec![
            1,
            self.latent_channels,
            (request.frames - 1) / self.temporal_factor + 1,
            request.height / self.spatial_factor,
            request.width / self.spatial_factor,
        ]
    }

    /// Checks `request` against these limits.
    pub fn validate(&self, request: GenerationRequest) -> Result<ValidRequest, ValidationError> {
        let range = |field, rule: &str, given: String| ValidationError::Range {
            field,
            rule: rule.into(),
            given,
        };
        let factor = self.temporal_factor;
        if request.frames == 0 || request.frames > self.max_frames {
            return Err(range(
                "frames",
                &format!("between 1 and the model's maximum ({})", self.max_frames),
                request.frames.to_string(),
            ));
        }
        if !(request.frames - 1).is_multiple_of(factor) {
            let lower = (request.frames - 1) / factor * factor + 1;
            return Err(ValidationError::Frames {
                factor,
                given: request.frames,
                lower,
                upper: lower + factor,
            });
        }
        for (field, given) in [("width", request.width), ("height", request.height)] {
            let multiple = self.size_multiple;
            if given == 0 || given % multiple != 0 {
                let suggestion =
                    ((given as f64 / multiple as f64).round() as usize).max(1) * multiple;
                return Err(ValidationError::Size {
                    field,
                    given,
                    multiple,
                    suggestion,
                });
            }
            if given > self.max_side {
                return Err(range(
                    field,
                    &format!("at most {} pixels", self.max_side),
                    given.to_string(),
                ));
            }
        }
        if request.steps == 0 || request.steps > 1000 {
            return Err(range(
                "steps",
                "between 1 and 1000",
                request.steps.to_string(),
            ));
        }
        if !(request.guidance.is_finite() && request.guidance >= 0.0) {
            return Err(range(
                "guidance",
                "a number of at least 0",
                request.guidance.to_string(),
            ));
        }
        if let Some(shift) = request.shift
            && !(shift.is_finite() && shift > 0.0)
        {
            return Err(range("shift", "a positive number", shift.to_string()));
        }
        if let Some(threshold) = request.step_cache
            && !(threshold.is_finite() && (0.0..=1.0).contains(&threshold))
        {
            return Err(range(
                "step_cache",
                "a threshold from 0 to 1",
                threshold.to_string(),
            ));
        }
        let expert_settings = [
            ("boundary", request.boundary),
            ("expert_guidance", request.expert_guidance),
        ];
        if !self.high_noise_expert
            && let Some((field, Some(value))) =
                expert_settings.iter().find(|(_, value)| value.is_some())
        {
            return Err(range(
                field,
                "left unset: this model has no high-noise expert",
                value.to_string(),
            ));
        }
        if let Some(boundary) = request.boundary
            && !(0.0..=1.0).contains(&boundary)
        {
            return Err(range(
                "boundary",
                "a noise level from 0 to 1",
                boundary.to_string(),
            ));
        }
        if let Some(guidance) = request.expert_guidance
            && !(guidance.is_finite() && guidance >= 0.0)
        {
            return Err(range(
                "expert_guidance",
                "a number of at least 0",
                guidance.to_string(),
            ));
        }
        if let Some(skip) = request.skip_guidance {
            let Some(layers) = self.skip_guidance_layers else {
                return Err(range(
                    "skip_guidance",
                    "left unset: this model does not take skip guidance",
                    format!("{skip:?}"),
                ));
            };
            skip.check(layers)
                .map_err(|reason| ValidationError::SkipGuidance { reason })?;
        }
        if !(request.fps.is_finite() && request.fps > 0.0 && request.fps <= 240.0) {
            return Err(range("fps", "between 0 and 240", request.fps.to_string()));
        }
        if let Some(latents) = &request.initial_latents {
            let expected = self.latent_shape(&request);
            if latents.dims() != expected.as_slice() {
                return Err(ValidationError::LatentShape {
                    expected,
                    given: latents.dims().to_vec(),
                });
            }
        }
        self.validate_conditioning(&request)?;
        Ok(ValidRequest(request))
    }

    /// Checks the known clips and the source clip against the request.
    fn validate_conditioning(&self, request: &GenerationRequest) -> Result<(), ValidationError> {
        if let Some(source) = &request.source {
            if !(0.0..=1.0).contains(&source.strength) {
                return Err(ValidationError::Range {
                    field: "strength",
                    rule: "between 0 and 1".into(),
                    given: source.strength.to_string(),
                });
            }
            if source.video.num_frames() < request.frames {
                return Err(ValidationError::ClipTooShort {
                    what: "the source clip",
                    given: source.video.num_frames(),
                    needed: request.frames,
                });
            }
        }
        let factor = self.temporal_factor;
        let total = (request.frames - 1) / factor + 1;
        let mut taken = vec![false; total];
        for clip in &request.known {
            let placement = |reason| ValidationError::KnownPlacement {
                frames: clip.video.num_frames(),
                anchor: match clip.anchor {
                    Anchor::Start => "the start".into(),
                    Anchor::At(frame) => format!("frame {frame}"),
                    Anchor::End => "the end".into(),
                },
                total: request.frames,
                reason,
            };
            let first = clip.first_latent_frame(total, factor).ok_or_else(|| {
                placement(format!(
                    "it must start at frame 1 + {factor}k and end within the output"
                ))
            })?;
            for slot in &mut taken[first..first + clip.latent_frames(factor)] {
                if std::mem::replace(slot, true) {
                    return Err(placement("it overlaps another known clip".into()));
                }
            }
        }
        let known = taken.iter().filter(|&&taken| taken).count();
        if !request.known.is_empty() && known >= total {
            return Err(ValidationError::KnownCoversOutput { known, total });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAN: ModelLimits = ModelLimits {
        temporal_factor: 4,
        size_multiple: 16,
        latent_channels: 16,
        spatial_factor: 8,
        max_side: 4096,
        max_frames: 1601,
        high_noise_expert: false,
        skip_guidance_layers: None,
    };

    fn request() -> GenerationRequest {
        GenerationRequest::new("a ball", (832, 480, 81), 16.0)
    }

    #[test]
    fn seconds_round_up_to_valid_frame_counts() {
        assert_eq!(frames_for_seconds(5.0, 16.0, 4), 81);
        assert_eq!(frames_for_seconds(1.0, 16.0, 4), 17);
        assert_eq!(frames_for_seconds(0.01, 16.0, 4), 1);
        assert_eq!(frames_for_seconds(1.1, 16.0, 4), 21);
        assert_eq!(frames_for_seconds(1.1, 16.0, 2), 19);
    }

    #[test]
    fn suggests_the_nearest_valid_values() {
        assert!(WAN.validate(request()).is_ok());
        let frames = WAN
            .validate(GenerationRequest {
                frames: 80,
                ..request()
            })
            .unwrap_err();
        assert_eq!(
            frames,
            ValidationError::Frames {
                factor: 4,
                given: 80,
                lower: 77,
                upper: 81
            }
        );
        assert!(frames.to_string().contains("1 + 4k"), "{frames}");
        assert!(frames.to_string().contains("77 or 81"));
        let width = WAN
            .validate(GenerationRequest {
                width: 830,
                ..request()
            })
            .unwrap_err();
        assert_eq!(
            width,
            ValidationError::Size {
                field: "width",
                given: 830,
                multiple: 16,
                suggestion: 832
            }
        );
        let steps = WAN
            .validate(GenerationRequest {
                steps: 0,
                ..request()
            })
            .unwrap_err();
        assert!(
            steps
                .to_string()
                .contains("steps must be between 1 and 1000; got 0")
        );
        for threshold in [-0.1, 1.5, f64::NAN] {
            let error = WAN
                .validate(GenerationRequest {
                    step_cache: Some(threshold),
                    ..request()
                })
                .unwrap_err();
            assert!(error.to_string().contains("step_cache"), "{error}");
        }
        // A model with or without a high-noise expert validating the request.
        let with_expert = |high_noise_expert, request: GenerationRequest| {
            ModelLimits {
                high_noise_expert,
                ..WAN
            }
            .validate(request)
            .map(|_| ())
            .map_err(|error| error.to_string())
        };
        let boundary = |boundary, high_noise_expert| {
            let boundary = Some(boundary);
            with_expert(
                high_noise_expert,
                GenerationRequest {
                    boundary,
                    ..request()
                },
            )
        };
        assert!(
            boundary(0.9, false)
                .unwrap_err()
                .contains("no high-noise expert")
        );
        assert!(
            boundary(1.5, true)
                .unwrap_err()
                .contains("noise level from 0 to 1")
        );
        assert!(boundary(f64::NAN, true).is_err());
        assert_eq!(boundary(0.9, true), Ok(()));
        let expert_guidance = |guidance, high_noise_expert| {
            let expert_guidance = Some(guidance);
            let request = GenerationRequest {
                expert_guidance,
                ..request()
            };
            with_expert(high_noise_expert, request)
        };
        assert!(
            expert_guidance(4.0, false)
                .unwrap_err()
                .contains("no high-noise expert")
        );
        assert!(
            expert_guidance(-1.0, true)
                .unwrap_err()
                .contains("at least 0")
        );
        assert!(expert_guidance(f64::NAN, true).is_err());
        assert_eq!(expert_guidance(6.0, true), Ok(()));
        // Skip guidance, by a model that takes it (six blocks) or not.
        let skip = |scale, layer, skip_guidance_layers| {
            let limits = ModelLimits {
                skip_guidance_layers,
                ..WAN
            };
            let skip_guidance = Some(SkipGuidance { scale, layer });
            limits
                .validate(GenerationRequest {
                    skip_guidance,
                    ..request()
                })
                .map(|_| ())
                .map_err(|error| error.to_string())
        };
        assert_eq!(skip(2.0, 5, Some(6)), Ok(()));
        assert_eq!(skip(0.0, 0, Some(6)), Ok(()));
        assert!(skip(2.0, 6, Some(6)).unwrap_err().contains("has 6 blocks"));
        assert!(skip(-1.0, 2, Some(6)).unwrap_err().contains("at least 0"));
        assert!(skip(f64::NAN, 2, Some(6)).is_err());
        assert!(
            skip(2.0, 2, None)
                .unwrap_err()
                .contains("does not take skip guidance")
        );
        assert_eq!(WAN.latent_shape(&request()), [1, 16, 21, 60, 104]);
    }

    #[test]
    fn known_clips_must_fit_apart_and_leave_work() {
        let clip = |frames: usize, anchor| KnownClip {
            video: himmel_core::Video::from_rgb8(vec![0; frames * 48], frames, (4, 4), 16.0)
                .unwrap(),
            anchor,
        };
        let with = |known: Vec<KnownClip>| {
            WAN.validate(GenerationRequest {
                frames: 17,
                known,
                ..request()
            })
        };
        assert!(with(vec![clip(1, Anchor::Start), clip(4, Anchor::At(9))]).is_ok());
        let misplaced = with(vec![clip(4, Anchor::At(8))]).unwrap_err();
        assert!(misplaced.to_string().contains("at frame 8"), "{misplaced}");
        let overlapping = with(vec![clip(8, Anchor::End), clip(4, Anchor::At(13))]).unwrap_err();
        assert!(
            overlapping.to_string().contains("overlaps"),
            "{overlapping}"
        );
        let covering = with(vec![clip(9, Anchor::Start), clip(8, Anchor::End)]).unwrap_err();
        assert!(matches!(
            covering,
            ValidationError::KnownCoversOutput { known: 5, total: 5 }
        ));
        let strength = WAN
            .validate(GenerationRequest {
                source: Some(SourceClip {
                    video: clip(81, Anchor::Start).video,
                    strength: 1.5,
                }),
                ..request()
            })
            .unwrap_err();
        assert!(
            strength
                .to_string()
                .contains("strength must be between 0 and 1")
        );
    }
}
