// Drives the Keycloak admin console in headless Chromium (Playwright), as an administrator
// would: `grant <user> <password> <role>` creates the user, sets a permanent password and
// assigns the realm role; `revoke <user> <role>` unassigns it. A screenshot after every step
// goes to $SCREENSHOT_DIR.
//
// Env: KC_URL, KC_ADMIN, KC_ADMIN_PASSWORD, REALM, CHROMIUM, SCREENSHOT_DIR; NODE_PATH must
// reach playwright-core (the test harness installs it into the cache).
const { env, session } = require("./session.cjs");

(async () => {

const [command, username, ...rest] = process.argv.slice(2);
const kc = env("KC_URL");
const realm = env("REALM");
const { page, shot, run, appear } = await session(command, { width: 1400, height: 900 });

await run(async () => {
  await page.goto(`${kc}/admin/master/console/#/${realm}/users`);
  await page.locator("#username").fill(env("KC_ADMIN"));
  await page.locator("#password").fill(env("KC_ADMIN_PASSWORD"));
  await shot("login");
  await page.locator("#kc-login").click();
  await appear(page.getByRole("heading", { name: "Users" }));
  await shot("users");

  if (command === "grant") {
    const [password, role] = rest;
    await page.getByRole("button", { name: /^(Add user|Create new user)$/ }).first().click();
    await page.locator("input#username, input[name='username']").first().fill(username);
    await page.locator("input#email, input[name='email']").first().fill(`${username}@example.com`);
    await page.locator("input#firstName, input[name='firstName']").first().fill("Console");
    await page.locator("input#lastName, input[name='lastName']").first().fill("Created");
    await shot("new-user-form");
    await page.getByRole("button", { name: "Create" }).click();
    await page.getByText("The user has been created").waitFor();
    await shot("user-created");

    await (await appear(page.getByRole("tab", { name: "Credentials" }))).click();
    await page.getByRole("button", { name: "Set password" }).click();
    const dialog = page.getByRole("dialog");
    await dialog.locator("input#password, input[name='password']").first().fill(password);
    await dialog.locator("input#passwordConfirmation, input[name='passwordConfirmation']").first().fill(password);
    // "Temporary" is on by default: the user would have to change the password first.
    const temporary = dialog.locator("input[type='checkbox']").first();
    if (await temporary.isChecked()) await dialog.getByText("On", { exact: true }).click();
    if (await temporary.isChecked()) throw new Error("could not switch off Temporary");
    await shot("password-dialog");
    await dialog.getByRole("button", { name: "Save" }).click();
    await page.getByRole("dialog").getByRole("button", { name: /^(Save password|Set password|Confirm)$/ }).click();
    await page.getByText("The password has been set successfully").waitFor();
    await shot("password-set");

    await (await appear(page.getByRole("tab", { name: "Role mapping" }))).click();
    await page.getByRole("button", { name: "Assign role" }).first().click();
    const realmRoles = page.getByRole("menuitem", { name: /realm roles/i });
    if (await realmRoles.count()) await realmRoles.first().click();
    const assign = page.getByRole("dialog");
    await assign.getByPlaceholder(/search/i).first().fill(role);
    await assign.getByPlaceholder(/search/i).first().press("Enter");
    await assign.getByRole("row", { name: new RegExp(`\\b${role}\\b`) }).getByRole("checkbox").first().check();
    await shot("assign-role");
    await assign.getByRole("button", { name: "Assign" }).click();
    await assign.waitFor({ state: "hidden" });
    await page.getByRole("row", { name: new RegExp(`\\b${role}\\b`) }).first().waitFor();
    await shot("role-assigned");
  } else if (command === "revoke") {
    const [role] = rest;
    await page.getByPlaceholder(/search user/i).first().fill(username);
    await page.getByPlaceholder(/search user/i).first().press("Enter");
    await page.getByRole("link", { name: username, exact: true }).click();
    await (await appear(page.getByRole("tab", { name: "Role mapping" }))).click();
    const row = page.getByRole("row", { name: new RegExp(`\\b${role}\\b`) });
    await row.getByRole("checkbox").first().check();
    await shot("role-selected");
    await page.getByRole("button", { name: "Unassign" }).first().click();
    await page.getByRole("dialog").getByRole("button", { name: /^(Remove|Unassign|Confirm)$/ }).click();
    await row.first().waitFor({ state: "detached" });
    await shot("role-removed");
  } else {
    throw new Error(`unknown command ${command}`);
  }
});

})();
