// The agents' console and live handoff in real Chromium, against a real
// controller and a real enrolled edge node. Every check is of what is on
// screen (visible, inside the viewport), and each main step is saved as a
// screenshot in build/e2e/ (console-*.png, kiosk-*.png).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startController, startBranch, adminCall, ctlFetch, launchBrowser, botSays, assertOnScreen, shot, waitUntil, publishVersion, ROOT } from "./helpers.mjs";

const PASSWORD = "a long enough password";
let ctl, node, browser;

before(async () => {
  // Training runs use the real training script on the repository's data;
  // every label trains (none held out), so one label is enough to train.
  ctl = await startController({
    EDGEDESK_CC_TRAINING__COMMAND: JSON.stringify([process.env.EDGEDESK_TRAIN_PYTHON || "python3", join(ROOT, "scripts", "train_model.py")]),
    EDGEDESK_CC_TRAINING__DATA_DIR: JSON.stringify(join(ROOT, "data")),
    EDGEDESK_CC_TRAINING__HELD_OUT_FRACTION: "0",
    EDGEDESK_CC_TRAINING__ENCODER_DIR: JSON.stringify(join(ROOT, "build", "models", "e5")),
    // Every agent's label comes up for a supervisor's review.
    EDGEDESK_CC_LEARNING__REVIEW_FRACTION: "1",
  });
  for (const [username, display_name, role, languages, capacity] of [
    ["grace", "Grace Hopper", "agent", ["en", "zh"], 3],
    ["sam", "Sam Supervisor", "supervisor", ["en"], 1],
  ]) {
    await adminCall(ctl, "POST", "/api/v1/agents", { username, display_name, role, password: PASSWORD, languages, capacity });
  }
  // The supervisor's canned responses, used by the agent's picker below.
  const login = await ctlFetch(ctl, "/console/api/login", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: "sam", password: PASSWORD }),
  });
  const cookie = login.headers.get("set-cookie").split(";")[0];
  const { csrf } = await login.json();
  for (const [shortcut, text] of [["atm", "Please tell me which ATM kept your card."], ["hours", "We are open 9:00 to 17:00."]]) {
    const put = await ctlFetch(ctl, "/console/api/canned", {
      method: "POST", headers: { "content-type": "application/json", cookie, "x-csrf-token": csrf },
      body: JSON.stringify({ lang: "en", shortcut, text }),
    });
    if (!put.ok) throw new Error(`canned: ${put.status}`);
  }
  node = await startBranch(ctl, "branch-e2e");
  browser = await launchBrowser(ctl);
});
after(async () => { await browser?.close(); await node?.stop(); await ctl?.stop(); });

async function page(viewport = { width: 1280, height: 800 }) {
  const ctx = await browser.newContext({ viewport });
  const p = await ctx.newPage();
  const errors = [];
  p.on("pageerror", (e) => errors.push(e.message));
  return { ctx, p, errors };
}

async function login(p, username) {
  await p.goto(ctl.url + "/console");
  await p.getByLabel("Username", { exact: true }).fill(username);
  await p.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await p.getByRole("button", { name: "Log in" }).click();
  await assertOnScreen(p, p.locator("#conn", { hasText: "Connected" }), "connection status");
}

async function visitorAsksForAPerson(p, first) {
  await p.goto(node.url);
  await botSays(p, "branch assistant");
  await p.locator("#input").fill(first);
  await p.keyboard.press("Enter");
  await botSays(p, "");
  await p.locator("#input").fill("I want to talk to a human");
  await p.keyboard.press("Enter");
}

