// Runs the search page's script (engines/serving/page.html) in Node against a minimal DOM and a scripted fetch, for
// tests/test_serving_page_check.py (no browser needed). Usage: node page_harness.js PAGE.html SCENARIO.json
// SCENARIO: {"query": str, "topk": str, "submits": int, "answers": {"/library": [ANSWER], "/search": [ANSWER, ...]},
// "page_url": where the page was loaded from (default http://127.0.0.1:8080/)}; answers are keyed by the path a
// request resolves to against page_url, as a browser resolves it
// ANSWER: {"status": int, "body": str, "delay_ms": int} or {"network_error": str}; /search answers are used in
// order, one per submit; "evaluate": [JavaScript expressions] are evaluated in the page at the end (page_check's).
// Prints the page's state as JSON: status line, results, thumbnails, uncaught errors, the expressions' values.
"use strict";
const fs = require("fs");
const vm = require("vm");

const html = fs.readFileSync(process.argv[2], "utf8");
const scenario = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
const script = html.match(/<script>([\s\S]*?)<\/script>/)[1];
const errors = [];

class Element {
  constructor(tag, id) {
    this.tagName = tag.toUpperCase(); this.id = id || ""; this.children = []; this.parent = null;
    this.className = ""; this.dataset = {}; this.listeners = {}; this._text = ""; this.value = "";
    this.src = ""; this.alt = "";
  }
  get textContent() { return this._text + this.children.map((c) => c.textContent).join(""); }
  set textContent(v) { this.children = []; this._text = String(v); }
  set innerHTML(_) { throw new Error("innerHTML used"); }
  set outerHTML(_) { throw new Error("outerHTML used"); }
  insertAdjacentHTML() { throw new Error("insertAdjacentHTML used"); }
  append(...nodes) { for (const n of nodes) { n.parent = this; this.children.push(n); } }
  replaceChildren(...nodes) { this.children = []; this._text = ""; this.append(...nodes); }
  replaceWith(node) {
    const kids = this.parent.children;
    kids[kids.indexOf(this)] = node; node.parent = this.parent; this.parent = null;
  }
  remove() { if (this.parent) { this.parent.children.splice(this.parent.children.indexOf(this), 1); } }
  addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
  set onerror(fn) { this.addEventListener("error", fn); }
  fire(type, event) { for (const fn of this.listeners[type] || []) { fn(event || {type, preventDefault() {}}); } }
  all() { return this.children.flatMap((c) => [c, ...c.all()]); }
}

const byId = {};
for (const [tag, id] of [["form", "search-form"], ["div", "status"], ["div", "results"], ["div", "about"],
  ["input", "query"], ["input", "topk"], ["button", "go"]]) { byId[id] = new Element(tag, id); }
byId.query.value = scenario.query ?? "a red circle";
byId.topk.value = scenario.topk ?? "10";
const body = new Element("body");
const matches = (e, cls) => e.className.split(" ").includes(cls);
const document = {
  body, getElementById: (id) => byId[id] || null, createElement: (tag) => new Element(tag),
  write() { throw new Error("document.write used"); },
  // what page_check's expressions read: ".cls" and ".cls .inner" selectors, document.images (all loaded)
  querySelectorAll(selector) {
    const [outer, inner] = selector.replace(/\./g, "").split(" ");
    const found = byId.results.all().filter((e) => matches(e, outer));
    return inner ? found.flatMap((e) => e.all().filter((c) => matches(c, inner))) : found;
  },
  querySelector(selector) { return this.querySelectorAll(selector)[0] || null; },
  get images() {
    return byId.results.all().filter((e) => e.tagName === "IMG").map((i) => ({complete: true, naturalWidth: 96}));
  },
};

const pageUrl = new URL(scenario.page_url ?? "http://127.0.0.1:8080/");
const location = {href: pageUrl.href, pathname: pageUrl.pathname, origin: pageUrl.origin, search: pageUrl.search};
const fetched = [];  // every request's URL, resolved against the page's
const queues = JSON.parse(JSON.stringify(scenario.answers || {}));
function fetch(url) {
  const resolved = new URL(String(url), pageUrl);
  fetched.push(resolved.href);
  const path = resolved.pathname;
  const answer = (queues[path] || []).shift() || {network_error: "Failed to fetch"};
  return new Promise((resolve, reject) => setTimeout(() => {
    if (answer.network_error) { reject(new TypeError(answer.network_error)); return; }
    const text = answer.body ?? "";
    resolve({status: answer.status, ok: answer.status >= 200 && answer.status < 300,
             statusText: answer.status_text ?? "", text: async () => text, json: async () => JSON.parse(text)});
  }, answer.delay_ms || 0));
}

process.on("unhandledRejection", (e) => errors.push(String(e && e.stack || e)));
const context = vm.createContext({document, fetch, location, console, setTimeout, Number, JSON, encodeURIComponent,
                                  parseInt, Promise, Error, TypeError, String});
try { vm.runInContext(script, context); } catch (e) { errors.push(String(e.stack || e)); }

(async () => {
  for (let i = 0; i < (scenario.submits ?? 1); i++) {
    try { byId["search-form"].fire("submit"); } catch (e) { errors.push(String(e.stack || e)); }
    await new Promise((r) => setTimeout(r, 5));
  }
  await new Promise((r) => setTimeout(r, 300));
  const imgs = byId.results.all().filter((e) => e.tagName === "IMG");
  for (const img of imgs) { if ((scenario.broken_images || []).includes(img.src)) { img.fire("error"); } }
  const rows = byId.results.children;
  console.log(JSON.stringify({
    status: byId.status.textContent, status_error: byId.status.className === "error",
    about: byId.about.textContent, state: body.dataset.state ?? null,
    results: rows.map((r) => r.textContent),
    images: byId.results.all().filter((e) => e.tagName === "IMG").map((i) => ({src: i.src, alt: i.alt})),
    fetched, image_urls: byId.results.all().filter((e) => e.tagName === "IMG").map((i) => new URL(i.src, pageUrl).href),
    errors, evaluated: (scenario.evaluate || []).map((expr) => vm.runInContext(expr, context)),
  }));
})();
