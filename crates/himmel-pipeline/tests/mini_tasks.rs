//! The editing tasks with the shipped himmel-mini model, on clips rendered by the world:
//! image to video keeps its first frame, video to video at strength 0 returns the clip and at
//! strength 1 ignores it, extensions have continuous seams, loops wrap, connections run from
//! one clip's last frame to the other's first.

use candle_core::Device;
use himmel_core::Video;
use himmel_core::compare::psnr;
use himmel_pipeline::mini::builtin_dir;
use himmel_pipeline::tasks::{self, Direction, Task};
use himmel_pipeline::{
    Anchor, GenerationRequest, KnownClip, MiniPipeline, PipelineError, SourceClip,
};
use himmel_world::fault::Fault;
use himmel_world::render::{RenderSettings, render};
use himmel_world::score::score;

struct Scene {
    pipeline: MiniPipeline,
    caption: String,
    spec: himmel_world::SceneSpec,
    /// The scene rendered by the world: the ground truth.
    truth: Video,
}

impl Scene {
    fn new(prompt: &str, seed: u64) -> Self {
        let pipeline = MiniPipeline::load(&builtin_dir(), &Device::Cpu).unwrap();
        let settings = RenderSettings {
            width: 64,
            height: 64,
            frames: 17,
            fps: 16.0,
        };
        let recaption = pipeline.recaption(prompt, &settings, seed).unwrap();
        let truth = render(&recaption.spec, &settings).unwrap().video;
        Self {
            pipeline,
            caption: recaption.caption,
            spec: recaption.spec,
            truth,
        }
    }

    fn request(&self) -> GenerationRequest {
        let sampling = self.pipeline.config().sampling;
        GenerationRequest {
            steps: sampling.steps,
            guidance: sampling.guidance,
            seed: 5,
            ..GenerationRequest::new(&self.caption, (64, 64, 17), 16.0)
        }
    }

    fn generate(&self, request: GenerationRequest) -> Result<Video, PipelineError> {
        let request = self.pipeline.validate(request)?;
        self.pipeline
            .generate(&request, &self.caption, &himmel_core::Silent)
    }

    fn run(&self, task: &Task, base: &GenerationRequest) -> Video {
        let mut generate = |request| self.generate(request);
        let windows = self.pipeline.windows();
        tasks::collect(|sink| tasks::run(task, &mut generate, base, windows, sink)).unwrap()
    }
}

fn frame(video: &Video, index: usize) -> Vec<u8> {
    video.frame_rgb8(index).unwrap()
}

fn frames(video: &Video, start: usize, count: usize) -> Video {
    Video::new(video.frames().narrow(0, start, count).unwrap(), video.fps()).unwrap()
}

/// PSNR between each frame in `range` and the one before it.
fn consecutive(video: &Video, range: std::ops::Range<usize>) -> Vec<f64> {
    range
        .map(|i| psnr(&frame(video, i - 1), &frame(video, i)))
        .collect()
}

/// No cut: neighbouring frames of these clips differ by far less than unrelated scenes do
/// (about 21 dB between a meadow and a beach).
fn smooth(steps: &[f64]) -> bool {
    steps.iter().all(|&step| step >= 27.0)
}

#[test]
fn image_to_video_keeps_the_given_first_frame() {
    let scene = Scene::new("a red ball rolls to the right on the grass", 1);
    let image = frames(&scene.truth, 0, 1);
    // The image through the autoencoder: video to video of one frame at strength 0.
    let autoencoded = scene
        .generate(GenerationRequest {
            frames: 1,
            source: Some(SourceClip {
                video: image.clone(),
                strength: 0.0,
            }),
            ..scene.request()
        })
        .unwrap();
    let video = scene
        .generate(GenerationRequest {
            known: vec![KnownClip {
                video: image,
                anchor: Anchor::Start,
            }],
            ..scene.request()
        })
        .unwrap();
    let fidelity = psnr(&frame(&autoencoded, 0), &frame(&video, 0));
    println!("first frame PSNR against the autoencoded image: {fidelity:.1} dB");
    assert!(fidelity >= 30.0, "{fidelity}");
}

