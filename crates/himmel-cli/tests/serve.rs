//! `himmel serve` and `himmel worker` through the real binary and real HTTP: the Videos API
//! round trip, OpenAI-shaped errors for bad requests, back-pressure, a worker killed mid-job,
//! a restarted server, and many concurrent clients.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ffprobe;
use serde_json::{Value, json};

/// A running `himmel serve` (killed when dropped).
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(data: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_himmel"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data",
                data.to_str().unwrap(),
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("the server says where it listens")
                .unwrap();
            if let Some(address) = line.strip_prefix("listening on ") {
                break address.trim().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server with SIGTERM and waits for it.
    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Sends a request and returns the status and the body.
fn send(method: &str, url: &str, body: Option<&[u8]>) -> (u16, Vec<u8>, Option<String>) {
    send_typed(method, url, body, "application/json")
}

/// A multipart form of text `fields` and one file.
fn form(fields: &[(&str, &str)], file: (&str, &str, &[u8])) -> (Vec<u8>, String) {
    let boundary = "himmel-test-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .bytes(),
        );
    }
    let (name, file_name, bytes) = file;
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").bytes());
    body.extend(bytes);
    body.extend(format!("\r\n--{boundary}--\r\n").bytes());
    (body, format!("multipart/form-data; boundary={boundary}"))
}

fn send_typed(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    content_type: &str,
) -> (u16, Vec<u8>, Option<String>) {
    let agent = agent();
    let response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        ("POST", Some(body)) => agent
            .post(url)
            .header("content-type", content_type)
            .send(body),
        _ => unreachable!("{method}"),
    };
    let mut response = response.unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_string());
    let status = response.status().as_u16();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    (status, bytes, retry_after)
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

fn create(server: &Server, body: Value) -> (u16, Value) {
    let (status, bytes, _) = send(
        "POST",
        &server.url("/v1/videos"),
        Some(body.to_string().as_bytes()),
    );
    (status, json_of(&bytes))
}

