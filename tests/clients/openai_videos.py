"""The official OpenAI Python SDK against a running `himmel serve`: create a video, poll it to
completion, download it, list and delete it, and get a proper error for an invalid request.

    python openai_videos.py BASE_URL OUT.mp4

Run by crates/himmel-cli/tests/serve.rs (with the interpreter .ci/run installs the SDK into);
prints one line per step and exits non-zero on the first failure.
"""

import sys
import time
import warnings

import openai

# The SDK warns that OpenAI's own Sora service is being retired; this is not that service.
warnings.filterwarnings("ignore", category=DeprecationWarning)

base_url, out = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-needed")

video = client.videos.create(prompt="a red ball bounces on the grass", model="himmel-mini", seconds="1", size="64x64")
print("created", video.id, video.status)
assert video.object == "video" and video.status in ("queued", "in_progress"), video

deadline = time.time() + 120
while video.status not in ("completed", "failed"):
    assert time.time() < deadline, f"not finished: {video}"
    time.sleep(0.2)
    video = client.videos.retrieve(video.id)
print("finished", video.status, video.progress)
assert video.status == "completed" and video.progress == 100, video

content = client.videos.download_content(video.id, variant="video")
content.write_to_file(out)
print("downloaded", out)

listed = client.videos.list(limit=10)
assert video.id in [v.id for v in listed.data], listed
print("listed", len(listed.data))

deleted = client.videos.delete(video.id)
assert deleted.deleted and deleted.id == video.id, deleted
try:
    client.videos.retrieve(video.id)
    raise AssertionError("a deleted video was still there")
except openai.NotFoundError as error:
    print("gone", error.status_code)

try:
    client.videos.create(prompt="a ball", model="sora-2")
    raise AssertionError("an unknown model was accepted")
except openai.BadRequestError as error:
    body = error.body
    assert error.status_code == 400 and "unknown model" in body["message"], body
    assert body["param"] == "model" and body["type"] == "invalid_request_error", body
    print("refused", error.status_code, body["code"])
