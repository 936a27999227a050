// Drives `himmel serve`'s web page in headless Chromium (Debian's /usr/bin/chromium) with
// Playwright: submit a prompt, watch the progress rise, and see a <video> that loads.
//
//     NODE_PATH=DIR/node_modules node web_page.cjs BASE_URL
//
// Run by crates/himmel-cli/tests/serve.rs with the playwright-core that .ci/run installs;
// prints one line per step and exits non-zero on the first failure.

const { chromium } = require("playwright-core");

const base = process.argv[2];

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.HIMMEL_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  try {
    const page = await browser.newPage();
    const problems = [];
    page.on("pageerror", (error) => problems.push(error.message));
    await page.goto(base + "/");
    await page.fill("#prompt", "a red ball rolls to the right on the grass");
    await page.fill("#seconds", "3");
    // Sampler settings reach the request.
    const posted = [];
    page.on("request", (request) => {
      if (request.method() === "POST") posted.push(request.postData() || "");
    });
    await page.click("summary");
    await page.fill("#steps", "8");
    await page.fill("#guidance", "6");
    await page.click("#generate");
    console.log("submitted");
    await page.waitForFunction(() => document.querySelectorAll("#videos .video").length >= 1);
    const form = posted.join("");
    for (const [name, value] of [["steps", "8"], ["guidance", "6"]]) {
      if (!form.includes(`name="${name}"\r\n\r\n${value}`)) throw new Error(`the request lacks ${name}=${value}`);
    }
    if (form.includes('name="shift"')) throw new Error("a blank sampler field was sent");
    console.log("sampler settings sent");

    // Progress rises while the video is made.
    const bar = page.locator("#videos .video progress").first();
    await bar.waitFor();
    const seen = new Set();
    const deadline = Date.now() + 120000;
    while (Date.now() < deadline) {
      seen.add(Number(await bar.getAttribute("value")));
      if ((await page.locator("#videos video").count()) > 0) break;
      await page.waitForTimeout(100);
    }
    const values = [...seen].sort((a, b) => a - b);
    console.log("progress seen", values.join(" "));
    if (values.filter((v) => v > 0 && v < 100).length < 1) throw new Error("no progress between 0 and 100");

    // The finished video loads and has a duration.
    const duration = await page.locator("#videos video").first().evaluate(
      (video) =>
        new Promise((resolve, reject) => {
          if (video.readyState >= 1) return resolve(video.duration);
          video.addEventListener("loadedmetadata", () => resolve(video.duration));
          video.addEventListener("error", () => reject(new Error("the video does not load")));
        }),
    );
    console.log("video duration", duration);
    if (!(duration > 0)) throw new Error("the video has no duration");

    // Extending the finished video makes a longer one.
    await page.click("#videos .video button:has-text('Extend')");
    await page.waitForFunction(() => document.querySelectorAll("#videos .video").length >= 2);
    console.log("extension queued");
    if (problems.length) throw new Error("page errors: " + problems.join("; "));
    console.log("ok");
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
