// Hand-written SVG charts: a line chart for training loss, a heat map for the confusion matrix,
// a chart over the minutes of a window and a histogram of shares.

import { h, svg, integer, percent } from "./dom.js";

const MARGIN = { top: 14, right: 16, bottom: 40, left: 52 };

export function niceTicks(min, max, count = 5) {
  const span = max - min || Math.abs(max) || 1;
  let step = 10 ** Math.floor(Math.log10(span / count));
  const error = span / count / step;
  if (error >= 7.5) step *= 10;
  else if (error >= 3.5) step *= 5;
  else if (error >= 1.5) step *= 2;
  const ticks = [];
  for (let value = Math.ceil(min / step) * step; value <= max + step * 1e-9; value += step) {
    ticks.push(Number(value.toPrecision(12)));
  }
  return ticks;
}

function label(value) {
  return Math.abs(value) >= 1000 ? integer(value) : String(Number(value.toPrecision(4)));
}

// series: [{name, points: [[x, y]], kind: "line" | "dots", className}]
// `width` is the pixel width it will be drawn at, so that its text keeps its size on any screen.
export function lineChart({ series, xMax, xLabel, yLabel, title, width = 640 }) {
  const WIDTH = Math.max(260, Math.round(width));
  const HEIGHT = Math.round(Math.min(280, Math.max(190, WIDTH * 0.42)));
  const all = series.flatMap((s) => s.points);
  const xs = all.map(([x]) => x);
  const ys = all.map(([, y]) => y);
  const x1 = Math.max(xMax ?? 0, ...xs, 1);
  // The y range hugs the data (a flat-looking curve says nothing), padded and on round ticks.
  const low = Math.min(...ys);
  const high = Math.max(...ys);
  const pad = (high - low) * 0.12 || Math.abs(high) * 0.1 || 1;
  const yTicks = niceTicks(Math.max(0, low - pad), high + pad, 4);
  const step = yTicks.length > 1 ? yTicks[1] - yTicks[0] : 1;
  while (yTicks[0] > Math.max(0, low - pad)) yTicks.unshift(Number((yTicks[0] - step).toPrecision(12)));
  while (yTicks.at(-1) < high + pad) yTicks.push(Number((yTicks.at(-1) + step).toPrecision(12)));
  const bottom = yTicks[0];
  const top = yTicks.at(-1);
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const sx = (x) => MARGIN.left + (x / x1) * plotW;
  const sy = (y) => MARGIN.top + plotH - ((y - bottom) / (top - bottom || 1)) * plotH;

  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": title,
  });
  chart.append(svg("title", {}, title));
  for (const tick of yTicks) {
    chart.append(
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(tick), y2: sy(tick), class: "grid" }),
      svg("text", { x: MARGIN.left - 8, y: sy(tick) + 4, class: "tick", "text-anchor": "end" }, label(tick)),
    );
  }
  for (const tick of niceTicks(0, x1, WIDTH < 420 ? 4 : 6).filter((t) => Number.isInteger(t) || x1 < 6)) {
    chart.append(
      svg("line", { x1: sx(tick), x2: sx(tick), y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4, class: "axis" }),
      svg("text", { x: sx(tick), y: MARGIN.top + plotH + 18, class: "tick", "text-anchor": "middle" }, label(tick)),
    );
  }
  chart.append(
    svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH, class: "axis" }),
    svg("text", { x: MARGIN.left + plotW / 2, y: HEIGHT - 6, class: "axis-label", "text-anchor": "middle" }, xLabel),
    svg("text", { x: 14, y: MARGIN.top + plotH / 2, class: "axis-label", "text-anchor": "middle",
      transform: `rotate(-90 14 ${MARGIN.top + plotH / 2})` }, yLabel),
  );
  for (const s of series) {
    if (!s.points.length) continue;
    if (s.kind === "dots") {
      const group = svg("g", { class: s.className, "data-points": s.points.length });
      for (const [x, y] of s.points) group.append(svg("circle", { cx: sx(x), cy: sy(y), r: 4 }, svg("title", {}, `${s.name}: ${label(y)} at step ${label(x)}`)));
      chart.append(group);
    } else {
      const d = s.points.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
      chart.append(svg("path", { d, class: s.className, "data-points": s.points.length }));
      const [lx, ly] = s.points.at(-1);
      chart.append(svg("circle", { cx: sx(lx), cy: sy(ly), r: 3, class: `${s.className} end` }));
    }
  }
  return chart;
}