#[test]
fn video_to_video_strength_runs_from_keeping_to_ignoring_the_clip() {
    let scene = Scene::new("a blue cube slides to the left over the sand", 2);
    let other = Scene::new("a yellow ball falls in a white room", 3);
    let restyle = |clip: &Video, strength| {
        scene
            .generate(GenerationRequest {
                source: Some(SourceClip {
                    video: clip.clone(),
                    strength,
                }),
                ..scene.request()
            })
            .unwrap()
    };
    let kept = restyle(&scene.truth, 0.0);
    let fidelity = psnr(&scene.truth.to_rgb8().unwrap(), &kept.to_rgb8().unwrap());
    let autoencoder = &scene.pipeline.model().autoencoder;
    let pixels = ((scene.truth.to_f32().unwrap().permute((3, 0, 1, 2)).unwrap() * 2.0).unwrap()
        - 1.0)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .contiguous()
        .unwrap();
    let round_trip = autoencoder
        .decode(&autoencoder.encode(&pixels).unwrap())
        .unwrap();
    let round_trip = ((round_trip
        .squeeze(0)
        .unwrap()
        .permute((1, 2, 3, 0))
        .unwrap()
        + 1.0)
        .unwrap()
        / 2.0)
        .unwrap();
    let round_trip = Video::new(round_trip.contiguous().unwrap(), 16.0).unwrap();
    let as_autoencoded = psnr(&round_trip.to_rgb8().unwrap(), &kept.to_rgb8().unwrap());
    println!(
        "strength 0: PSNR against the clip {fidelity:.1} dB, against its autoencoder round trip {as_autoencoded:.1} dB"
    );
    assert!(as_autoencoded >= 40.0, "{as_autoencoded}");
    let ignored = restyle(&scene.truth, 1.0);
    let ignored_other = restyle(&other.truth, 1.0);
    let plain = scene.generate(scene.request()).unwrap();
    let same = psnr(
        &ignored.to_rgb8().unwrap(),
        &ignored_other.to_rgb8().unwrap(),
    );
    let as_text = psnr(&ignored.to_rgb8().unwrap(), &plain.to_rgb8().unwrap());
    println!("strength 1: two clips agree to {same:.1} dB, text to video to {as_text:.1} dB");
    assert!(same >= 40.0 && as_text >= 40.0);
}

/// Faults in words.
fn words(faults: &[Fault]) -> Vec<String> {
    faults.iter().map(ToString::to_string).collect()
}

#[test]
fn extension_seams_are_continuous() {
    let scene = Scene::new("a red ball rolls to the right on the grass", 4);
    let clip = scene.generate(scene.request()).unwrap();
    for direction in [Direction::Forward, Direction::Backward] {
        let task = Task::Extend {
            clip: clip.clone(),
            direction,
            new_frames: 12,
        };
        let video = scene.run(&task, &scene.request());
        assert_eq!(video.num_frames(), 29);
        // 17 frames across the seam.
        let seam = match direction {
            Direction::Forward => 17,
            Direction::Backward => 12,
        };
        let around = frames(&video, seam - 8, 17);
        let steps = consecutive(&video, seam - 7..seam + 8);
        println!("{direction:?}: consecutive frames across the seam {steps:.1?}");
        // The steps that touch a new frame (the seam's, and those on the new side); the clip's
        // own steps are the model's motion, kept as they were. Step `i` ends at frame
        // `seam - 7 + i`, so the seam's is step 7.
        let seam_step = 7;
        let new_steps = match direction {
            Direction::Forward => &steps[seam_step..],
            Direction::Backward => &steps[..=seam_step],
        };
        let report = score(&around, &scene.spec).unwrap();
        // Across the seam (frame 8 of the 17 scored): faults within 2 frames of it, or over a
        // whole track (a shape change). The rest is the model's own flicker, printed too.
        let across: Vec<String> = report
            .faults
            .iter()
            .filter(|fault| fault.frame.is_none_or(|frame| frame.abs_diff(8) <= 2))
            .map(ToString::to_string)
            .collect();
        let clip_side = match direction {
            Direction::Forward => frame(&video, 16),
            Direction::Backward => frame(&video, 12),
        };
        let truth_side = match direction {
            Direction::Forward => frame(&clip, 16),
            Direction::Backward => frame(&clip, 0),
        };
        println!(
            "{direction:?}: faults across the seam {across:?}, in all 17 frames {:?}, clip frame \
             kept to {:.1} dB",
            words(&report.faults),
            psnr(&truth_side, &clip_side)
        );
        assert!(across.is_empty(), "{across:?}");
        assert_eq!(
            psnr(&truth_side, &clip_side),
            f64::INFINITY,
            "the clip is kept"
        );
        assert!(smooth(new_steps), "{steps:?}");
    }
}

