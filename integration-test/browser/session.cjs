// What every browser journey shares: required settings from the environment, headless
// Chromium started the way this machine allows (no background networking: the network is
// closed), one page, numbered screenshots into $SCREENSHOT_DIR, a run wrapper that keeps a
// screenshot of a failure and sets the exit code, and `appear`, which waits for an element and
// reloads a view whose code failed to load.
const { chromium } = require("playwright-core");

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

async function session(prefix, viewport) {
  const browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const page = await browser.newPage({ viewport });
  page.setDefaultTimeout(30_000);
  const shots = env("SCREENSHOT_DIR");
  let step = 0;
  const shot = async (name) =>
    page.screenshot({ path: `${shots}/${prefix}-${String(++step).padStart(2, "0")}-${name}.png`, fullPage: true });
  // The admin console loads each view's code when it is first shown; a fetch of it that fails
  // (a busy server) leaves only an error and a Reload link. Reload, as a person would, and look
  // again (twice at most).
  const importFailed = page.getByText(/Failed to fetch dynamically imported module|error loading dynamically imported module/);
  const appear = async (locator) => {
    for (let reloads = 0; reloads < 2; reloads++) {
      await locator.or(importFailed).first().waitFor();
      if (!(await importFailed.count())) return locator;
      console.error("a view's code failed to load; reloading");
      await page.reload();
    }
    await locator.first().waitFor();
    return locator;
  };
  const run = async (steps) => {
    try {
      await steps();
    } catch (err) {
      await shot("failure").catch(() => {});
      console.error(err);
      process.exitCode = 1;
    } finally {
      await browser.close();
    }
  };
  return { page, shot, run, appear };
}

module.exports = { env, session };