test("login: a wrong password says so; after login the chat list is on screen and the form is gone", async () => {
  const { ctx, p, errors } = await page();
  await p.goto(ctl.url + "/console");
  await assertOnScreen(p, p.locator("#login-form"), "login form");
  await p.getByLabel("Username", { exact: true }).fill("grace");
  await p.getByLabel("Password", { exact: true }).fill("not the password");
  await p.getByRole("button", { name: "Log in" }).click();
  await assertOnScreen(p, p.locator("#login-error", { hasText: "wrong username or password" }), "login error");
  await shot(p, "console-login-error");
  await p.getByLabel("Password", { exact: true }).fill(PASSWORD);
  await p.getByRole("button", { name: "Log in" }).click();
  await assertOnScreen(p, p.getByText("No chats yet"), "empty chat list");
  assert.equal(await p.locator("#login").isVisible(), false, "the login form is not on screen");
  assert.equal(await p.getByText("please log in").isVisible(), false);
  // A plain agent has no dashboard and no settings.
  assert.equal(await p.getByRole("button", { name: "Dashboard" }).isVisible(), false);
  assert.equal(await p.getByRole("button", { name: "Settings" }).isVisible(), false);
  await shot(p, "console-agent-empty");
  // A reload keeps the session and shows the app, not the form.
  await p.reload();
  await assertOnScreen(p, p.getByText("No chats yet"), "empty chat list after reload");
  assert.equal(await p.locator("#login").isVisible(), false);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test("a visitor reaches an agent: names, times, canned picker, unread badges, close; payloads stay inert", async () => {
  const a = await page();
  const agent = a.p;
  await login(agent, "grace");
  const v = await page({ width: 900, height: 1200 });
  const visitor = v.p;
  await visitorAsksForAPerson(visitor, "my card was swallowed");

  // The agent gets the chat, with the conversation so far, named and timed.
  const item = agent.locator("#chats .chat-item").first();
  await assertOnScreen(agent, item, "chat in the list");
  assert.match(await item.innerText(), /Visitor at branch-e2e/);
  assert.match(await item.innerText(), /Asked for a person/, "intents in words");
  const first = agent.locator("#lines li.visitor", { hasText: "my card was swallowed" });
  await assertOnScreen(agent, first, "the visitor's first line");
  assert.match(await first.locator(".who").innerText(), /^Visitor\s*\d\d:\d\d/);
  await assertOnScreen(agent, agent.locator("#reply-text"), "reply box");
  await assertOnScreen(agent, visitor.locator(".msg.system", { hasText: "Grace Hopper has joined" }), "join line on the kiosk");
  assert.equal(await visitor.locator(".msg.system .avatar").last().innerText(), "GH", "the agent's initials");
  await shot(agent, "console-assigned");
  await shot(visitor, "kiosk-agent-joined");

  // Agent → visitor, with an HTML payload that must stay text; the line
  // carries the agent's name and looks unlike the bot's.
  const fromAgent = `Hello! <img src=x onerror="window.__pwned=1"> Which ATM?`;
  await agent.locator("#reply-text").fill(fromAgent);
  await agent.keyboard.press("Enter");
  const agentLine = visitor.locator(".msg.agent", { hasText: "Which ATM?" });
  await assertOnScreen(visitor, agentLine, "the agent's line on the kiosk");
  assert.ok((await agentLine.innerText()).includes('<img src=x onerror="window.__pwned=1">'));
  assert.match(await agentLine.locator(".author").innerText(), /GH\s*Grace Hopper/);
  const bg = (sel) => visitor.locator(sel).first().evaluate((e) => getComputedStyle(e).backgroundColor);
  assert.notEqual(await bg(".msg.agent"), await bg(".msg.bot"), "agent lines look different from the bot's");
  await assertOnScreen(agent, agent.locator("#lines li.agent", { hasText: "Which ATM?" }).locator(".who", { hasText: "Grace Hopper" }), "own line named");

  // The visitor types: the agent sees it; the kiosk shows no typing dots of
  // its own while a person handles the chat.
  await visitor.locator("#input").fill("<script>window.__pwned=2</script> the one at");
  await assertOnScreen(agent, agent.locator("#typing"), "visitor is typing");
  await visitor.locator("#input").press("End");
  await visitor.locator("#input").type(" the entrance");
  await visitor.keyboard.press("Enter");
  await visitor.locator(".msg.visitor:not(.pending)", { hasText: "the entrance" }).waitFor();
  assert.equal(await visitor.locator(".typing").count(), 0, "no typing dots after a line to a person");
  await assertOnScreen(agent, agent.locator("#lines li.visitor", { hasText: "the entrance" }), "visitor's line");
  assert.ok((await agent.locator("#lines li.visitor").last().innerText()).includes("<script>window.__pwned=2</script>"));

  // Canned replies: "/" opens the picker, typing filters, arrows move, Enter picks.
  await agent.locator("#reply-text").fill("/");
  await assertOnScreen(agent, agent.getByRole("option", { name: /\/atm/ }), "picker entry /atm");
  await assertOnScreen(agent, agent.getByRole("option", { name: /\/hours/ }), "picker entry /hours");
  await shot(agent, "console-canned-picker");
  await agent.locator("#reply-text").type("a");
  await agent.keyboard.press("ArrowDown");
  await agent.keyboard.press("ArrowUp");
  assert.equal(await agent.locator("#canned-picker").getByRole("option").count(), 2, "'a' matches both texts");
  await agent.keyboard.press("Enter");
  assert.equal(await agent.locator("#reply-text").inputValue(), "Please tell me which ATM kept your card.");
  await agent.keyboard.press("Enter");
  await assertOnScreen(visitor, visitor.locator(".msg.agent", { hasText: "which ATM kept your card" }), "canned line on the kiosk");

  // A second visitor: an unread badge on their chat and in the title.
  const v2 = await page({ width: 900, height: 1200 });
  await visitorAsksForAPerson(v2.p, "a question about my transfer");
  const second = agent.locator("#chats .chat-item").nth(1);
  await assertOnScreen(agent, second.locator(".unread", { hasText: "1" }), "unread count");
  assert.match(await second.innerText(), /Visitor: I want to talk to a human/, "the newest line as preview");
  assert.equal(await agent.locator("#chats .chat-item").first().locator(".unread").count(), 0, "the open chat has no count");
  await agent.waitForFunction(() => document.title.startsWith("(1) "));
  await assertOnScreen(agent, agent.locator("#badge-chats", { hasText: "1" }), "chats badge");
  await shot(agent, "console-two-chats");
  // Alt+Down opens the next chat and clears its count.
  await agent.keyboard.press("Alt+ArrowDown");
  await assertOnScreen(agent, agent.locator("#lines li.visitor", { hasText: "my transfer" }), "second chat opened");
  await agent.waitForFunction(() => document.title === "EdgeDesk console");
  await agent.keyboard.press("Alt+ArrowUp");

  // The agent closes the first chat in the page's dialog; no reply bar
  // after. The dialog offers the line the bot could not handle for a label.
  await waitUntil("the escalation's learning sample at the controller", async () =>
    (await adminCall(ctl, "GET", "/api/v1/samples?reason=escalated")).some((x) => x.text === "my card was swallowed"));
  await agent.getByRole("button", { name: "Close chat" }).click();
  await assertOnScreen(agent, agent.locator("#close-dialog"), "close dialog");
  await assertOnScreen(agent, agent.locator("#close-label-text", { hasText: "my card was swallowed" }), "the visitor's line offered for a label");
  await agent.locator("#resolution").fill("card returned at the desk");
  // (The agent picks a near miss; a supervisor corrects it below.)
  await agent.locator("#close-label-intent").fill("atm_support");
  await shot(agent, "console-close-dialog");
  await agent.locator("#close-ok").click();
  await assertOnScreen(agent, agent.getByText("You closed this chat."), "closed status");
  await assertOnScreen(agent, agent.locator("#toast", { hasText: "Labelled:" }), "the label saved");
  const labelled = (await adminCall(ctl, "GET", "/api/v1/samples?reason=escalated")).find((x) => x.text === "my card was swallowed");
  assert.equal(labelled.label, "atm_support");
  assert.equal(await agent.locator("#reply").isVisible(), false, "a closed chat has no reply bar");
  // Exactly "Transfer": the other chat's entry in the list is a button too,
  // and its intent tags may read "Declined transfer".
  assert.equal(await agent.getByRole("button", { name: "Transfer", exact: true }).isVisible(), false);
  await shot(agent, "console-closed");
  await assertOnScreen(visitor, visitor.locator(".msg", { hasText: "How would you rate it?" }), "rating prompt");
  await visitor.getByRole("button", { name: "★★★★★" }).click();
  await botSays(visitor, "Thank you for your feedback");
  await shot(visitor, "kiosk-after-agent");

  // The second visitor ends the chat: the agent is told, and it is closed.
  await v2.p.getByRole("button", { name: "End chat" }).click();
  await agent.keyboard.press("Alt+ArrowDown");
  await assertOnScreen(agent, agent.getByText("Closed: The visitor ended the chat."), "visitor ended");
  assert.equal(await agent.locator("#reply").isVisible(), false);

  // History finds the conversation; the transcript names the agent.
  await agent.getByRole("button", { name: "History" }).click();
  await agent.locator("#search-q").fill("swallowed");
  await agent.getByRole("button", { name: "Search" }).click();
  await agent.locator("#results button").first().click();
  await assertOnScreen(agent, agent.locator("#transcript li.visitor", { hasText: "my card was swallowed" }), "transcript");
  await assertOnScreen(agent, agent.locator("#transcript li.agent .who", { hasText: "Grace Hopper" }).first(), "agent named in history");
  await assertOnScreen(agent, agent.locator("#transcript-meta", { hasText: "card returned at the desk" }), "outcome");
  await agent.locator("#search details summary").click();
  await agent.locator("#search-escalated").selectOption("false");
  await agent.getByRole("button", { name: "Search" }).click();
  await assertOnScreen(agent, agent.getByText("No conversations match."), "no bot-only match");
  await agent.locator("#search-escalated").selectOption("true");
  await agent.getByRole("button", { name: "Search" }).click();
  await assertOnScreen(agent, agent.locator("#results button").first(), "escalated match");
  assert.equal(await agent.locator("#results li").count(), 1);
  await shot(agent, "console-history");

  for (const pg of [agent, visitor]) {
    assert.equal(await pg.evaluate(() => window.__pwned), undefined);
    assert.equal(await pg.locator("#lines img, #lines script, #transcript img, .log img, .log script").count(), 0);
  }
  assert.deepEqual([...a.errors, ...v.errors, ...v2.errors], []);
  await a.ctx.close(); await v.ctx.close(); await v2.ctx.close();
});

test("a supervisor sees the dashboard with labelled charts and manages canned responses; agents see neither", async () => {
  // A candidate model in its shadow phase (it answers nobody) with a few
  // visitor turns compared, for the rollouts table.
  publishVersion(ctl, "1.1.0");
  const rollout = await adminCall(ctl, "POST", "/api/v1/rollouts", { model: "1.1.0", waves: ["100%"], shadow_secs: 3600 });
  await waitUntil("the branch runs the candidate in shadow", async () =>
    (await adminCall(ctl, "GET", "/api/v1/nodes/branch-e2e/commands")).some((c) => c.kind === "model_shadow" && c.ok === true));
  const v = await page();
  await v.p.goto(node.url);
  await botSays(v.p, "branch assistant");
  for (const [line, answer] of [["my pin is blocked", "PIN"], ["my card payment was declined", "declined"]]) {
    await v.p.locator("#input").fill(line);
    await v.p.keyboard.press("Enter");
    await botSays(v.p, answer);
  }
  await v.ctx.close();
  await waitUntil("shadow turns reported", async () =>
    ((await adminCall(ctl, "GET", `/api/v1/rollouts/${rollout.id}`)).shadow?.turns ?? 0) >= 2);

  const { ctx, p, errors } = await page({ width: 1280, height: 1000 });
  await login(p, "sam");
  await p.getByRole("button", { name: "Dashboard" }).click();
  await assertOnScreen(p, p.locator("#d-rollouts td", { hasText: "1.1.0" }), "the rollout in the table");
  await assertOnScreen(p, p.locator("#d-rollouts td", { hasText: /^shadow/ }), "its shadow phase");
  await assertOnScreen(p, p.locator("#d-rollouts td", { hasText: /agreement 100\.0 % over \d+ turns \(needs 90 %\)/ }), "the shadow figures");
  await assertOnScreen(p, p.locator("#d-waiting"), "waiting figure");
  const frt = p.locator("#d-frt");
  await p.locator("#d-frt rect").first().waitFor();
  const labels = await frt.locator("text").allTextContents();
  assert.ok(labels.some((t) => /[A-Z][a-z]{2} \d+|\d+ [A-Z][a-z]{2}/.test(t)), `dates on the x axis: ${labels}`);
  assert.ok(labels.includes("0"), `a zero on the y axis: ${labels}`);
  const value = Number(await frt.locator("text.value").first().textContent());
  assert.ok(value >= 0, `first response time is never negative: ${value}`);
  await assertOnScreen(p, p.locator("#d-csat text.value", { hasText: "5.0" }), "satisfaction value");
  await assertOnScreen(p, p.locator("#d-agents td", { hasText: "Grace Hopper" }), "agent in the table");
  await shot(p, "console-dashboard");
  // Aborted in its shadow phase: the branch stops running the candidate.
  await adminCall(ctl, "POST", `/api/v1/rollouts/${rollout.id}/abort`);
  await waitUntil("the branch ended the shadow run", async () =>
    (await adminCall(ctl, "GET", "/api/v1/nodes/branch-e2e/commands")).some((c) => c.kind === "model_shadow_end" && c.detail === "shadow ended"));

  await p.getByRole("button", { name: "Settings" }).click();
  assert.equal(await p.locator("#agent-form").isVisible(), false, "only admins manage agents");
  await p.getByLabel("Shortcut").fill("bye");
  await p.getByLabel("Canned text").fill("<b>Thanks</b> for visiting!");
  await p.getByRole("button", { name: "Save response" }).click();
  await assertOnScreen(p, p.locator("#canned-list li", { hasText: "<b>Thanks</b> for visiting!" }), "saved canned response");
  assert.equal(await p.locator("#canned-list li span b").count(), 0, "stored text is shown as text");
  await shot(p, "console-settings");
  assert.deepEqual(errors, []);
  await ctx.close();
});

test("a message left while waiting is a ticket the agent claims, resolves in the page and reads the transcript of", async () => {
  const a = await page();
  const agent = a.p;
  await login(agent, "grace");
  await agent.locator("#presence").selectOption("away");
  const v = await page({ width: 900, height: 1200 });
  const visitor = v.p;
  await visitorAsksForAPerson(visitor, "my mortgage payment");
  await assertOnScreen(visitor, visitor.locator(".note.queue", { hasText: "number 1 in the queue" }), "queue position");
  await shot(visitor, "kiosk-queue");
  await visitor.getByRole("button", { name: "Leave a message" }).click();
  for (const [text, next] of [["Ada Lovelace", "phone number or e-mail"], ["ada@example.com", "help you with"], ["Please call me about my mortgage", "ada@example.com"]]) {
    await visitor.locator("#input").fill(text);
    await visitor.keyboard.press("Enter");
    await botSays(visitor, next);
  }
  await agent.locator("#presence").selectOption("online");
  await assertOnScreen(agent, agent.locator("#badge-tickets", { hasText: "1" }), "messages badge");
  assert.equal(await agent.locator("#chats .chat-item", { hasText: "mortgage" }).count(), 0, "not also a live chat");
  await agent.getByRole("button", { name: /Messages/ }).click();
  const row = agent.locator("#tickets tr", { hasText: "Ada Lovelace" });
  await assertOnScreen(agent, row, "ticket row");
  await row.getByRole("button", { name: "Claim" }).click();
  await assertOnScreen(agent, row.getByText("claimed by you"), "claimed");
  await row.getByRole("button", { name: "Resolve…" }).click();
  await assertOnScreen(agent, agent.locator("#resolve-dialog"), "resolve dialog");
  await agent.locator("#resolve-note").fill("Called back, booked a meeting");
  await shot(agent, "console-resolve-dialog");
  await agent.locator("#resolve-ok").click();
  await assertOnScreen(agent, row.getByText("resolved: Called back, booked a meeting"), "resolved");
  await shot(agent, "console-tickets");
  await row.getByRole("button", { name: "Transcript" }).click();
  await assertOnScreen(agent, agent.locator("#transcript li.visitor", { hasText: "my mortgage payment" }), "ticket transcript");
  assert.deepEqual([...a.errors, ...v.errors], []);
  await a.ctx.close(); await v.ctx.close();
});

test("on a phone the console shows one pane at a time and nothing scrolls sideways", async () => {
  const a = await page({ width: 390, height: 844 });
  const agent = a.p;
  await login(agent, "grace");
  const v = await page({ width: 390, height: 844 });
  await visitorAsksForAPerson(v.p, "where is my new card");
  const item = agent.locator("#chats .chat-item", { hasText: "I want to talk to a human" });
  await assertOnScreen(agent, item, "chat in the list");
  assert.equal(await agent.locator("#chats .chat-item").count(), 1, "only this chat is open");
  await shot(agent, "console-phone-list");
  await item.click();
  await assertOnScreen(agent, agent.locator("#lines li.visitor", { hasText: "where is my new card" }), "conversation");
  assert.equal(await agent.locator(".chat-list").isVisible(), false, "the list makes room");
  await assertOnScreen(agent, agent.locator("#reply-text"), "reply box");
  const overflow = await agent.evaluate(() => document.scrollingElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `console scrolls sideways by ${overflow}px`);
  await shot(agent, "console-phone-chat");
  await agent.getByRole("button", { name: "Back to chats" }).click();
  await assertOnScreen(agent, item, "back to the list");
  // Closing works at this size too: the dialog fits on screen.
  await item.click();
  await agent.getByRole("button", { name: "Close chat" }).click();
  await assertOnScreen(agent, agent.locator("#close-ok"), "close dialog's button");
  await agent.locator("#close-ok").click();
  await assertOnScreen(agent, agent.getByText("You closed this chat."), "closed on a phone");
  assert.deepEqual([...a.errors, ...v.errors], []);
  await a.ctx.close(); await v.ctx.close();
});

test("an operator sets the branch's address and hours at the controller; a visitor reads them at the kiosk in both languages", async () => {
  await adminCall(ctl, "PUT", "/api/v1/nodes/branch-e2e/branch", {
    hours: { mon: "09:00-17:00", tue: "09:00-17:00", wed: "09:00-17:00", thu: "09:00-17:00", fri: "09:00-17:00", sat: "10:00-13:00" },
    facts: {
      address: { en: "12 Harbour Road, ground floor.", zh: "海港路12号一楼。" },
      directions: { en: "Take exit B of Harbour station.", zh: "海港站B出口出来即到。" },
    },
  });
  // Delivered when the node acknowledges it (the command queue).
  await waitUntil("the node applied the branch settings",
    async () => (await adminCall(ctl, "GET", "/api/v1/nodes/branch-e2e/branch")).delivery === "applied");
  const v = await page({ width: 1080, height: 1400 });
  await v.p.goto(node.url);
  await botSays(v.p, "branch assistant");
  await v.p.locator("#input").fill("Where is this branch?");
  await v.p.keyboard.press("Enter");
  await assertOnScreen(v.p, v.p.locator(".log .msg.bot", { hasText: "12 Harbour Road, ground floor. Take exit B of Harbour station." }), "the address");
  await v.p.locator("#input").fill("What time do you open?");
  await v.p.keyboard.press("Enter");
  await assertOnScreen(v.p, v.p.locator(".log .msg.bot", { hasText: "Monday to Friday 9:00–17:00, Saturday 10:00–13:00" }), "the week's hours");
  await v.p.getByRole("button", { name: "中文" }).click();
  await v.p.locator("#input").fill("这个网点在哪");
  await v.p.keyboard.press("Enter");
  await assertOnScreen(v.p, v.p.locator(".log .msg.bot", { hasText: "海港路12号一楼。海港站B出口出来即到。" }), "the address in Chinese");
  await shot(v.p, "kiosk-branch-address");
  assert.deepEqual(v.errors, []);
  await v.ctx.close();
});

test("a line the bot did not understand reaches the labelling queue; an agent labels it with one key", async () => {
  const v = await page({ width: 1080, height: 900 });
  await v.p.goto(node.url);
  await botSays(v.p, "branch assistant");
  await v.p.locator("#input").fill("what is the weather like on mars tomorrow");
  await v.p.keyboard.press("Enter");
  await botSays(v.p, "");
  // The visitor says goodbye: the conversation ends and goes up whole.
  await v.p.locator("#input").fill("goodbye");
  await v.p.keyboard.press("Enter");
  await botSays(v.p, "");
  await v.ctx.close();
  await waitUntil("the sample at the controller", async () =>
    (await adminCall(ctl, "GET", "/api/v1/samples?unlabelled=true")).some((x) => x.text.includes("mars")));
  const sample = (await adminCall(ctl, "GET", "/api/v1/samples?unlabelled=true")).find((x) => x.text.includes("mars"));
  await waitUntil("the conversation at the controller", async () =>
    (await adminCall(ctl, "GET", "/api/v1/events?kind=conversation_summary&limit=1000")).some((e) => e.event.conversation === sample.conversation));

  const { ctx, p, errors } = await page({ width: 1280, height: 800 });
  await login(p, "grace");
  await p.getByRole("button", { name: "Labels" }).click();
  const line = p.locator("#label-list li.sample", { hasText: "what is the weather like on mars tomorrow" });
  await assertOnScreen(p, line, "the visitor's line in the queue");
  await assertOnScreen(p, line.locator(".meta", { hasText: "judged not a banking question" }), "why it is there");
  await assertOnScreen(p, line.getByRole("button", { name: /^1\. .+ \(\d+ %\)$/ }), "the model's next guess with its score");
  // The conversation around it, on demand, the sample's line marked.
  await line.getByRole("button", { name: "Conversation" }).click();
  await assertOnScreen(p, line.locator(".context li.this", { hasText: "what is the weather like on mars tomorrow" }), "the line in its conversation");
  await assertOnScreen(p, line.locator(".context li.visitor", { hasText: "goodbye" }), "what the visitor said after it");
  // A tapped rating is no question to the bot; a line asked to be
  // rephrased and then escalated is there once.
  assert.equal(await p.locator("#label-list li.sample", { hasText: "★" }).count(), 0, "a rating");
  assert.equal(await p.locator("#label-list li.sample", { hasText: "a question about my transfer" }).count(), 1, "one line, one sample");
  // Answers to the contact form (names, e-mail) are never samples.
  assert.equal(await p.locator("#label-list li.sample", { hasText: "Ada Lovelace" }).count(), 0, "a name left in the contact form");
  await shot(p, "console-labels");
  // The line is first in the queue (newest first): 0 labels it.
  await p.keyboard.press("0");
  await assertOnScreen(p, p.locator("#toast", { hasText: "Labelled: not a banking question" }), "the confirmation");
  await line.waitFor({ state: "detached" });
  const stored = (await adminCall(ctl, "GET", "/api/v1/samples")).find((x) => x.text.includes("mars"));
  assert.equal(stored.label, "out_of_scope");
  assert.deepEqual(errors, []);
  await ctx.close();
});

test("a supervisor trains a model on the labels, reads the checks and approves its rollout", async () => {
  // Runs after the labelling tests: two labels are waiting (atm_support
  // given when a chat closed, out_of_scope in the Labels tab).
  const { ctx, p, errors } = await page({ width: 1280, height: 1000 });
  await login(p, "sam");
  // First a second look at the agent's labels: one confirmed, one changed.
  await p.getByRole("button", { name: "Labels" }).click();
  const swallowed = p.locator("#review-list li", { hasText: "my card was swallowed" });
  // The review list is under the queue: the supervisor scrolls down to it.
  await swallowed.scrollIntoViewIfNeeded();
  await assertOnScreen(p, swallowed.locator(".meta", { hasText: "by Grace Hopper" }), "who gave the label");
  const mars = p.locator("#review-list li", { hasText: "what is the weather like on mars tomorrow" });
  await mars.scrollIntoViewIfNeeded();
  await assertOnScreen(p, mars.locator(".meta", { hasText: "labelled “not a banking question”" }), "the label to review");
  await shot(p, "console-review");
  await mars.getByRole("button", { name: "Right" }).click();
  await assertOnScreen(p, p.locator("#toast", { hasText: "Confirmed" }), "confirmed");
  await mars.waitFor({ state: "detached" });
  await swallowed.getByLabel("Correct intent").fill("card_swallowed");
  await swallowed.getByRole("button", { name: "Change" }).click();
  await assertOnScreen(p, p.locator("#toast", { hasText: "Changed to:" }), "changed");
  await swallowed.waitFor({ state: "detached" });
  const reviewed = (await adminCall(ctl, "GET", "/api/v1/samples?limit=1000")).filter((x) => x.reviewed_by);
  assert.equal(reviewed.length, 2, "both reviews stored");
  assert.equal(reviewed.find((x) => x.text === "my card was swallowed").label, "card_swallowed", "the supervisor's label wins");

  // An answer for an intent the bot is to learn, in both languages.
  await p.locator("#answer-intent").scrollIntoViewIfNeeded();
  await p.locator("#answer-intent").fill("new:card_retained");
  await p.getByLabel("English answer").fill("If a machine kept your card, we can return it at the counter.");
  await p.getByLabel("Chinese answer").fill("如果机器吞了您的卡，可以在柜台取回。");
  await p.getByRole("button", { name: "Save answer" }).click();
  await assertOnScreen(p, p.locator("#toast", { hasText: "Answer saved for card_retained" }), "the answer saved");
  const saved = p.locator("#answer-list li", { hasText: "card_retained" });
  await saved.scrollIntoViewIfNeeded();
  await assertOnScreen(p, saved.getByText("可以在柜台取回"), "the Chinese answer in the list");
  await shot(p, "console-answers");

  await p.getByRole("button", { name: "Dashboard" }).click();
  const runs = p.locator("#d-trainings");
  await runs.scrollIntoViewIfNeeded();
  await assertOnScreen(p, runs.locator("td", { hasText: "No training run yet" }), "no run yet");
  await p.getByRole("button", { name: "Train on the labels now" }).click();
  await assertOnScreen(p, p.locator("#toast", { hasText: "Training started" }), "the confirmation");
  await assertOnScreen(p, runs.locator("td", { hasText: "training…" }), "the run in progress");
  assert.equal(await p.getByRole("button", { name: "Train on the labels now" }).isDisabled(), true, "one run at a time");
  // The real trainer on the repository's data: about a minute here.
  const passed = runs.locator("td", { hasText: "passed the checks, waiting for approval" });
  await passed.waitFor({ state: "visible", timeout: 300000 });
  await runs.scrollIntoViewIfNeeded();
  await assertOnScreen(p, passed, "the verdict");
  await assertOnScreen(p, runs.locator("td", { hasText: "1.2.0 (from 1.1.0)" }), "the candidate and the fleet's model");
  await assertOnScreen(p, runs.locator("td", { hasText: "2 trained · 0 held out" }), "the labels it learnt from");
  await assertOnScreen(p, runs.locator("td", { hasText: /English \d+\.\d % → \d+\.\d % · Chinese \d+\.\d % → \d+\.\d % · out of scope/ }), "the figures of both models");
  await shot(p, "console-training");
  await p.getByRole("button", { name: "Approve rollout" }).click();
  await assertOnScreen(p, p.locator("#toast", { hasText: "Model 1.2.0 is rolling out" }), "the confirmation");
  await assertOnScreen(p, runs.locator("td", { hasText: /^approved, rolling out \(ro-/ }), "the run approved");
  await assertOnScreen(p, p.locator("#d-rollouts td", { hasText: "1.2.0" }), "the new model's rollout");
  const [run] = await adminCall(ctl, "GET", "/api/v1/trainings");
  assert.equal(run.approved_by !== null && run.approved_by !== "api", true, `approved by the supervisor: ${run.approved_by}`);
  // Leave the branch on its model for the tests after this one.
  await adminCall(ctl, "POST", `/api/v1/rollouts/${run.rollout_id}/abort`);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test("questions nobody understood are grouped; a supervisor makes an intent of the group", async () => {
  // Runs after the training test, whose counts a new label would change.
  const asked = [
    "do you rent safe deposit boxes",
    "how much is a safe deposit box here",
    "what size safe deposit boxes do you have",
    "can I rent a safe deposit box",
  ];
  for (const q of asked) {
    const v = await page({ width: 900, height: 900 });
    await v.p.goto(node.url);
    await botSays(v.p, "branch assistant");
    await v.p.locator("#input").fill(q);
    await v.p.keyboard.press("Enter");
    await botSays(v.p, "");
    await v.ctx.close();
  }
  await waitUntil("the questions at the controller", async () => {
    const samples = await adminCall(ctl, "GET", "/api/v1/samples?unlabelled=true&limit=1000");
    return asked.every((q) => samples.some((x) => x.text === q));
  });

  const { ctx, p, errors } = await page({ width: 1280, height: 1000 });
  await login(p, "sam");
  await p.getByRole("button", { name: "Labels" }).click();
  const refresh = p.getByRole("button", { name: "Group the questions now" });
  await refresh.scrollIntoViewIfNeeded();
  await refresh.click();
  // The real grouping: the trainer script with the sentence encoder.
  const status = p.locator("#suggest-status");
  await status.filter({ hasText: /^Grouped \d+ questions at / }).waitFor({ state: "visible", timeout: 120000 });
  const card = p.locator("#suggest-list li.suggestion", { hasText: "safe deposit box" });
  await card.scrollIntoViewIfNeeded();
  await assertOnScreen(p, card.locator(".said", { hasText: /^\d+ questions like these$/ }), "the group's size");
  await assertOnScreen(p, card.locator(".meta", { hasText: "branches: branch-e2e" }), "where they were asked");
  for (const q of asked) await assertOnScreen(p, card.locator("ul.examples li", { hasText: q }), `the example "${q}"`);
  await shot(p, "console-suggestions");
  await card.getByRole("button", { name: "Make an intent…" }).click();
  await card.getByLabel("Intent").fill("new:safe_deposit_box");
  // A new intent without its answers is refused, with the reason on screen.
  await card.getByRole("button", { name: "Make the intent" }).click();
  await assertOnScreen(p, p.locator("#toast", { hasText: "write its answer in English and Chinese" }), "the reason");
  await card.getByLabel("English answer").fill("We rent safe deposit boxes in three sizes; ask at the counter.");
  await card.getByLabel("Chinese answer").fill("本网点提供三种尺寸的保险箱，请到柜台咨询。");
  await card.getByRole("button", { name: "Make the intent" }).click();
  await assertOnScreen(p, p.locator("#toast", { hasText: /^\d+ questions labelled Safe deposit box$/ }), "the confirmation");
  await card.waitFor({ state: "detached" });
  const saved = p.locator("#answer-list li", { hasText: "safe_deposit_box" });
  await saved.scrollIntoViewIfNeeded();
  await assertOnScreen(p, saved.getByText("三种尺寸的保险箱"), "the Chinese answer in the list");
  const samples = await adminCall(ctl, "GET", "/api/v1/samples?limit=1000");
  for (const q of asked) {
    assert.equal(samples.find((x) => x.text === q).label, "new:safe_deposit_box", q);
  }
  assert.deepEqual(errors, []);
  await ctx.close();
});

test("a supervisor rewrites an answer and releases it; a visitor at the branch reads it", async () => {
  const NEW_EN = "Cards arrive in 3 working days now; track yours in the app.";
  const { ctx, p, errors } = await page({ width: 1280, height: 1000 });
  await login(p, "sam");
  await p.getByRole("button", { name: "Labels" }).click();
  await p.locator("#answer-intent").scrollIntoViewIfNeeded();
  await p.locator("#answer-intent").fill("card_arrival");
  await p.getByLabel("English answer").fill(NEW_EN);
  await p.getByLabel("Chinese answer").fill("新卡现在3个工作日内寄达，可在应用中查询进度。");
  await p.getByLabel("Quick replies in English, one per line").fill("Track my card");
  await p.getByLabel("Quick replies in Chinese, one per line").fill("查询进度");
  await p.getByRole("button", { name: "Save answer" }).click();
  await assertOnScreen(p, p.locator("#toast", { hasText: "Answer saved for card_arrival" }), "the answer saved");
  const saved = p.locator("#answer-list li", { hasText: "card_arrival" });
  await saved.scrollIntoViewIfNeeded();
  await assertOnScreen(p, saved.locator(".meta", { hasText: "Quick replies: Track my card · 查询进度" }), "its quick replies");
  await p.getByRole("button", { name: "Release the answers to the branches" }).click();
  const released = p.locator("#toast", { hasText: /^Answers released as \d+\.\d+\.\d+: approve its rollout on the dashboard$/ });
  await assertOnScreen(p, released, "the release");
  const version = (await released.textContent()).match(/as (\d+\.\d+\.\d+)/)[1];
  await p.getByRole("button", { name: "Dashboard" }).click();
  const row = p.locator("#d-trainings tr", { hasText: `${version} (answers for` });
  await row.scrollIntoViewIfNeeded();
  await assertOnScreen(p, row.locator("td", { hasText: "knowledge-base release" }), "what kind of release");
  await assertOnScreen(p, row.locator("td", { hasText: "card_arrival: new" }), "what it changes");
  await shot(p, "console-answer-release");
  await row.getByRole("button", { name: "Approve rollout" }).click();
  await assertOnScreen(p, p.locator("#toast", { hasText: `Answers ${version} are rolling out` }), "the approval");

  // The branch's kiosk answers with the new text and quick reply.
  await waitUntil("the branch serves the release", async () => {
    const n = (await adminCall(ctl, "GET", "/api/v1/nodes")).find((x) => x.id === "branch-e2e");
    return n && n.heartbeat && n.heartbeat.model_version === version;
  });
  const v = await page({ width: 900, height: 900 });
  await v.p.goto(node.url);
  await botSays(v.p, "branch assistant");
  await v.p.locator("#input").fill("my new card still hasn't arrived");
  await v.p.keyboard.press("Enter");
  await assertOnScreen(v.p, v.p.locator("#log", { hasText: NEW_EN }), "the released answer");
  await assertOnScreen(v.p, v.p.getByRole("button", { name: "Track my card" }), "its quick reply");
  await shot(v.p, "kiosk-released-answer");
  await v.ctx.close();
  // And in Chinese.
  const z = await page({ width: 900, height: 900 });
  await z.p.goto(node.url);
  await botSays(z.p, "branch assistant");
  await z.p.getByRole("button", { name: "中文" }).click();
  await z.p.locator("#input").fill("我的新卡还没收到");
  await z.p.keyboard.press("Enter");
  await assertOnScreen(z.p, z.p.locator("#log", { hasText: "新卡现在3个工作日内寄达，可在应用中查询进度。" }), "the released Chinese answer");
  await assertOnScreen(z.p, z.p.getByRole("button", { name: "查询进度" }), "its Chinese quick reply");
  await shot(z.p, "kiosk-released-answer-zh");
  await z.ctx.close();
  // Leave the branch on its model for the tests after this one.
  const run = (await adminCall(ctl, "GET", "/api/v1/trainings")).find((t) => t.version === version);
  assert.equal(run.kind, "knowledge_base");
  await adminCall(ctl, "POST", `/api/v1/rollouts/${run.rollout_id}/abort`);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test("a line typed while the controller is down waits on screen and is delivered after the restart", async () => {
  const a = await page();
  const agent = a.p;
  await login(agent, "grace");
  const v = await page({ width: 900, height: 1200 });
  const visitor = v.p;
  await visitorAsksForAPerson(visitor, "my pin is blocked");
  await agent.locator("#chats .chat-item", { hasText: "I want to talk to a human" }).click();
  await assertOnScreen(agent, agent.locator("#lines li.visitor", { hasText: "pin is blocked" }), "chat open");

  await ctl.kill(); // SIGKILL
  await assertOnScreen(agent, agent.locator("#conn", { hasText: "Reconnecting" }), "reconnecting status");
  await agent.locator("#reply-text").fill("Sorry, one moment please");
  await agent.keyboard.press("Enter");
  const line = agent.locator("#lines li.agent", { hasText: "one moment please" });
  await assertOnScreen(agent, line.getByText("Waiting for the connection…"), "the line is marked as not sent yet");
  await shot(agent, "console-reconnecting");

  await ctl.restart();
  await assertOnScreen(agent, agent.locator("#conn", { hasText: "Connected" }), "connected again");
  await assertOnScreen(visitor, visitor.locator(".msg.agent", { hasText: "Sorry, one moment please" }), "delivered to the visitor");
  await line.locator(".state").waitFor({ state: "detached" });
  await assertOnScreen(agent, agent.locator("#lines li.visitor", { hasText: "pin is blocked" }), "the chat is still there");
  await shot(agent, "console-after-restart");
  assert.deepEqual([...a.errors, ...v.errors], []);
  await a.ctx.close(); await v.ctx.close();
});
