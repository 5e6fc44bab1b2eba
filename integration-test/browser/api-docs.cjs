// Uses the platform's API docs (Swagger UI at the gateway's /api/docs) in headless Chromium
// (Playwright), as a developer would: the page renders the merged document, "Authorize" takes
// a bearer token, and "Try it out" on GET /patients calls the API through the gateway.
// Prints the status the UI shows. Screenshots go to $SCREENSHOT_DIR.
//
// Env: GATEWAY_URL, TOKEN, CHROMIUM, SCREENSHOT_DIR; NODE_PATH must reach playwright-core.
const { env, session } = require("./session.cjs");

(async () => {

const { page, shot, run } = await session("docs", { width: 1400, height: 1000 });

await run(async () => {
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
});

})();
