// What every browser journey shares: required settings from the environment, headless
// Chromium started the way this machine allows (no background networking: the network is
// closed), one page, numbered screenshots into $SCREENSHOT_DIR, and a run wrapper that keeps a
// screenshot of a failure and sets the exit code.
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
  return { page, shot, run };
}

module.exports = { env, session };