fn get(server: &Server, id: &str) -> Value {
    let (status, bytes, _) = send("GET", &server.url(&format!("/v1/videos/{id}")), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    json_of(&bytes)
}

/// Polls job `id` until it is completed or failed.
fn wait(server: &Server, id: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let video = get(server, id);
        match video["status"].as_str().unwrap() {
            "completed" | "failed" => return video,
            _ if started.elapsed() > limit => panic!("job {id} did not finish: {video}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Asserts an OpenAI-shaped error with `status` whose message contains `words`.
fn assert_error(status: u16, body: &Value, expected: u16, words: &str) {
    assert_eq!(status, expected, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(words), "{message}");
    assert!(body["error"]["type"].is_string(), "{body}");
}

/// A quick job: one frame, two steps.
fn quick(prompt: &str) -> Value {
    json!({"prompt": prompt, "seconds": "0.0625", "steps": 2})
}

#[test]
fn the_videos_api_creates_lists_serves_and_deletes_videos() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let (status, video) = create(
        &server,
        json!({"prompt": "a red ball bounces on the grass", "seconds": "1", "seed": 3}),
    );
    assert_eq!(status, 200, "{video}");
    assert_eq!(
        (video["object"].as_str(), video["status"].as_str()),
        (Some("video"), Some("queued"))
    );
    assert_eq!(
        (video["size"].as_str(), video["seconds"].as_str()),
        (Some("64x64"), Some("1"))
    );
    let id = video["id"].as_str().unwrap().to_string();
    let done = wait(&server, &id, Duration::from_secs(60));
    assert_eq!(
        (done["status"].as_str(), done["progress"].as_u64()),
        (Some("completed"), Some(100)),
        "{done}"
    );
    assert!(done["completed_at"].as_i64().unwrap() >= done["created_at"].as_i64().unwrap());

    let (status, mp4, _) = send(
        "GET",
        &server.url(&format!("/v1/videos/{id}/content")),
        None,
    );
    assert_eq!(status, 200);
    let file = data.path().join("download.mp4");
    std::fs::write(&file, &mp4).unwrap();
    let probe = ffprobe(&file, "width,height,nb_read_frames");
    assert!(
        probe.contains("width=64") && probe.contains("nb_read_frames=17"),
        "{probe}"
    );
    let (status, png, _) = send(
        "GET",
        &server.url(&format!("/v1/videos/{id}/content?variant=thumbnail")),
        None,
    );
    assert_eq!((status, &png[1..4]), (200, &b"PNG"[..]));

    let (_, metrics, _) = send("GET", &server.url("/metrics"), None);
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    for line in [
        "himmel_jobs{status=\"completed\"} 1",
        "himmel_job_run_seconds_count 1",
        "himmel_denoise_step_seconds_count 20",
    ] {
        assert!(metrics.contains(line), "{metrics}");
    }
    let (_, listed, _) = send("GET", &server.url("/v1/videos?limit=10&order=desc"), None);
    let listed = json_of(&listed);
    assert_eq!(listed["object"], "list");
    assert_eq!(listed["data"][0]["id"].as_str(), Some(id.as_str()));

    let (status, deleted, _) = send("DELETE", &server.url(&format!("/v1/videos/{id}")), None);
    assert_eq!(
        (status, json_of(&deleted)["deleted"].as_bool()),
        (200, Some(true))
    );
    let (status, gone, _) = send("GET", &server.url(&format!("/v1/videos/{id}")), None);
    assert_error(status, &json_of(&gone), 404, "no video with id");
    assert!(
        std::fs::read_dir(data.path().join("videos"))
            .unwrap()
            .next()
            .is_none()
    );

    for (body, expected, words) in [
        (b"{not json".to_vec(), 400, "not a valid request"),
        (br#"{"prompt": 5}"#.to_vec(), 400, "invalid type"),
        (
            br#"{"prompt": "a", "colour": "red"}"#.to_vec(),
            400,
            "unknown field",
        ),
        (
            br#"{"prompt": "a", "size": "0x0"}"#.to_vec(),
            400,
            "width must be a multiple",
        ),
        (
            br#"{"prompt": "a", "size": "99999x99999"}"#.to_vec(),
            400,
            "between 16 and 512",
        ),
        (
            br#"{"prompt": "a", "seconds": -2}"#.to_vec(),
            400,
            "more than 0",
        ),
        (
            br#"{"prompt": "a", "model": "sora-2"}"#.to_vec(),
            400,
            "unknown model",
        ),
        (vec![b' '; 2 << 20], 413, "larger than"),
    ] {
        let (status, bytes, _) = send("POST", &server.url("/v1/videos"), Some(&body));
        assert_error(status, &json_of(&bytes), expected, words);
    }
    for path in [
        "/v1/videos/..%2F..%2Fetc%2Fpasswd",
        "/v1/videos/video_0123/content",
        "/v2/nothing",
    ] {
        let (status, bytes, _) = send("GET", &server.url(path), None);
        assert_error(status, &json_of(&bytes), 404, "");
    }
    // Still serving.
    let (status, _, _) = send("GET", &server.url("/healthz"), None);
    assert_eq!(status, 200);
    server.stop();
}

#[test]
fn sampler_settings_reach_the_model() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    // The thumbnail is the first frame before the watermark, so the same request gives the
    // same one.
    let thumbnail = |extra: Value| {
        let mut body = quick("a red ball bounces on the grass");
        body["seed"] = json!(5);
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, video) = create(&server, body);
        assert_eq!(status, 200, "{video}");
        let id = video["id"].as_str().unwrap();
        let done = wait(&server, id, Duration::from_secs(60));
        assert_eq!(done["status"].as_str(), Some("completed"), "{done}");
        let url = server.url(&format!("/v1/videos/{id}/content?variant=thumbnail"));
        send("GET", &url, None).1
    };
    let plain = thumbnail(json!({}));
    assert_eq!(thumbnail(json!({})), plain);
    for extra in [
        json!({"shift": 1.5}),
        json!({"boundary": 0}),
        json!({"expert_guidance": 1}),
        json!({"skip_guidance": 0}),
        json!({"skip_layer": 4}),
    ] {
        assert_ne!(thumbnail(extra.clone()), plain, "{extra}");
    }
    server.stop();
}

#[test]
fn api_keys_guard_the_api_when_configured() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &["--workers", "0", "--api-key", "k-123"]);
    let url = server.url("/v1/videos");
    let (status, bytes, _) = send("GET", &url, None);
    assert_error(status, &json_of(&bytes), 401, "API key");
    let response = agent()
        .get(&url)
        .header("authorization", "Bearer k-999")
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = agent()
        .get(&url)
        .header("authorization", "Bearer k-123")
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Health checks stay open for load balancers.
    let (status, _, _) = send("GET", &server.url("/healthz"), None);
    assert_eq!(status, 200);
}

