// Kiosk page in real Chromium against a real edge node.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startEdgeNode, launchBrowser, botSays, visitorAsks, assertOnScreen, shot, SHOTS, ROOT } from "./helpers.mjs";

let node, browser;
before(async () => { node = await startEdgeNode(); browser = await launchBrowser(); });
after(async () => { await browser?.close(); await node?.stop(); });

async function freshPage(viewport = { width: 1080, height: 1600 }, url = node.url) {
  const ctx = await browser.newContext({ viewport });
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(url);
  await botSays(page, "branch assistant");
  return { ctx, page, errors };
}

test("a visitor starts a lost-card flow and cancels it with a quick reply", async () => {
  const { ctx, page, errors } = await freshPage();
  await page.getByRole("textbox", { name: "Your message" }).fill("I lost my card");
  await page.keyboard.press("Enter");
  await botSays(page, "last four digits");
  await page.locator(".msg.visitor:not(.pending)", { hasText: "I lost my card" }).waitFor();
  await page.getByRole("button", { name: "Cancel" }).click();
  await botSays(page, "cancelled");
  await page.screenshot({ path: join(SHOTS, "kiosk-en.png") });
  assert.deepEqual(errors, []);
  await ctx.close();
});

test("the 中文 switch changes the page and the bot's language", async () => {
  const { ctx, page } = await freshPage();
  await page.getByRole("button", { name: "中文" }).click();
  assert.equal(await page.getAttribute("html", "lang"), "zh-CN");
  assert.equal(await page.locator("#send").textContent(), "发送");
  await visitorAsks(page, "1234", "换个说法");
  await visitorAsks(page, "我想预约", "哪天");
  await page.screenshot({ path: join(SHOTS, "kiosk-zh.png") });
  await ctx.close();
});

test("a visitor asks when the branch opens, in English and in Chinese, and reads the hours", async () => {
  const { ctx, page } = await freshPage();
  await visitorAsks(page, "What time do you open?", "Our opening hours: Monday to Friday 9:00–17:00");
  await page.getByRole("button", { name: "中文" }).click();
  await visitorAsks(page, "营业时间是几点", "营业时间：周一至周五 9:00–17:00");
  await page.screenshot({ path: join(SHOTS, "kiosk-hours.png") });
  await ctx.close();
});

// The node serves build/models/multilingual by default; the other tests use
// the linear model for speed. Runs `visit(page)` on a fresh page of a node
// serving the multilingual model; the page must log no error.
async function withMultilingualNode(visit) {
  const ml = await startEdgeNode({ EDGEDESK_NLU__BUNDLE: JSON.stringify(join(ROOT, "build", "models", "multilingual")) });
  try {
    const { ctx, page, errors } = await freshPage({ width: 1080, height: 1600 }, ml.url);
    await visit(page);
    assert.deepEqual(errors, []);
    await ctx.close();
  } finally {
    await ml.stop();
  }
}

test("with the shipped multilingual model, an off-topic question in Chinese is declined and banking ones answered, colloquial too", async () => {
  // None of the questions is in the training data.
  await withMultilingualNode(async (page) => {
    await page.getByRole("button", { name: "中文" }).click();
    await visitorAsks(page, "帮我查一下杭州明天的天气", "我只能解答本网点的银行业务问题");
    await visitorAsks(page, "我把手机银行的密码给忘了", "忘记密码");
    // Typed the way it is spoken (咋整: "what do I do"), as visitors do.
    await visitorAsks(page, "取款机把卡吞了咋整", "ATM吞卡");
    await assertOnScreen(page, page.locator(".msg.bot", { hasText: "我只能解答本网点的银行业务问题" }), "the refusal");
    await assertOnScreen(page, page.locator(".msg.bot", { hasText: "通过短信验证" }), "the passcode answer");
    await assertOnScreen(page, page.locator(".msg.bot", { hasText: "我们将退还卡片或补发新卡" }), "the swallowed-card answer");
    await shot(page, "kiosk-zh-off-topic");
  });
});

test("with the shipped multilingual model, a visitor who wants to send money or check a balance is told how, in English and Chinese", async () => {
  // Issue 12 found "send money to my friend" answered about receiving money;
  // the other three are in no training file.
  await withMultilingualNode(async (page) => {
    await visitorAsks(page, "send money to my friend", "To send money, open Payments");
    await visitorAsks(page, "what's my account balance right now", "Your balance is on the app's home screen");
    await assertOnScreen(page, page.locator(".msg.bot", { hasText: "choose or add the recipient" }), "the sending answer");
    assert.equal(await page.locator(".msg.bot", { hasText: "To receive money" }).count(), 0, "no answer about receiving money");
    await shot(page, "kiosk-send-money-en");
    await page.getByRole("button", { name: "中文" }).click();
    await visitorAsks(page, "给我表姐转点钱怎么弄", "转账给他人");
    await visitorAsks(page, "我想查下余额还有多少", "手机银行首页即可查看余额");
    await assertOnScreen(page, page.locator(".msg.bot", { hasText: "手机银行首页即可查看余额" }), "the balance answer");
    await shot(page, "kiosk-send-money-zh");
  });
});