export function legend(items) {
  return h("ul", { class: "legend" }, items.map(([name, className]) => h("li", {}, h("span", { class: `swatch ${className}`, "aria-hidden": "true" }), name)));
}

// Rows are true labels, columns predicted ones; shading is the share of the row.
export function confusionMatrix(matrix, labels) {
  const table = h("table", { class: "confusion" },
    h("caption", {}, "Confusion matrix: rows are true classes, columns predicted ones; shading is the share of each true class."),
    h("thead", {}, h("tr", {}, h("th", { scope: "col", class: "corner" }, h("span", {}, "true ↓ / predicted →")),
      labels.map((name) => h("th", { scope: "col" }, name)))),
  );
  const body = h("tbody");
  matrix.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0);
    body.append(h("tr", {},
      h("th", { scope: "row" }, labels[i]),
      row.map((count, j) => {
        const share = total ? count / total : 0;
        const cell = h("td", {
          class: `${i === j ? "hit" : "miss"}${share > 0.55 ? " dark" : ""}`,
          style: { "--share": share.toFixed(3) },
          title: `${labels[i]} predicted as ${labels[j]}: ${count} of ${total} (${percent(share)})`,
        }, h("span", { class: "n" }, integer(count)), h("span", { class: "share" }, percent(share, 0)));
        return cell;
      }),
    ));
  });
  table.append(body);
  return table;
}

// Which minutes of a window get a time under the axis: a round step giving at most `count`.
function minuteStep(total, count) {
  return [1, 2, 5, 10, 15, 20, 30, 60, 120].find((step) => total / step <= count) ?? 240;
}

function clock(date) {
  return `${String(date.getHours()).padStart(2, "0")}:${String(date.getMinutes()).padStart(2, "0")}`;
}

// A chart over a window's minutes (oldest first, ISO strings): per series either bars or a line
// (broken where a minute has no value), and horizontal rules (a reference each).
// series: [{name, values: [number | null], kind: "bars" | "line", className}]
// rules: [{name, value, className}]; yFormat writes a tick's value.
export function minuteChart({ minutes, series, rules = [], yMax, yFormat = label, yLabel, title, width = 640 }) {
  const WIDTH = Math.max(260, Math.round(width));
  const HEIGHT = Math.round(Math.min(240, Math.max(180, WIDTH * 0.4)));
  const times = minutes.map((minute) => new Date(minute));
  const count = Math.max(times.length, 1);
  const values = [...series.flatMap((s) => s.values), ...rules.map((r) => r.value)].filter((v) => typeof v === "number");
  const high = yMax ?? Math.max(1, ...values);
  const yTicks = niceTicks(0, high, 4);
  while (yTicks.at(-1) < high) yTicks.push(Number((yTicks.at(-1) + (yTicks[1] - yTicks[0])).toPrecision(12)));
  const top = yTicks.at(-1) || 1;
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const band = plotW / count;
  const sx = (i) => MARGIN.left + (i + 0.5) * band;
  const sy = (y) => MARGIN.top + plotH - (y / top) * plotH;

  const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img", "aria-label": title });
  chart.append(svg("title", {}, title));
  for (const tick of yTicks) {
    chart.append(
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(tick), y2: sy(tick), class: "grid" }),
      svg("text", { x: MARGIN.left - 8, y: sy(tick) + 4, class: "tick", "text-anchor": "end" }, yFormat(tick)),
    );
  }
  const step = minuteStep(count, WIDTH < 420 ? 4 : 7);
  times.forEach((time, i) => {
    if (Math.round(time.getTime() / 60000) % step !== 0) return;
    chart.append(
      svg("line", { x1: sx(i), x2: sx(i), y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4, class: "axis" }),
      svg("text", { x: sx(i), y: MARGIN.top + plotH + 18, class: "tick", "text-anchor": "middle" }, clock(time)),
    );
  });
  chart.append(
    svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH, class: "axis" }),
    svg("text", { x: MARGIN.left + plotW / 2, y: HEIGHT - 6, class: "axis-label", "text-anchor": "middle" }, "minute (local time)"),
    svg("text", { x: 14, y: MARGIN.top + plotH / 2, class: "axis-label", "text-anchor": "middle",
      transform: `rotate(-90 14 ${MARGIN.top + plotH / 2})` }, yLabel),
  );
  for (const rule of rules) {
    if (typeof rule.value !== "number") continue;
    chart.append(svg("line", {
      x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(rule.value), y2: sy(rule.value), class: `rule ${rule.className}`, "data-value": rule.value,
    }, svg("title", {}, `${rule.name}: ${yFormat(rule.value)}`)));
  }
  for (const s of series) {
    const group = svg("g", { class: `${s.kind} ${s.className}`, "data-series": s.name });
    if (s.kind === "bars") {
      const barW = Math.max(1, Math.min(band * 0.72, 18));
      s.values.forEach((value, i) => {
        if (!value) return;
        group.append(svg("rect", { x: sx(i) - barW / 2, y: sy(value), width: barW, height: Math.max(0, MARGIN.top + plotH - sy(value)), "data-n": value },
          svg("title", {}, `${clock(times[i])}: ${yFormat(value)} ${s.name}`)));
      });
    } else {
      let d = "";
      s.values.forEach((value, i) => {
        if (typeof value !== "number") return;
        d += `${typeof s.values[i - 1] === "number" ? "L" : "M"}${sx(i).toFixed(1)},${sy(value).toFixed(1)} `;
      });
      if (d) group.append(svg("path", { d: d.trim() }));
      s.values.forEach((value, i) => {
        if (typeof value !== "number") return;
        group.append(svg("circle", { cx: sx(i), cy: sy(value), r: 3 }, svg("title", {}, `${s.name} at ${clock(times[i])}: ${yFormat(value)}`)));
      });
    }
    chart.append(group);
  }
  return chart;
}