#[test]
fn uploads_become_first_frames_and_finished_videos_can_be_remixed() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let still = data.path().join("still.png");
    common::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=red:s=64x64",
        "-frames:v",
        "1",
        still.to_str().unwrap(),
    ]);
    let png = std::fs::read(&still).unwrap();
    let fields = [
        ("prompt", "a red ball rolls on the grass"),
        ("seconds", "1"),
        ("seed", "4"),
    ];
    let (body, content_type) = form(&fields, ("input_reference", "still.png", &png));
    let (status, bytes, _) = send_typed(
        "POST",
        &server.url("/v1/videos"),
        Some(&body),
        &content_type,
    );
    let video = json_of(&bytes);
    assert_eq!(status, 200, "{video}");
    let id = video["id"].as_str().unwrap().to_string();
    assert_eq!(
        wait(&server, &id, Duration::from_secs(60))["status"],
        "completed"
    );

    for (file_name, bytes, words) in [
        ("notes.png", &b"not a picture"[..], "not an image"),
        ("tool.exe", &b"MZ"[..], "must be an image"),
    ] {
        let (body, content_type) = form(&fields, ("input_reference", file_name, bytes));
        let (status, bytes, _) = send_typed(
            "POST",
            &server.url("/v1/videos"),
            Some(&body),
            &content_type,
        );
        assert_error(status, &json_of(&bytes), 400, words);
    }

    // A clip upload is re-styled, or extended.
    let clip = data.path().join("clip.mp4");
    common::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x64:rate=16",
        "-frames:v",
        "17",
        "-pix_fmt",
        "yuv420p",
        clip.to_str().unwrap(),
    ]);
    let clip_bytes = std::fs::read(&clip).unwrap();
    for (seconds, extra, frames) in [
        ("1", ("strength", "0.5"), 17),
        ("0.5", ("extend", "forward"), 25),
    ] {
        let fields = [
            ("prompt", "a red ball rolls on the grass"),
            ("seconds", seconds),
            extra,
        ];
        let (body, content_type) = form(&fields, ("input_reference", "clip.mp4", &clip_bytes));
        let (status, bytes, _) = send_typed(
            "POST",
            &server.url("/v1/videos"),
            Some(&body),
            &content_type,
        );
        let video = json_of(&bytes);
        assert_eq!(status, 200, "{video}");
        let id = video["id"].as_str().unwrap();
        let done = wait(&server, id, Duration::from_secs(60));
        assert_eq!(done["status"], "completed", "{done}");
        let (_, mp4, _) = send(
            "GET",
            &server.url(&format!("/v1/videos/{id}/content")),
            None,
        );
        let file = data.path().join(format!("{id}.mp4"));
        std::fs::write(&file, &mp4).unwrap();
        assert!(
            ffprobe(&file, "nb_read_frames").contains(&format!("nb_read_frames={frames}")),
            "{extra:?}"
        );
    }

    let remix = json!({"prompt": "a blue cube slides over the sand"});
    let (status, bytes, _) = send(
        "POST",
        &server.url(&format!("/v1/videos/{id}/remix")),
        Some(remix.to_string().as_bytes()),
    );
    let remixed = json_of(&bytes);
    assert_eq!(status, 200, "{remixed}");
    assert_eq!(remixed["remixed_from_video_id"].as_str(), Some(id.as_str()));
    let remixed_id = remixed["id"].as_str().unwrap();
    let done = wait(&server, remixed_id, Duration::from_secs(60));
    assert_eq!(
        (done["status"].as_str(), done["size"].as_str()),
        (Some("completed"), Some("64x64")),
        "{done}"
    );
}

