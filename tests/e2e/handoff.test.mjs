// Live handoff in real Chromium: a visitor in the kiosk page asks for a
// person; an agent logs in to the console page, gets the chat, replies; the
// visitor sees it and rates the chat. HTML/script payloads stay inert in
// both pages.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { startEdgeNode, startController, adminCall, launchBrowser, botSays, SHOTS } from "./helpers.mjs";

let ctl, node, browser;
before(async () => {
  ctl = await startController();
  await adminCall(ctl, "POST", "/api/v1/agents", {
    username: "grace", display_name: "Grace", role: "agent",
    password: "a long enough password", languages: ["en", "zh"], capacity: 3,
  });
  // A supervisor adds a canned response the agent will use by shortcut.
  await adminCall(ctl, "POST", "/api/v1/agents", {
    username: "sam", display_name: "Sam", role: "supervisor",
    password: "a long enough password", languages: ["en"], capacity: 1,
  });
  const login = await fetch(ctl.url + "/console/api/login", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: "sam", password: "a long enough password" }),
  });
  const cookie = login.headers.get("set-cookie").split(";")[0];
  const { csrf } = await login.json();
  const put = await fetch(ctl.url + "/console/api/canned", {
    method: "POST",
    headers: { "content-type": "application/json", cookie, "x-csrf-token": csrf },
    body: JSON.stringify({ lang: "en", shortcut: "atm", text: "Please tell me which ATM kept your card." }),
  });
  if (!put.ok) throw new Error(`canned: ${put.status}`);
  const { token } = await adminCall(ctl, "POST", "/api/v1/tokens", { node_id: "branch-e2e" });
  const dir = mkdtempSync(join(tmpdir(), "edgedesk-node-"));
  node = await startEdgeNode({
    EDGEDESK_CLOUD__ENABLED: "true",
    EDGEDESK_CLOUD__NODE_ID: JSON.stringify("branch-e2e"),
    EDGEDESK_CLOUD__ENROLL_TOKEN: JSON.stringify(token),
    EDGEDESK_CLOUD__CONTROLLER_URL: JSON.stringify(ctl.url),
    EDGEDESK_CLOUD__IDENTITY_PATH: JSON.stringify(join(dir, "identity.json")),
    EDGEDESK_CLOUD__HEARTBEAT_SECS: "1",
    EDGEDESK_CLOUD__ACK_TIMEOUT_SECS: "2",
  });
  browser = await launchBrowser();
  // Wait until the node is online at the controller.
  for (let i = 0; i < 100; i++) {
    const n = await adminCall(ctl, "GET", "/api/v1/nodes").catch(() => []);
    if (n.some((x) => x.id === "branch-e2e" && x.online)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
});
after(async () => { await browser?.close(); await node?.stop(); await ctl?.stop(); });

