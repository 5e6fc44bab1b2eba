// Uses the platform's API docs (Swagger UI at the gateway's /api/docs) in headless Chromium
// (Playwright), as a developer would: the page renders the merged document, "Authorize" takes
// a bearer token, and "Try it out" on GET /patients calls the API through the gateway.
// Prints the status the UI shows. Screenshots go to $SCREENSHOT_DIR.
//
// Env: GATEWAY_URL, TOKEN, CHROMIUM, SCREENSHOT_DIR; NODE_PATH must reach playwright-core.
const { chromium } = require("playwright-core");

(async () => {

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const shots = env("SCREENSHOT_DIR");
let step = 0;

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
page.setDefaultTimeout(30_000);
const shot = async (name) => page.screenshot({ path: `${shots}/docs-${String(++step).padStart(2, "0")}-${name}.png`, fullPage: true });

try {
  await page.goto(`${env("GATEWAY_URL")}/api/docs`);
  await page.locator(".swagger-ui .info .title").filter({ hasText: "Patient platform API" }).waitFor();
  await page.locator("#operations-patients-list").waitFor();
  await shot("rendered");

  await page.locator("button.authorize").first().click();
  const bearer = page.locator(".auth-container").filter({ hasText: "bearerAuth" });
  await bearer.locator("input").first().fill(env("TOKEN"));
  await bearer.locator("button.authorize").click();
  await shot("authorized");
  await page.locator("button.btn-done").first().click();

  const list = page.locator("#operations-patients-list");
  await list.locator(".opblock-summary").first().click();
  // The gateway's UI opens operations ready to try (tryItOutEnabled): Execute is there.
  await list.locator("button.execute").click();
  const status = list.locator(".live-responses-table .response .response-col_status").first();
  await status.waitFor();
  await shot("tried");
  console.log(`status ${(await status.innerText()).trim()}`);
} catch (err) {
  await shot("failure").catch(() => {});
  console.error(err);
  process.exitCode = 1;
} finally {
  await browser.close();
}

})();