test("a reload brings the conversation back", async () => {
  const { ctx, page } = await freshPage();
  await visitorAsks(page, "how do I activate my card", "Activate");
  await page.reload();
  await page.locator(".msg.visitor", { hasText: "how do I activate my card" }).waitFor();
  await botSays(page, "Activate");
  await ctx.close();
});

test("chat text stays inert: HTML and script payloads are shown as text", async () => {
  const { ctx, page, errors } = await freshPage();
  const payloads = [
    `<img src=x onerror="window.__pwned=1">`,
    `<script>window.__pwned=2</script>`,
    `"><svg onload="window.__pwned=3">`,
  ];
  for (const p of payloads) {
    await page.locator("#input").fill(p);
    await page.keyboard.press("Enter");
    await page.locator(".msg.visitor:not(.pending)", { hasText: p }).waitFor();
  }
  // The bot has answered all three, so every line has been rendered.
  await page.waitForFunction(() => document.querySelectorAll(".log .msg.bot").length >= 4);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.equal(await page.locator(".log img, .log script, .log svg").count(), 0);
  await page.reload(); // replayed history is inert too
  await page.locator(".msg.visitor", { hasText: payloads[0] }).waitFor();
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.equal(await page.locator(".log img, .log script, .log svg").count(), 0);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test("escalation offers an offline message that the visitor can leave", async () => {
  const { ctx, page } = await freshPage();
  await visitorAsks(page, "I want to talk to a human", "nobody is free");
  await page.getByRole("button", { name: "Leave a message" }).click();
  await botSays(page, "your name");
  for (const [text, next] of [["Ada", "phone number or e-mail"], ["ada@example.com", "help you with"], ["Call me back please", "ada@example.com"]]) {
    await page.locator("#input").fill(text);
    await page.keyboard.press("Enter");
    await botSays(page, next);
  }
  await ctx.close();
});

test("phone-sized screen: no sideways scrolling, targets at least 44px, the newest line above the quick replies", async () => {
  const { ctx, page } = await freshPage({ width: 375, height: 667 });
  // Enough lines that the log scrolls; the last answer brings quick replies.
  for (const [text, answer] of [["how do I activate my card", "Activate"], ["what is the exchange rate", ""], ["hello", ""]]) {
    const bots = await page.locator(".log .msg.bot").count();
    await page.locator("#input").fill(text);
    await page.keyboard.press("Enter");
    await page.waitForFunction((n) => document.querySelectorAll(".log .msg.bot").length > n, bots);
    if (answer) await botSays(page, answer);
  }
  await assertOnScreen(page, page.locator(".quick button").first(), "quick replies");
  // The newest bot line is wholly visible and not under the quick replies.
  const last = page.locator(".log .msg.bot").last();
  await page.waitForFunction(() => {
    const l = document.getElementById("log");
    return Math.abs(l.scrollHeight - l.clientHeight - l.scrollTop) < 2;
  });
  const line = await last.boundingBox();
  const log = await page.locator("#log").boundingBox();
  const quickBox = await page.locator("#quick").boundingBox();
  assert.ok(line.y >= log.y - 1, `newest line starts above the log (${line.y} < ${log.y})`);
  assert.ok(line.y + line.height <= quickBox.y + 1, `newest line ends at ${line.y + line.height}, under the quick replies at ${quickBox.y}`);
  const overflow = await page.evaluate(() => document.scrollingElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page scrolls sideways by ${overflow}px`);
  for (const sel of ["#send", "#lang-zh", ".quick button"]) {
    const box = await page.locator(sel).first().boundingBox();
    assert.ok(box.height >= 44, `${sel} is ${box.height}px tall`);
  }
  await page.screenshot({ path: join(SHOTS, "kiosk-phone.png") });
  await ctx.close();
});

test("End chat forgets the session for the next visitor, without a connection-lost flash", async () => {
  const { ctx, page, errors } = await freshPage();
  await visitorAsks(page, "my card is not working", "frozen");
  // Record every banner the page shows from now on.
  await page.evaluate(() => {
    window.__banners = [];
    const b = document.getElementById("banner");
    new MutationObserver(() => { if (!b.hidden && b.textContent) window.__banners.push(b.textContent); })
      .observe(b, { attributes: true, childList: true, characterData: true, subtree: true });
  });
  await page.getByRole("button", { name: "End chat" }).click();
  await botSays(page, "branch assistant");
  await assertOnScreen(page, page.locator(".log .msg.bot", { hasText: "branch assistant" }), "a fresh greeting");
  assert.equal(await page.locator(".msg.visitor").count(), 0, "nothing of the last visitor");
  assert.deepEqual(await page.evaluate(() => window.__banners), [], "no banner while starting over");
  await page.reload();
  await botSays(page, "branch assistant");
  assert.equal(await page.locator(".msg.visitor").count(), 0);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test("the visitor's language choice wins over what a message looks like", async () => {
  const { ctx, page } = await freshPage();
  await page.getByRole("button", { name: "EN", exact: true }).click();
  await page.locator("#input").fill("Thanks 👍 — 谢谢");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelectorAll(".log .msg.bot").length >= 2);
  const answer = await page.locator(".log .msg.bot").last().innerText();
  assert.doesNotMatch(answer, /[\u4e00-\u9fff]/, `an English visitor got: ${answer}`);
  await visitorAsks(page, "I lost my card 谢谢", "last four digits");
  await ctx.close();
});

test("tapping 中文 turns the greeting Chinese, and it stays Chinese after a reload", async () => {
  const { ctx, page } = await freshPage();
  await page.getByRole("button", { name: "中文" }).click();
  await assertOnScreen(page, page.locator(".log .msg.bot", { hasText: "网点智能助手" }), "Chinese greeting");
  assert.equal(await page.locator(".log .msg.bot", { hasText: "branch assistant" }).count(), 0, "the English greeting is replaced");
  await page.reload();
  await assertOnScreen(page, page.locator(".log .msg.bot", { hasText: "网点智能助手" }), "Chinese greeting after a reload");
  assert.equal(await page.getAttribute("html", "lang"), "zh-CN");
  assert.equal(await page.locator(".log .msg.bot", { hasText: "branch assistant" }).count(), 0);
  await shot(page, "kiosk-zh-greeting");
  await ctx.close();
});

test("a kiosk left idle warns, keeps the chat for a visitor still there, then clears it for the next one", async () => {
  const idle = await startEdgeNode({ EDGEDESK_SERVER__KIOSK_IDLE_RESET_SECS: "24" });
  try {
    const { ctx, page, errors } = await freshPage(undefined, idle.url);
    await visitorAsks(page, "how do I activate my card", "Activate");
    const warning = page.locator("#banner", { hasText: "Are you still there?" });
    // 24 s: quiet for 16 s, then an 8 s countdown.
    await warning.waitFor({ timeout: 30000 });
    await assertOnScreen(page, warning, "idle countdown");
    await shot(page, "kiosk-idle-warning");
    await page.getByRole("button", { name: "I'm still here" }).click();
    await warning.waitFor({ state: "hidden" });
    assert.equal(await page.locator(".msg.visitor", { hasText: "activate my card" }).count(), 1, "the chat is kept");
    // Left alone, the countdown runs out and the page starts afresh.
    await warning.waitFor({ timeout: 30000 });
    await assertOnScreen(page, warning, "idle countdown again");
    await page.waitForFunction(() => document.querySelectorAll(".msg.visitor").length === 0, null, { timeout: 30000 });
    await botSays(page, "branch assistant");
    assert.equal(await page.locator("#banner").isVisible(), false, "no banner after the reset");
    // The next visitor (a reload, or the same screen) sees nothing of it.
    await page.reload();
    await botSays(page, "branch assistant");
    assert.equal(await page.locator(".msg.visitor").count(), 0);
    assert.deepEqual(errors, []);
    await ctx.close();
  } finally { await idle.stop(); }
});

test("a line the node refuses is marked not sent and can be sent again", async () => {
  // Two frames of burst: the hello and one line; the second line is refused.
  // The connection is not closed for the refusals while the visitor retries.
  const strict = await startEdgeNode({
    EDGEDESK_SERVER__RATE_LIMIT_PER_SEC: "1.0",
    EDGEDESK_SERVER__RATE_LIMIT_BURST: "2",
    EDGEDESK_SERVER__RATE_LIMIT_CLOSE_AFTER: "100000",
  });
  try {
    const { ctx, page } = await freshPage(undefined, strict.url);
    await page.locator("#input").fill("how do I activate my card");
    await page.keyboard.press("Enter");
    await page.locator("#input").fill("and what about my PIN");
    await page.keyboard.press("Enter");
    const line = page.locator(".msg.visitor", { hasText: "what about my PIN" });
    await assertOnScreen(page, line.getByText("Not sent"), "not-sent mark");
    await assertOnScreen(page, page.getByText("You are sending messages quickly"), "why, in words");
    await shot(page, "kiosk-not-sent");
    assert.equal(await page.locator(".msg.visitor.failed").count(), 1, "only the refused line is marked");
    // Try again until the bucket has a token (one a second): each try ends
    // in either an ack or another refusal, never silence. Bounded by time,
    // not by a count of tries: a fast machine makes many tries a second.
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline) {
      await line.getByRole("button", { name: "Try again" }).click();
      await page.waitForFunction(() => {
        const el = [...document.querySelectorAll(".msg.visitor")].find((e) => e.textContent.includes("what about my PIN"));
        return !el.classList.contains("pending");
      });
      if (!(await line.evaluate((e) => e.classList.contains("failed")))) break;
    }
    assert.equal(await line.evaluate((e) => e.className), "msg visitor", "sent in the end");
    await assertOnScreen(page, page.locator(".log .msg.bot").last(), "the bot answers it");
    await ctx.close();
  } finally { await strict.stop(); }
});