test("a visitor reaches an agent, they talk, the visitor rates the chat; payloads stay inert", async () => {
  const errors = [];
  const agentCtx = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const agent = await agentCtx.newPage();
  agent.on("pageerror", (e) => errors.push("agent: " + e.message));
  await agent.goto(ctl.url + "/console");
  await agent.getByLabel("Username", { exact: true }).fill("grace");
  await agent.getByLabel("Password", { exact: true }).fill("a long enough password");
  await agent.getByRole("button", { name: "Log in" }).click();
  await agent.locator("#who", { hasText: "Grace" }).waitFor();
  await agent.locator("#conn", { hasText: "Connected" }).waitFor();

  const visitorCtx = await browser.newContext({ viewport: { width: 900, height: 1200 } });
  const visitor = await visitorCtx.newPage();
  visitor.on("pageerror", (e) => errors.push("visitor: " + e.message));
  await visitor.goto(node.url);
  await botSays(visitor, "branch assistant");
  await visitor.locator("#input").fill("my card was swallowed");
  await visitor.keyboard.press("Enter");
  await botSays(visitor, "");
  await visitor.locator("#input").fill("I want to talk to a human");
  await visitor.keyboard.press("Enter");

  // The agent gets the chat with the conversation so far.
  await agent.locator("#chats button").first().waitFor({ timeout: 15000 });
  await agent.locator("#lines li", { hasText: "my card was swallowed" }).waitFor();
  await visitor.locator(".msg", { hasText: "Grace has joined" }).waitFor({ timeout: 15000 });

  // Agent → visitor, with an HTML payload that must stay text.
  const fromAgent = `Hello! <img src=x onerror="window.__pwned=1"> Which ATM?`;
  await agent.locator("#reply-text").fill(fromAgent);
  await agent.getByRole("button", { name: "Send" }).click();
  await visitor.locator(".msg.agent", { hasText: "Which ATM?" }).waitFor({ timeout: 15000 });
  assert.equal(await visitor.locator(".msg.agent").last().innerText().then((t) => t.includes('<img src=x onerror="window.__pwned=1">')), true);

  // Visitor → agent, with a script payload.
  const fromVisitor = `<script>window.__pwned=2</script> the one at the entrance`;
  await visitor.locator("#input").fill(fromVisitor);
  await visitor.keyboard.press("Enter");
  await agent.locator("#lines li.visitor", { hasText: "the one at the entrance" }).waitFor({ timeout: 15000 });
  assert.ok((await agent.locator("#lines li.visitor").last().innerText()).includes("<script>window.__pwned=2</script>"));
  await agent.screenshot({ path: join(SHOTS, "console-agent.png") });

  for (const page of [agent, visitor]) {
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.equal(await page.locator("#lines img, #lines script, .log img, .log script").count(), 0);
  }

  // A canned response by shortcut.
  await agent.locator("#reply-text").fill("/atm");
  await agent.getByRole("button", { name: "Send" }).click();
  await visitor.locator(".msg.agent", { hasText: "Please tell me which ATM kept your card." }).waitFor({ timeout: 15000 });

  // The agent closes; the visitor rates.
  await agent.locator("#resolution").fill("card returned at the desk");
  await agent.getByRole("button", { name: "Close chat" }).click();
  await visitor.locator(".msg", { hasText: "How would you rate it?" }).waitFor({ timeout: 15000 });
  await visitor.getByRole("button", { name: "★★★★★" }).click();
  await botSays(visitor, "Thank you for your feedback");
  await visitor.screenshot({ path: join(SHOTS, "kiosk-after-agent.png") });

  // History search finds the conversation and shows its transcript.
  await agent.locator("#search-q").fill("swallowed");
  await agent.getByRole("button", { name: "Search" }).click();
  await agent.locator("#results button").first().click();
  await agent.locator("#lines li.visitor", { hasText: "my card was swallowed" }).waitFor();
  await agent.locator("#chat-head", { hasText: "card returned at the desk" }).waitFor();
  // The filters narrow the search: this chat reached a person.
  await agent.locator("#search details summary").click();
  await agent.locator("#search-escalated").selectOption("false");
  await agent.getByRole("button", { name: "Search" }).click();
  await agent.locator("#results li").first().waitFor({ state: "detached" });
  assert.equal(await agent.locator("#results li").count(), 0, "not a bot-only chat");
  await agent.locator("#search-escalated").selectOption("true");
  await agent.locator("#search-node").fill("no-such-branch");
  await agent.getByRole("button", { name: "Search" }).click();
  await agent.waitForTimeout(300);
  assert.equal(await agent.locator("#results li").count(), 0, "another branch");
  await agent.locator("#search-node").fill("");
  await agent.getByRole("button", { name: "Search" }).click();
  await agent.locator("#results li").first().waitFor();
  assert.equal(await agent.locator("#results li").count(), 1);
  assert.deepEqual(errors, []);
  await agentCtx.close();
  await visitorCtx.close();
});

test("a supervisor manages canned responses in the console page", async () => {
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(ctl.url + "/console");
  await page.getByLabel("Username", { exact: true }).fill("sam");
  await page.getByLabel("Password", { exact: true }).fill("a long enough password");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.locator("#manage").waitFor();
  assert.equal(await page.locator("#agent-form").isHidden(), true, "only admins manage agents");
  await page.getByLabel("Shortcut").fill("bye");
  await page.getByLabel("Canned text").fill("<b>Thanks</b> for visiting!");
  await page.getByRole("button", { name: "Save response" }).click();
  await page.locator("#canned-list li", { hasText: "/bye: <b>Thanks</b> for visiting!" }).waitFor();
  assert.equal(await page.locator("#canned-list b").count(), 0, "stored text is shown as text");
  assert.deepEqual(errors, []);
  await ctx.close();
});
