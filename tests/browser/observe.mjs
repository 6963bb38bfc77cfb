// Opens a batchsse page in headless Chromium and prints what a person would
// see, as one JSON object on stdout, for tests/it/browser.rs to assert on.
//
//   node tests/browser/observe.mjs URL [OPTIONS_JSON]
//
// OPTIONS_JSON (all optional):
//   until       "end" (default): wait for the banner (#banner[data-status]);
//               "actions": report once the actions are done (a run that holds)
//   no_frames   the page draws no frames, as in a hidden tab: its
//               requestAnimationFrame never calls back
//   settle_ms   keep watching this long after the banner (catches reconnects)
//   timeout_ms  give up waiting after this long (then report what was seen)
//   screenshot  save a PNG here mid-run (two steps done, the third under way)
//   width, height, dark   viewport size and prefers-color-scheme: dark
//   actions     steps run in order once the page has loaded, before waiting
//               for the banner; each an object with one of:
//                 {"wait": SELECTOR}        until it is visible
//                 {"gone": SELECTOR}        until it is hidden or absent
//                 {"text": SELECTOR, "is": TEXT}   until its text is TEXT
//                 {"click": SELECTOR}       (waits until it is visible first)
//                 {"fill": SELECTOR, "value": TEXT}
//                 {"press": SELECTOR, "key": "Enter"}
//                 {"focus": SELECTOR}       as a Tab onto it would
//                 {"keyboard": "Space"}     a key, to whatever has the focus now
//                 {"dialogs": "accept"|"dismiss"}   answer confirm() so from now
//                 {"wait_file": PATH}       until the test creates PATH
//                 {"touch": PATH}           create PATH, for the test to wait on
//                 {"scroll": SELECTOR, "top": N}   scroll it to N px from its top
//                 {"sleep_ms": N}
//                 {"snapshot": NAME}        record what the page shows now, and its
//                                           ARIA snapshot (`aria`: roles, names, states)
//               A step that fails is recorded in action_error; the rest are
//               skipped and the page is still observed.
//
// Dialogs (window.confirm …) are dismissed unless an action says otherwise,
// and every one is recorded in `dialogs`.
import { chromium } from "playwright-core";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const CHROMIUM = process.env.BATCHSSE_CHROMIUM || "/usr/bin/chromium";
export const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