#[test]
fn loops_return_to_their_first_frame() {
    let scene = Scene::new("a green ball bounces on the grass", 6);
    let video = scene.run(&Task::Loop, &scene.request());
    assert_eq!(video.num_frames(), 16);
    let closing = psnr(&frame(&video, 15), &frame(&video, 0));
    println!(
        "loop: consecutive frames {:.1?}",
        consecutive(&video, 1..16)
    );
    // The loop played twice: its motion must run on across the wrap.
    let rotated = Video::new(
        candle_core::Tensor::cat(
            &[frames(&video, 8, 8).frames(), frames(&video, 0, 8).frames()],
            0,
        )
        .unwrap(),
        16.0,
    )
    .unwrap();
    let across = words(&score(&rotated, &scene.spec).unwrap().faults);
    let own = words(&score(&video, &scene.spec).unwrap().faults);
    println!(
        "loop: last and first frames {closing:.1} dB; faults played across the wrap {across:?}, \
         played once {own:?}"
    );
    assert!(closing >= 28.0, "{closing}");
    // The wrap adds no fault of its own: the model's flicker is there either way.
    assert!(across.len() <= own.len(), "{across:?} against {own:?}");
}

#[test]
fn connections_run_from_the_first_clip_to_the_second() {
    let from = Scene::new("a red ball rolls to the right on the grass", 7);
    let to = Scene::new("a blue cube slides to the left over the sand", 8);
    let (a, b) = (
        from.generate(from.request()).unwrap(),
        to.generate(to.request()).unwrap(),
    );
    let task = Task::Connect {
        from: a.clone(),
        to: b.clone(),
        new_frames: 8,
    };
    let video = from.run(&task, &from.request());
    assert_eq!(video.num_frames(), 10);
    let start = psnr(&frame(&a, 16), &frame(&video, 0));
    let end = psnr(&frame(&b, 0), &frame(&video, 9));
    let cut = psnr(&frame(&a, 16), &frame(&b, 0));
    let steps = consecutive(&video, 1..10);
    let own = [consecutive(&a, 1..17), consecutive(&b, 1..17)].concat();
    println!(
        "connection: starts at A's last frame to {start:.1} dB, ends at B's first to {end:.1} dB; \
         consecutive frames {steps:.1?}; A's and B's own {own:.1?}; a cut {cut:.1} dB"
    );
    assert!(start >= 40.0 && end >= 40.0, "{start} {end}");
    // Every step is far smoother than cutting from A to B (another scene and backdrop), and
    // within 2 dB of the model's own clips' roughest step.
    let roughest = |steps: &[f64]| steps.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(
        roughest(&steps) >= cut + 10.0,
        "{steps:?} against a cut of {cut}"
    );
    assert!(
        roughest(&steps) >= roughest(&own) - 2.0,
        "{steps:?} against {own:?}"
    );
}
