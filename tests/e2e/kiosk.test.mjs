// Kiosk page in real Chromium against a real edge node.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startEdgeNode, launchBrowser, botSays, SHOTS } from "./helpers.mjs";

let node, browser;
before(async () => { node = await startEdgeNode(); browser = await launchBrowser(); });
after(async () => { await browser?.close(); await node?.stop(); });

async function freshPage(viewport = { width: 1080, height: 1600 }) {
  const ctx = await browser.newContext({ viewport });
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(node.url);
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
  await page.locator("#input").fill("1234");
  await page.keyboard.press("Enter");
  await botSays(page, "换个说法");
  await page.locator("#input").fill("我想预约");
  await page.keyboard.press("Enter");
  await botSays(page, "哪天");
  await page.screenshot({ path: join(SHOTS, "kiosk-zh.png") });
  await ctx.close();
});

test("a reload brings the conversation back", async () => {
  const { ctx, page } = await freshPage();
  await page.locator("#input").fill("how do I activate my card");
  await page.keyboard.press("Enter");
  await botSays(page, "Activate");
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
  await page.waitForTimeout(300);
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
  await page.locator("#input").fill("I want to talk to a human");
  await page.keyboard.press("Enter");
  await botSays(page, "nobody is free");
  await page.getByRole("button", { name: "Leave a message" }).click();
  await botSays(page, "your name");
  for (const [text, next] of [["Ada", "phone number or e-mail"], ["ada@example.com", "help you with"], ["Call me back please", "ada@example.com"]]) {
    await page.locator("#input").fill(text);
    await page.keyboard.press("Enter");
    await botSays(page, next);
  }
  await ctx.close();
});

test("phone-sized screen: no sideways scrolling, targets at least 44px", async () => {
  const { ctx, page } = await freshPage({ width: 375, height: 667 });
  await page.locator("#input").fill("hello");
  await page.keyboard.press("Enter");
  await page.locator(".quick button").first().waitFor();
  const overflow = await page.evaluate(() => document.scrollingElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page scrolls sideways by ${overflow}px`);
  for (const sel of ["#send", "#lang-zh", ".quick button"]) {
    const box = await page.locator(sel).first().boundingBox();
    assert.ok(box.height >= 44, `${sel} is ${box.height}px tall`);
  }
  await page.screenshot({ path: join(SHOTS, "kiosk-phone.png") });
  await ctx.close();
});

test("End chat forgets the session for the next visitor", async () => {
  const { ctx, page } = await freshPage();
  await page.locator("#input").fill("my card is not working");
  await page.keyboard.press("Enter");
  await botSays(page, "frozen");
  await page.getByRole("button", { name: "End chat" }).click();
  await page.waitForFunction(() => !localStorage.getItem("edgedesk.session") || document.querySelectorAll(".msg.visitor").length === 0);
  await page.reload();
  await botSays(page, "branch assistant");
  assert.equal(await page.locator(".msg.visitor").count(), 0);
  await ctx.close();
});