#[test]
fn editing_tasks_run_on_finished_videos() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let frames_of_video = |id: &str| {
        let (status, mp4, _) = send(
            "GET",
            &server.url(&format!("/v1/videos/{id}/content")),
            None,
        );
        assert_eq!(status, 200);
        let file = data.path().join(format!("{id}.mp4"));
        std::fs::write(&file, &mp4).unwrap();
        let probe = ffprobe(&file, "nb_read_frames");
        probe
            .trim()
            .trim_start_matches("nb_read_frames=")
            .parse::<usize>()
            .unwrap()
    };
    let finish = |body: Value| -> String {
        let (status, video) = create(&server, body);
        assert_eq!(status, 200, "{video}");
        let id = video["id"].as_str().unwrap().to_string();
        assert_eq!(
            wait(&server, &id, Duration::from_secs(60))["status"],
            "completed"
        );
        id
    };
    let base = finish(json!({"prompt": "a red ball rolls on the grass", "seconds": "1"}));
    assert_eq!(frames_of_video(&base), 17);
    let cases = [
        (
            json!({"prompt": "it rolls on", "seconds": "0.5", "extend": {"video_id": base}}),
            25,
        ),
        (
            json!({"prompt": "it rolls in", "seconds": "0.5", "extend": {"video_id": base, "direction": "backward"}}),
            25,
        ),
        (
            json!({"prompt": "a ball", "seconds": "1", "loop": true}),
            16,
        ),
        (
            json!({"prompt": "a ball", "seconds": "0.5", "connect": {"from_video_id": base, "to_video_id": base}}),
            10,
        ),
    ];
    for (body, frames) in cases {
        let id = finish(body.clone());
        assert_eq!(frames_of_video(&id), frames, "{body}");
    }
    let missing = "video_0123456789abcdef01234567";
    let (status, error) = create(
        &server,
        json!({"prompt": "a", "extend": {"video_id": missing}}),
    );
    assert_error(status, &error, 404, "no video with id");
    let (status, error) = create(
        &server,
        json!({"prompt": "a", "loop": true, "extend": {"video_id": base}}),
    );
    assert_error(status, &error, 400, "at most one of");
}

#[test]
fn events_stream_progress_and_previews_until_the_video_is_done() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let (_, video) = create(
        &server,
        json!({"prompt": "a red ball rolls to the right", "seconds": "3"}),
    );
    let id = video["id"].as_str().unwrap().to_string();
    let mut response = agent()
        .get(&server.url(&format!("/v1/videos/{id}/events")))
        .call()
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap(),
        "text/event-stream"
    );
    // The stream ends by itself when the video is done.
    let text = response.body_mut().read_to_string().unwrap();
    let mut kinds = Vec::new();
    let mut progress = Vec::new();
    let mut last = Value::Null;
    let mut event = String::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_string();
            kinds.push(event.clone());
        } else if let Some(data) = line.strip_prefix("data: ")
            && event == "progress"
        {
            last = json_of(data.as_bytes());
            progress.push(last["progress"].as_u64().unwrap());
        }
    }
    assert_eq!(last["status"], "completed", "{text}");
    assert!(
        progress.windows(2).all(|p| p[0] <= p[1]) && progress.len() >= 3,
        "{progress:?}"
    );
    assert!(kinds.iter().any(|k| k == "preview"), "{kinds:?}");
    let preview_line = text
        .lines()
        .find(|line| line.contains("data:image/png;base64,"))
        .expect("a preview event carries its frames");
    assert!(preview_line.contains("variant=preview"), "{preview_line}");
    let (status, png, _) = send(
        "GET",
        &server.url(&format!("/v1/videos/{id}/content?variant=preview")),
        None,
    );
    assert_eq!((status, &png[1..4]), (200, &b"PNG"[..]));
    let (status, jpeg, _) = send(
        "GET",
        &server.url(&format!("/v1/videos/{id}/content?variant=spritesheet")),
        None,
    );
    assert_eq!((status, &jpeg[..2]), (200, &[0xFF, 0xD8][..]));
}

