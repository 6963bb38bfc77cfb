// Times a dashboard opened late on a run that has finished (kept serving
// with --linger): from navigation until the page shows every step done with
// the final banner, and has drawn that. Not a test (tests do not assert
// speed); the README's figure for a late page on a big run comes from it.
//
//   node tests/browser/time-late-page.mjs URL [TRIES]
//
// Each try is a fresh headless Chromium (as observe.mjs launches it); prints
// each try and the median, in milliseconds.
import { launch } from "./observe.mjs";

async function once(url, n) {
  const { context, close } = await launch({});
  try {
    const page = context.pages()[0] || (await context.newPage());
    await page.goto(url, { waitUntil: "domcontentloaded" });
    await page.waitForFunction((n) => {
      const t = document.querySelector("#overall-text");
      return t && t.textContent === n + " / " + n + " steps done" && document.querySelector("#banner[data-status]");
    }, n, { polling: "raf", timeout: 300000 });
    // A frame callback runs before its frame's layout: the next one's time
    // is when the page had drawn what it showed.
    return await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r(performance.now()))));
  } finally {
    await close();
  }
}

async function main() {
  const [url, tries = "7"] = process.argv.slice(2);
  if (!url) {
    console.error("usage: node time-late-page.mjs URL [TRIES]");
    process.exit(2);
  }
  // /status with the page's query (a --token run's ?token=).
  const at = new URL("status", url);
  at.search = new URL(url).search;
  const status = await (await fetch(at)).json();
  if (status.state !== "finished") throw new Error("the run has not finished: " + JSON.stringify(status));
  const times = [];
  for (let i = 0; i < Number(tries); i++) {
    times.push(await once(url, status.steps_total));
    console.log(`try ${i + 1}: ${times.at(-1).toFixed(0)} ms`);
  }
  times.sort((a, b) => a - b);
  console.log(`median of ${times.length}: ${times[Math.floor(times.length / 2)].toFixed(0)} ms (${status.steps_total} steps)`);
}

main().catch((e) => {
  console.error(String(e && e.stack || e));
  process.exit(1);
});