// A fresh profile every time, so no cache or stored state leaks between runs.
export async function launch(opts = {}) {
  const profile = mkdtempSync(join(tmpdir(), "batchsse-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: opts.width || 1000, height: opts.height || 800 },
    colorScheme: opts.dark ? "dark" : "light",
    locale: "en-US",
  });
  const close = async () => {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}

async function main() {
  const [url, raw] = process.argv.slice(2);
  if (!url) {
    console.error("usage: node observe.mjs URL [OPTIONS_JSON]");
    process.exit(2);
  }
  const opts = raw ? JSON.parse(raw) : {};
  const t0 = Date.now();
  const now = () => Date.now() - t0;
  const { context, close } = await launch(opts);
  const out = { requests: [], control_requests: [], page_errors: [], console: [], dialogs: [], snapshots: {}, actions_done: 0, ended_at: null };
  const pending = [];
  try {
    const page = context.pages()[0] || (await context.newPage());
    context.on("request", (r) => {
      const u = new URL(r.url());
      if (u.pathname.endsWith("/control")) {
        // What the page sent to steer the run: where, how, and exactly what.
        const at = now();
        pending.push(r.allHeaders().then((h) => out.control_requests.push({
          at, url: r.url(), method: r.method(), body: r.postData(),
          authorization: h["authorization"] ?? null, client: h["x-batchsse-client"] ?? null,
        })));
      }
      if (u.pathname.endsWith("/events")) {
        const at = now();
        // Only the raw headers show the Last-Event-ID EventSource adds on retries.
        pending.push(r.allHeaders().then((h) => out.requests.push({
          at, url: r.url(), method: r.method(), last_event_id: h["last-event-id"] ?? null,
        })));
      }
    });
    // Connection states are transient ("reconnecting…"), so record each one.
    await page.addInitScript(() => {
      window.__conn = [];
      document.addEventListener("DOMContentLoaded", () => {
        const c = document.querySelector("#conn");
        if (!c) return;
        const note = () => { if (window.__conn.at(-1) !== c.textContent) window.__conn.push(c.textContent); };
        note();
        new MutationObserver(note).observe(c, { childList: true, characterData: true, subtree: true });
      });
    });
    if (opts.no_frames) {
      // What a hidden tab does to a page: no frames, so no frame callbacks.
      await page.addInitScript(() => {
        let n = 0;
        window.requestAnimationFrame = () => ++n;
        window.cancelAnimationFrame = () => {};
        Object.defineProperty(document, "hidden", { get: () => true });
        Object.defineProperty(document, "visibilityState", { get: () => "hidden" });
      });
    }
    page.on("pageerror", (e) => out.page_errors.push(String(e)));
    let dialogs = "dismiss";
    page.on("dialog", (d) => {
      out.dialogs.push({ at: now(), type: d.type(), message: d.message(), answer: dialogs });
      (dialogs === "accept" ? d.accept() : d.dismiss()).catch(() => {});
    });
    page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
    await page.goto(url, { waitUntil: "domcontentloaded", timeout: opts.timeout_ms || 30000 });
    if (opts.screenshot) {
      // Mid-run: two steps done and the third well under way.
      await page.waitForFunction(() => {
        const p = document.querySelector('.step[data-state="running"] progress');
        return document.querySelectorAll('.step[data-state="done"]').length >= 2 && p && p.value / p.max > 0.4;
      }, null, { timeout: opts.timeout_ms || 30000, polling: 50 }).catch(() => {});
      await page.screenshot({ path: opts.screenshot, fullPage: true });
    }
    const limit = opts.timeout_ms || 30000;
    try {
      for (const a of opts.actions || []) {
        if (a.wait) await page.waitForSelector(a.wait, { state: "visible", timeout: limit });
        else if (a.gone) await page.waitForSelector(a.gone, { state: "hidden", timeout: limit });
        else if (a.text) {
          // Polled on a timer: a page without frames never runs a frame poll.
          await page.waitForFunction(([sel, is]) => document.querySelector(sel)?.textContent === is,
            [a.text, a.is], { polling: 50, timeout: limit });
        }
        else if (a.click) await page.click(a.click, { timeout: limit });
        else if (a.fill) await page.fill(a.fill, a.value ?? "", { timeout: limit });
        else if (a.press) await page.press(a.press, a.key, { timeout: limit });
        else if (a.focus) await page.focus(a.focus, { timeout: limit });
        else if (a.keyboard) await page.keyboard.press(a.keyboard);
        else if (a.dialogs) dialogs = a.dialogs;
        else if (a.wait_file) {
          const until = Date.now() + limit;
          while (!existsSync(a.wait_file)) {
            if (Date.now() > until) throw new Error("no file " + a.wait_file);
            await page.waitForTimeout(20);
          }
        } else if (a.touch) writeFileSync(a.touch, "");
        else if (a.scroll) await page.$eval(a.scroll, (e, top) => { e.scrollTop = top; }, a.top ?? 0);
        else if (a.sleep_ms != null) await page.waitForTimeout(a.sleep_ms);
        else if (a.snapshot) {
          // With what a screen reader is told of the page (Playwright's ARIA snapshot).
          const aria = await page.locator("body").ariaSnapshot({ timeout: limit });
          out.snapshots[a.snapshot] = { at: now(), ...(await page.evaluate(look)), aria };
        }
        else throw new Error("unknown action " + JSON.stringify(a));
        out.actions_done += 1;
      }
    } catch (e) {
      out.action_error = String(e && e.message || e);
    }
    try {
      if (opts.until !== "actions") {
        await page.waitForSelector("#banner[data-status]", { state: "attached", timeout: opts.timeout_ms || 30000 });
        out.ended_at = now();
      }
    } catch (_) {
      out.timed_out = true;
    }
    await page.waitForTimeout(opts.settle_ms ?? 0);
    Object.assign(out, await page.evaluate(look));
  } finally {
    await Promise.all(pending);
    out.requests.sort((a, b) => a.at - b.at);
    out.control_requests.sort((a, b) => a.at - b.at);
    await close();
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

// What a person sees on the page now (runs in the page).
function look() {
  const text = (e) => (e ? e.innerText.replace(/\s+/g, " ").trim() : null);
  const banner = document.querySelector("#banner");
  const overall = document.querySelector("#overall");
  return {
    title: document.title,
    plan: text(document.querySelector("#plan")),
    // The direction names are laid out in (rtl for Hebrew or Arabic ones).
    plan_dir: document.querySelector("#plan") && getComputedStyle(document.querySelector("#plan")).direction,
    db: text(document.querySelector("#db")),
    conn: text(document.querySelector("#conn")),
    conn_history: window.__conn,
    extra: text(document.querySelector("#extra")),
    banner: banner && {
      status: banner.dataset.status ?? null,
      text: text(banner),
      aria_live: banner.getAttribute("aria-live"),
    },
    overall: overall && { value: overall.value, max: overall.max, text: text(document.querySelector("#overall-text")) },
    steps: [...document.querySelectorAll("#steps > li")].map((li) => ({
      state: li.dataset.state ?? null,
      name: text(li.querySelector(".name")),
      dir: li.querySelector(".name") && getComputedStyle(li.querySelector(".name")).direction,
      text: text(li),
      progress: (() => { const p = li.querySelector("progress"); return p && { value: p.value, max: p.max }; })(),
    })),
    log: [...document.querySelectorAll('#log > li:not(.empty):not([data-level="control"])')].map((li) => text(li.querySelector(".text") || li)),
    // Each log line's step column: its text, whether it shows, and whether
    // any of it is cut off (wider or taller than its box shows).
    log_where: [...document.querySelectorAll("#log > li .where")].map((w) => ({
      text: w.textContent, shown: w.checkVisibility(),
      cut: w.scrollWidth > w.clientWidth || w.scrollHeight > w.clientHeight,
    })),
    // Where the log is scrolled to, how far that is from its end (0: it
    // follows the tail), and whether it has anything to scroll.
    log_scroll: (() => {
      const l = document.querySelector("#log");
      return l && { top: l.scrollTop, from_end: l.scrollHeight - l.scrollTop - l.clientHeight, overflows: l.scrollHeight > l.clientHeight };
    })(),
    // What a screen reader announces by itself as it changes (live regions).
    live: [...document.querySelectorAll("[aria-live], [role=status], [role=alert], [role=log]")]
      .filter((e) => e.getAttribute("aria-live") !== "off").map((e) => e.id),
    // What a keyboard user is on: the focused element's id (or tag).
    focus: document.activeElement && (document.activeElement.id || document.activeElement.tagName.toLowerCase()),
    width: document.documentElement.scrollWidth,
    viewport: window.innerWidth,
    // Live control, where the page has it (null on other pages).
    steer: document.querySelector("#steer") && (() => {
      const shown = (sel) => { const e = document.querySelector(sel); return Boolean(e && e.checkVisibility()); };
      return {
        shown: shown("#steer"),
        controls: shown("#pause") || shown("#cancel") || shown("#apply"),
        token_field: shown("#control-token"),
        pause: text(document.querySelector("#pause")),
        badge: shown("#throttle") ? text(document.querySelector("#throttle")) : null,
        // The badge's detail, where a person can read it without a mouse.
        badge_detail: shown("#throttle-detail") ? text(document.querySelector("#throttle-detail")) : null,
        message: text(document.querySelector("#control-msg")) || null,
        inputs: Object.fromEntries([...document.querySelectorAll("#pace input")].map((i) => [i.name, i.value])),
        shown_inputs: [...document.querySelectorAll("#pace input")].filter((i) => i.checkVisibility()).map((i) => i.name),
        stored_token: sessionStorage.getItem("batchsse.control"),
        address: location.href,
      };
    })(),
    control_log: [...document.querySelectorAll('#log > li[data-level="control"]')].map((li) => text(li.querySelector(".text"))),
    control_log_times: [...document.querySelectorAll('#log > li[data-level="control"]')].map((li) => text(li.querySelector(".time"))),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((e) => {
    console.error(String(e && e.stack || e));
    process.exit(1);
  });
}