#[test]
fn a_full_queue_answers_429_and_a_restart_loses_no_job() {
    let data = tempfile::tempdir().unwrap();
    // No workers: jobs wait.
    let server = Server::start(data.path(), &["--workers", "0", "--max-queued", "3"]);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let (status, video) = create(&server, quick(&format!("clip {i}")));
            assert_eq!(status, 200, "{video}");
            video["id"].as_str().unwrap().to_string()
        })
        .collect();
    let (status, bytes, retry_after) = send(
        "POST",
        &server.url("/v1/videos"),
        Some(quick("one more").to_string().as_bytes()),
    );
    assert_error(status, &json_of(&bytes), 429, "queue is full");
    assert!(retry_after.is_some());
    let (_, metrics, _) = send("GET", &server.url("/metrics"), None);
    assert!(String::from_utf8_lossy(&metrics).contains("himmel_queue_depth 3"));
    server.stop();

    // Restarted with a worker, then killed while it runs a longer job.
    let server = Server::start(data.path(), &["--lease-seconds", "1"]);
    let (_, long) = create(
        &server,
        json!({"prompt": "a ball rolls on", "seconds": "4"}),
    );
    let long = long["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    while get(&server, &long)["status"] != "in_progress" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the long job never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server); // SIGKILL

    // Restarted again: every job is done, once.
    let server = Server::start(data.path(), &["--lease-seconds", "1"]);
    for id in ids.iter().chain([&long]) {
        assert_eq!(
            wait(&server, id, Duration::from_secs(60))["status"],
            "completed"
        );
    }
    let (_, listed, _) = send("GET", &server.url("/v1/videos?limit=100"), None);
    let listed = json_of(&listed);
    let mut listed: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|video| video["id"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut expected: Vec<&str> = ids.iter().chain([&long]).map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(listed, expected);
}

#[test]
fn deleting_a_running_job_cancels_it() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let (_, long) = create(
        &server,
        json!({"prompt": "a ball rolls on and on", "seconds": "10"}),
    );
    let long = long["id"].as_str().unwrap().to_string();
    while get(&server, &long)["status"] != "in_progress" {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _, _) = send("DELETE", &server.url(&format!("/v1/videos/{long}")), None);
    assert_eq!(status, 200);
    // The worker drops it and goes on with the next job; nothing of the deleted one stays.
    let (_, next) = create(&server, quick("the next one"));
    let next = next["id"].as_str().unwrap().to_string();
    assert_eq!(
        wait(&server, &next, Duration::from_secs(60))["status"],
        "completed"
    );
    let left: Vec<String> = std::fs::read_dir(data.path().join("videos"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&long))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A PostgreSQL connection string to a fresh schema of the test server.
fn postgres_schema() -> String {
    let url = std::env::var("HIMMEL_TEST_POSTGRES").expect(
        "set HIMMEL_TEST_POSTGRES to a PostgreSQL connection string (bash .ci/run starts one)",
    );
    let schema = format!("serve_{}", std::process::id());
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .unwrap();
    format!("{url} options='-c search_path={schema}'")
}

#[test]
fn a_job_whose_worker_is_killed_is_finished_by_another() {
    killed_worker(None);
}

#[test]
fn a_job_whose_worker_is_killed_is_finished_by_another_with_postgres() {
    killed_worker(Some(postgres_schema()));
}

/// A worker is killed with SIGKILL mid-job; another takes the job over once the lease ends.
fn killed_worker(db: Option<String>) {
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap();
    let mut queue_args = vec!["--lease-seconds", "1"];
    if let Some(db) = &db {
        queue_args.extend(["--db", db.as_str()]);
    }
    let server = Server::start(
        data.path(),
        &[&["--workers", "0"][..], &queue_args].concat(),
    );
    // Several windows, so the first worker is still at it when it is killed.
    let (_, video) = create(
        &server,
        json!({"prompt": "a red ball rolls to the right", "seconds": "6"}),
    );
    let id = video["id"].as_str().unwrap().to_string();
    let worker = || {
        Command::new(env!("CARGO_BIN_EXE_himmel"))
            .args(["worker", "--data", data_arg])
            .args(&queue_args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = worker();
    let started = Instant::now();
    while get(&server, &id)["status"] != "in_progress" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker never started the job"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert_eq!(get(&server, &id)["status"], "in_progress");
    let mut second = worker();
    let done = wait(&server, &id, Duration::from_secs(120));
    second.kill().unwrap();
    second.wait().unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    let (status, _, _) = send(
        "GET",
        &server.url(&format!("/v1/videos/{id}/content")),
        None,
    );
    assert_eq!(status, 200);
}

#[test]
fn fifty_concurrent_clients_all_get_their_videos() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &["--max-queued", "100"]);
    std::thread::scope(|scope| {
        for client in 0..50 {
            let server = &server;
            scope.spawn(move || {
                let (status, video) = create(server, quick(&format!("a ball number {client}")));
                assert_eq!(status, 200, "{video}");
                let id = video["id"].as_str().unwrap();
                let done = wait(server, id, Duration::from_secs(240));
                assert_eq!(done["status"], "completed", "{done}");
                let (status, bytes, _) = send(
                    "GET",
                    &server.url(&format!("/v1/videos/{id}/content")),
                    None,
                );
                assert!(status == 200 && bytes.len() > 100);
            });
        }
    });
}

#[test]
fn the_official_openai_python_sdk_drives_the_api() {
    let python = std::env::var("HIMMEL_OPENAI_PYTHON").expect(
        "set HIMMEL_OPENAI_PYTHON to a Python that has the openai package (bash .ci/run installs one)",
    );
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/openai_videos.py");
    let out = data.path().join("sdk.mp4");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&server.base)
        .arg(&out)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("refused 400 model_not_found"), "{report}");
    let probe = ffprobe(&out, "width,height,nb_read_frames");
    assert!(
        probe.contains("width=64") && probe.contains("nb_read_frames=17"),
        "{probe}"
    );
}

