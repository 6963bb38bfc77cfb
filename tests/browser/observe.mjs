// Opens a batchsse page in headless Chromium and prints what a person would
// see, as one JSON object on stdout, for tests/it/browser.rs to assert on.
//
//   node tests/browser/observe.mjs URL [OPTIONS_JSON]
//
// OPTIONS_JSON (all optional):
//   until       "end" (default): wait for the banner (#banner[data-status])
//   settle_ms   keep watching this long after the banner (catches reconnects)
//   timeout_ms  give up waiting after this long (then report what was seen)
//   screenshot  save a PNG here mid-run (two steps done, the third under way)
//   width, height, dark   viewport size and prefers-color-scheme: dark
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
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
  const out = { requests: [], page_errors: [], console: [], ended_at: null };
  const pending = [];
  try {
    const page = context.pages()[0] || (await context.newPage());
    context.on("request", (r) => {
      const u = new URL(r.url());
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
    page.on("pageerror", (e) => out.page_errors.push(String(e)));
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
    try {
      await page.waitForSelector("#banner[data-status]", { state: "attached", timeout: opts.timeout_ms || 30000 });
      out.ended_at = now();
    } catch (_) {
      out.timed_out = true;
    }
    await page.waitForTimeout(opts.settle_ms ?? 0);
    Object.assign(out, await page.evaluate(() => {
      const text = (e) => (e ? e.innerText.replace(/\s+/g, " ").trim() : null);
      const banner = document.querySelector("#banner");
      const overall = document.querySelector("#overall");
      return {
        title: document.title,
        plan: text(document.querySelector("#plan")),
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
          text: text(li),
          progress: (() => { const p = li.querySelector("progress"); return p && { value: p.value, max: p.max }; })(),
        })),
        log: [...document.querySelectorAll("#log > li:not(.empty)")].map((li) => text(li.querySelector(".text") || li)),
        width: document.documentElement.scrollWidth,
        viewport: window.innerWidth,
      };
    }));
  } finally {
    await Promise.all(pending);
    out.requests.sort((a, b) => a.at - b.at);
    await close();
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((e) => {
    console.error(String(e && e.stack || e));
    process.exit(1);
  });
}
