// Injected by BrowserTests into a COPY of a report (reports themselves carry no script).
// Measures the WCAG 2 contrast ratio of every piece of visible text against what is
// actually behind it, and of every chart series against the chart background, then writes
// the results as base64 JSON into <pre id="nb-contrast-result"> for `chromium --dump-dom`.
//
// Text: each element with a non-blank text node of its own. Its colour is the computed
// `color` (`fill` for SVG text), with its alpha and the opacity of every ancestor applied;
// its background is found by walking up the ancestors, compositing translucent
// background-colors until an opaque one (the canvas colour if none is). SVG text sits on
// the chart's first <rect> (its background). Nothing is excluded: the report has no
// decorative text, so muted, secondary and small text must all reach 4.5.
// Graphics: every chart <path>/<circle>/legend <line> of a series against the chart
// background (WCAG 1.4.11 asks 3:1 for graphics).
(() => {
  const parse = (css) => {
    const m = /rgba?\(([^)]*)\)/.exec(css || "");
    if (!m) return null;
    const p = m[1].split(/[\s,\/]+/).filter((x) => x.length).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, below) => {
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + below[i] * (1 - a)).concat([1]);
  };
  const luminance = (c) => {
    const f = (v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const ratio = (a, b) => {
    const la = luminance(a), lb = luminance(b);
    return (Math.max(la, lb) + 0.05) / (Math.min(la, lb) + 0.05);
  };
  const hex = (c) => "#" + c.slice(0, 3).map((v) => Math.round(v).toString(16).padStart(2, "0")).join("");
  const selector = (el) => {
    const parts = [];
    for (let e = el; e && e.nodeType === 1 && parts.length < 4; e = e.parentElement) {
      let s = e.localName;
      if (e.id) s += "#" + e.id;
      const cls = typeof e.className === "string" ? e.className : (e.getAttribute("class") || "");
      if (cls.trim()) s += "." + cls.trim().split(/\s+/).join(".");
      parts.unshift(s);
    }
    return parts.join(" > ");
  };

  const probe = document.createElement("div");
  probe.style.background = "Canvas";
  document.documentElement.appendChild(probe);
  const canvas = parse(getComputedStyle(probe).backgroundColor) || [255, 255, 255, 1];
  canvas[3] = 1;
  probe.remove();

  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let bg = canvas;
    for (let i = layers.length - 1; i >= 0; i--) bg = over(layers[i], bg);
    return bg;
  };
  const opacity = (el) => {
    let o = 1;
    for (let e = el; e; e = e.parentElement) o *= parseFloat(getComputedStyle(e).opacity);
    return o;
  };
  const visible = (el) => {
    const s = getComputedStyle(el);
    return s.visibility === "visible" && s.display !== "none" && el.getClientRects().length > 0;
  };
  const chartBackground = (el) => {
    const svg = el.closest("svg");
    const rect = svg && svg.querySelector("rect");
    const c = rect && parse(getComputedStyle(rect).fill);
    return c && c[3] > 0 ? over(c, background(svg)) : background(svg || el);
  };

  // Collapsed sections (a cell's source) are checked too.
  document.querySelectorAll("details").forEach((d) => { d.open = true; });

  const texts = [];
  for (const el of document.body.querySelectorAll("*")) {
    if (el.localName === "script" || el.localName === "style" || el.localName === "title") continue;
    const own = Array.from(el.childNodes).filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
    if (!own || !visible(el)) continue;
    const s = getComputedStyle(el);
    const inSVG = el instanceof SVGElement;
    const fg = parse(inSVG ? s.fill : s.color);
    if (!fg) { texts.push({ selector: selector(el), text: own.slice(0, 60), ratio: 0, note: "unparsed colour " + (inSVG ? s.fill : s.color) }); continue; }
    const bg = inSVG ? chartBackground(el) : background(el);
    const shown = over([fg[0], fg[1], fg[2], fg[3] * opacity(el)], bg);
    texts.push({ selector: selector(el), text: own.slice(0, 60), fg: hex(shown), bg: hex(bg),
                 ratio: Math.round(ratio(shown, bg) * 100) / 100, size: s.fontSize });
  }
  const graphics = [];
  for (const el of document.querySelectorAll("svg g.series path, svg g.series circle, svg g.legend line")) {
    const s = getComputedStyle(el);
    const c = parse(el.localName === "circle" ? s.fill : s.stroke);
    const bg = chartBackground(el);
    graphics.push({ selector: selector(el), fg: c ? hex(c) : String(s.stroke), bg: hex(bg), ratio: c ? Math.round(ratio(c, bg) * 100) / 100 : 0 });
  }
  const lowest = (list) => list.reduce((m, t) => (m === null || t.ratio < m.ratio ? t : m), null);
  const result = {
    dark: matchMedia("(prefers-color-scheme: dark)").matches,
    canvas: hex(canvas),
    page: hex(background(document.body)),
    textCount: texts.length,
    minText: lowest(texts),
    textBelow45: texts.filter((t) => t.ratio < 4.5),
    graphicCount: graphics.length,
    minGraphic: lowest(graphics),
    graphicsBelow3: graphics.filter((g) => g.ratio < 3),
  };
  const out = document.createElement("pre");
  out.id = "nb-contrast-result";
  // Base64, so the DOM dump needs no HTML unescaping.
  out.textContent = btoa(unescape(encodeURIComponent(JSON.stringify(result))));
  document.body.appendChild(out);
})();
