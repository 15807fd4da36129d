// Keeps an open dashboard page current: polls the page's JSON API (body[data-api])
// and rewrites the bound elements. Stored data is untrusted, so it is only ever
// written as text (textContent) or as an attribute value; never parsed as HTML.
//
//   data-bind="a.b"     text of the value at that path ("." is the item itself)
//   data-format="time"  how to write it (FORMATS, the same table as app.py's _fmt)
//   data-href="/x/{a}"  href from the pattern, each {field} URL-encoded
//   data-class="a"      data-state attribute (styled by ui.css)
//   data-show / data-hide="a"   hidden unless / when the value is truthy
//   data-rows="a"       one copy of the child <template> per item of the list
"use strict";

(function () {
  const pad = (n) => String(n).padStart(2, "0");

  function moment(v) {
    if (typeof v !== "number" || !isFinite(v)) return "";
    const d = new Date(v * 1000);
    if (isNaN(d.getTime())) return "";
    return (
      d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds())
    );
  }

  function bytes(v) {
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) return "";
    if (v === 1) return "1 byte";
    if (v < 1000) return v + " bytes";
    const units = ["kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let i = 0;
    let base = 1000;
    while (i < units.length - 1 && v >= base * 1000) {
      base *= 1000;
      i += 1;
    }
    return (v / base).toLocaleString("en-US", {
      minimumFractionDigits: 1, maximumFractionDigits: 1,
    }) + " " + units[i];
  }

  const FORMATS = {
    time: moment,
    seconds: (v) => (typeof v === "number" && isFinite(v) ? v.toFixed(2) + " s" : ""),
    bytes: bytes,
    ratio: (v) => (typeof v === "number" ? (v * 100).toFixed(1) + " %" : ""),
    executed: (v) => (v === true ? "executed" : v === false ? "hit" : ""),
    yes: (v) => (v === true ? "yes" : ""),
  };

  function plain(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function pick(item, path) {
    if (path === ".") return item;
    let value = item;
    for (const part of path.split(".")) {
      if (value === null || typeof value !== "object") return undefined;
      value = Object.prototype.hasOwnProperty.call(value, part) ? value[part] : undefined;
    }
    return value;
  }

  function truthy(v) {
    return Array.isArray(v) ? v.length > 0 : Boolean(v);
  }

  // Elements of `root` that belong to it, not to a list inside it.
  function own(root, selector) {
    const found = [];
    if (root.matches && root.matches(selector)) found.push(root);
    for (const el of root.querySelectorAll(selector)) {
      const list = el.parentElement && el.parentElement.closest("[data-rows]");
      if (!list || list === root || !root.contains(list)) found.push(el);
    }
    return found;
  }

  function fill(root, data) {
    for (const el of own(root, "[data-bind]")) {
      const value = pick(data, el.dataset.bind);
      const format = FORMATS[el.dataset.format];
      el.textContent = format ? format(value) : plain(value);
    }
    for (const el of own(root, "[data-href]")) {
      const href = el.dataset.href.replace(/\{([^}]+)\}/g, (_, path) =>
        encodeURIComponent(plain(pick(data, path))));
      if (href.startsWith("/")) el.setAttribute("href", href);
    }
    for (const el of own(root, "[data-class]")) {
      el.dataset.state = plain(pick(data, el.dataset.class));
    }
    for (const el of own(root, "[data-show]")) {
      el.hidden = !truthy(pick(data, el.dataset.show));
    }
    for (const el of own(root, "[data-hide]")) {
      el.hidden = truthy(pick(data, el.dataset.hide));
    }
    for (const list of own(root, "[data-rows]")) {
      if (list === root) continue;
      const template = list.querySelector(":scope > template");
      if (!template) continue;
      const items = pick(data, list.dataset.rows);
      const rows = [];
      for (const item of Array.isArray(items) ? items : []) {
        const copy = template.content.cloneNode(true);
        for (const child of Array.from(copy.children)) fill(child, item);
        rows.push(copy);
      }
      for (const child of Array.from(list.children)) {
        if (child !== template) child.remove();
      }
      for (const row of rows) list.appendChild(row);
    }
  }

  function status(text) {
    const el = document.querySelector("[data-refresh-status]");
    if (el) el.textContent = text;
  }

  async function refresh(api) {
    try {
      const response = await fetch(api, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (!response.ok) {
        status("not refreshed: the server answered " + response.status);
        return;
      }
      const data = await response.json();
      fill(document.querySelector("main"), data);
      document.body.dataset.refreshed = String(Date.now());
      status("refreshed " + moment(Date.now() / 1000) + " UTC");
    } catch (error) {
      status("not refreshed: " + plain(error && error.message));
    }
  }

  function start() {
    const api = document.body.dataset.api;
    if (!api || !api.startsWith("/api/")) return;
    const seconds = Number(document.body.dataset.poll) || 2;
    const loop = async () => {
      if (!document.hidden) await refresh(api);
      window.setTimeout(loop, seconds * 1000);
    };
    window.setTimeout(loop, seconds * 1000);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