// Each bucket's share of the texts, a bar per series side by side (the live window beside the
// holdout). Buckets are drawn equally wide whatever their span; `edges` are their upper bounds.
// series: [{name, counts: [number], className}]
export function histogram({ edges, series, xLabel, title, width = 640 }) {
  const WIDTH = Math.max(260, Math.round(width));
  const HEIGHT = Math.round(Math.min(240, Math.max(180, WIDTH * 0.4)));
  const shares = series.map((s) => {
    const total = s.counts.reduce((a, b) => a + b, 0);
    return s.counts.map((n) => (total ? n / total : 0));
  });
  const high = Math.max(0.05, ...shares.flat());
  const yTicks = niceTicks(0, high, 4);
  while (yTicks.at(-1) < high) yTicks.push(Number((yTicks.at(-1) + (yTicks[1] - yTicks[0])).toPrecision(12)));
  const top = yTicks.at(-1);
  const plotW = WIDTH - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const band = plotW / edges.length;
  const sx = (i) => MARGIN.left + i * band;
  const sy = (y) => MARGIN.top + plotH - (y / top) * plotH;
  const edgeText = (edge) => (Number.isFinite(edge) ? label(edge) : "∞");

  const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img", "aria-label": title });
  chart.append(svg("title", {}, title));
  for (const tick of yTicks) {
    chart.append(
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: sy(tick), y2: sy(tick), class: "grid" }),
      svg("text", { x: MARGIN.left - 8, y: sy(tick) + 4, class: "tick", "text-anchor": "end" }, percent(tick, 0)),
    );
  }
  const every = band < 34 ? 2 : 1;
  [0, ...edges].forEach((edge, i) => {
    const lastShown = i === edges.length;
    if (i % every && !lastShown) return;
    chart.append(
      svg("line", { x1: sx(i), x2: sx(i), y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4, class: "axis" }),
      svg("text", { x: sx(i), y: MARGIN.top + plotH + 18, class: "tick", "text-anchor": "middle" }, edgeText(edge)),
    );
  });
  const gap = Math.min(6, band * 0.15);
  const barW = (band - 2 * gap) / Math.max(series.length, 1);
  series.forEach((s, k) => {
    const group = svg("g", { class: `bars ${s.className}`, "data-series": s.name });
    s.counts.forEach((count, i) => {
      const share = shares[k][i];
      const low = i ? edgeText(edges[i - 1]) : "0";
      group.append(svg("rect", {
        x: sx(i) + gap + k * barW, y: sy(share), width: Math.max(barW - 1, 1), height: Math.max(0, MARGIN.top + plotH - sy(share)),
        "data-bucket": i, "data-count": count,
      }, svg("title", {}, `${s.name}, ${low} to ${edgeText(edges[i])}: ${percent(share)} (${integer(count)})`)));
    });
    chart.append(group);
  });
  chart.append(
    svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH, class: "axis" }),
    svg("text", { x: MARGIN.left + plotW / 2, y: HEIGHT - 6, class: "axis-label", "text-anchor": "middle" }, xLabel),
    svg("text", { x: 14, y: MARGIN.top + plotH / 2, class: "axis-label", "text-anchor": "middle",
      transform: `rotate(-90 14 ${MARGIN.top + plotH / 2})` }, "share of texts"),
  );
  return chart;
}