#[test]
fn the_web_page_makes_a_video_in_a_real_browser() {
    let modules = std::env::var("HIMMEL_TEST_PLAYWRIGHT").expect(
        "set HIMMEL_TEST_PLAYWRIGHT to a node_modules folder with playwright-core (bash .ci/run installs one)",
    );
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let (status, page, _) = send("GET", &server.url("/"), None);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("<form id=\"create\">"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/web_page.cjs");
    let output = Command::new("node")
        .arg(&script)
        .arg(&server.base)
        .env("NODE_PATH", &modules)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && report.contains("video duration"),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_wan_model_is_served_too() {
    let data = tempfile::tempdir().unwrap();
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan/pipeline_tiny");
    // In int8 (bf16 where the CPU lacks AVX2 and VNNI): the same engine either way.
    let server = Server::start(
        data.path(),
        &["--model", model.to_str().unwrap(), "--dtype", "int8"],
    );
    let (status, video) = create(
        &server,
        json!({"prompt": "a red ball", "model": "pipeline_tiny", "size": "32x32", "seconds": "0.3", "steps": 2}),
    );
    assert_eq!(status, 200, "{video}");
    let id = video["id"].as_str().unwrap();
    let done = wait(&server, id, Duration::from_secs(120));
    assert_eq!(done["status"], "completed", "{done}");
    let (_, mp4, _) = send(
        "GET",
        &server.url(&format!("/v1/videos/{id}/content")),
        None,
    );
    let file = data.path().join("wan.mp4");
    std::fs::write(&file, &mp4).unwrap();
    let probe = ffprobe(&file, "width,height,nb_read_frames");
    assert!(
        probe.contains("width=32") && probe.contains("nb_read_frames=5"),
        "{probe}"
    );
}
